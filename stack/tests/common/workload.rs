//! Randomized workload against a `Vec<u8>` model, shared by the driver tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tierblk_stack::uring::{join_all, LocalRing};
use tierblk_stack::volume::{build_volume, VolumeDesc};
use tierblk_stack::{AlignedBuf, BlockDev, IoResult};

use super::Rng;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// A host writing while a job runs: a thread with its own ring and its own
/// instance of `desc`'s tree (as a ublk queue, or another SP, has) doing
/// random ops against `model` (seeded `seed`) until `done` is set and at
/// least `min_ops` ran; returns the model and the number of ops.
pub fn spawn_writer(
    desc: VolumeDesc,
    done: Arc<AtomicBool>,
    mut model: Vec<u8>,
    seed: u64,
    min_ops: usize,
) -> JoinHandle<(Vec<u8>, usize)> {
    std::thread::spawn(move || {
        let ring = LocalRing::new(32).unwrap();
        let vol = build_volume(&desc, ring.clone()).unwrap();
        let mut rng = Rng::new(seed);
        let mut ops = 0;
        while !done.load(Ordering::SeqCst) || ops < min_ops {
            random_op(&vol, &ring, &mut model, &mut rng, 64 * KIB).unwrap();
            ops += 1;
        }
        (model, ops)
    })
}

/// A 512-aligned range of 512 B..=`max_len` bytes fitting in `size`; one time
/// in two it straddles a multiple of `chunk`.
pub fn random_range(rng: &mut Rng, size: u64, chunk: u64, max_len: u64) -> (u64, u64) {
    let max_len = max_len.min(size);
    // Favour small requests, but regularly produce large ones.
    let len = if rng.below(4) == 0 {
        512 * (1 + rng.below(max_len / 512))
    } else {
        512 * (1 + rng.below((max_len / 512).min(3 * chunk / 512)))
    };
    let max_off = (size - len) / 512;
    let off = if rng.below(2) == 0 {
        let bnd = chunk * (1 + rng.below(size / chunk - 1));
        let back = 512 * rng.below(len / 512 + 1);
        (bnd.saturating_sub(back) / 512).min(max_off) * 512
    } else {
        512 * rng.below(max_off + 1)
    };
    (off, len)
}

/// Read `[off, off+len)` and compare with the model.
pub fn check_read<D: BlockDev>(
    dev: &D,
    ring: &LocalRing,
    model: &[u8],
    off: u64,
    len: u64,
) -> IoResult<()> {
    let mut buf = AlignedBuf::new(len as usize);
    ring.block_on(dev.read(off, &mut buf))?;
    assert!(
        buf[..] == model[off as usize..(off + len) as usize],
        "read mismatch at {off} len {len}"
    );
    Ok(())
}

/// One random operation; the model is updated only when it succeeds, reads
/// are checked against the model.
pub fn random_op<D: BlockDev>(
    dev: &D,
    ring: &LocalRing,
    model: &mut [u8],
    rng: &mut Rng,
    chunk: u64,
) -> IoResult<()> {
    let (off, len) = random_range(rng, dev.size(), chunk, MIB);
    let range = off as usize..(off + len) as usize;
    match rng.below(100) {
        0..=44 => {
            let mut data = AlignedBuf::new(len as usize);
            rng.fill(&mut data);
            let fua = rng.below(4) == 0;
            ring.block_on(dev.write(off, &data, fua))?;
            model[range].copy_from_slice(&data);
        }
        45..=84 => check_read(dev, ring, model, off, len)?,
        85..=89 => ring.block_on(dev.flush())?,
        90..=94 => {
            ring.block_on(dev.discard(off, len))?;
            model[range].fill(0);
        }
        _ => {
            ring.block_on(dev.write_zeroes(off, len))?;
            model[range].fill(0);
        }
    }
    Ok(())
}

/// 12 concurrent writes to disjoint slots, then 16 concurrent reads of random
/// (overlapping) ranges, all driven at once through `join_all`.
pub fn concurrent_batch<D: BlockDev>(
    dev: &D,
    ring: &LocalRing,
    model: &mut [u8],
    rng: &mut Rng,
    chunk: u64,
) -> IoResult<()> {
    let size = dev.size();
    let slots = 12u64;
    let slot = size / slots / 512 * 512;
    let mut reqs = Vec::new();
    for s in 0..slots {
        let len = 512 * (1 + rng.below((slot / 512).min(2 * chunk / 512)));
        let off = s * slot + 512 * rng.below((slot - len) / 512 + 1);
        let mut data = AlignedBuf::new(len as usize);
        rng.fill(&mut data);
        reqs.push((off, data));
    }
    let futs: Vec<_> = reqs
        .iter()
        .map(|(off, data)| dev.write(*off, data, false))
        .collect();
    for r in ring.block_on(join_all(futs)) {
        r?;
    }
    for (off, data) in &reqs {
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    let ranges: Vec<(u64, u64)> = (0..16)
        .map(|_| random_range(rng, size, chunk, 256 * KIB))
        .collect();
    let mut bufs: Vec<AlignedBuf> = ranges
        .iter()
        .map(|&(_, len)| AlignedBuf::new(len as usize))
        .collect();
    let futs: Vec<_> = ranges
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(off, _), buf)| dev.read(off, buf))
        .collect();
    for r in ring.block_on(join_all(futs)) {
        r?;
    }
    for (&(off, len), buf) in ranges.iter().zip(&bufs) {
        assert!(
            buf[..] == model[off as usize..(off + len) as usize],
            "concurrent read mismatch at {off} len {len}"
        );
    }
    Ok(())
}

/// Read the whole device in uneven pieces and compare with the model.
pub fn check_all<D: BlockDev>(
    dev: &D,
    ring: &LocalRing,
    model: &[u8],
    rng: &mut Rng,
) -> IoResult<()> {
    let size = dev.size();
    let mut off = 0;
    while off < size {
        let len = (512 * (1 + rng.below(2048))).min(size - off);
        check_read(dev, ring, model, off, len)?;
        off += len;
    }
    Ok(())
}
