//! Linear volume over partitions of two image files: randomized I/O against an
//! in-memory model, sequential and concurrent.

mod common;

use common::{Rng, TempImage};
use tierblk_stack::uring::{join_all, LocalRing};
use tierblk_stack::{build_linear, open_alu, AlignedBuf, BlockDev, Leaf, Linear, Piece};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

struct Fixture {
    _a: TempImage,
    _b: TempImage,
    ring: LocalRing,
    vol: Linear<Leaf<LocalRing>>,
    boundaries: Vec<u64>,
}

/// 3 partitions from 2 files of different sizes, in an interleaved order.
fn fixture() -> Fixture {
    let a = TempImage::new((3 * MIB) as usize, 0, None);
    let b = TempImage::new((5 * MIB) as usize, 0, None);
    let fa = open_alu(&a.path).unwrap();
    let fb = open_alu(&b.path).unwrap();
    let pieces = vec![
        (fa.clone(), 512 * KIB, 1536 * KIB),         // A[512K, 2M)
        (fb.clone(), 4 * KIB, 2560 * KIB + 3 * 512), // B[4K, ~2.5M)
        (fa.clone(), 2 * MIB + 64 * KIB, 700 * KIB), // A[2M+64K, ..)
    ];
    let ring = LocalRing::new(64).unwrap();
    let pieces_desc: Vec<Piece> = pieces.iter().cloned().map(Piece::from).collect();
    let vol = build_linear(&pieces_desc, ring.clone());
    let mut boundaries = vec![0];
    for (_, _, len) in &pieces {
        boundaries.push(boundaries.last().unwrap() + len);
    }
    assert_eq!(vol.size(), *boundaries.last().unwrap());
    Fixture {
        _a: a,
        _b: b,
        ring,
        vol,
        boundaries,
    }
}

/// A random 512-aligned length in [512 B, 256 KiB] and an offset such that the
/// request fits, biased towards straddling member boundaries.
fn random_range(rng: &mut Rng, size: u64, boundaries: &[u64]) -> (u64, u64) {
    let len = 512 * (1 + rng.below(512));
    let max_off = (size - len) / 512;
    let off = if rng.below(3) == 0 {
        let bnd = boundaries[1 + rng.below(boundaries.len() as u64 - 2) as usize];
        let back = 512 * rng.below(len / 512 + 1);
        (bnd.saturating_sub(back) / 512).min(max_off) * 512
    } else {
        512 * rng.below(max_off + 1)
    };
    (off, len)
}

fn check_read(vol: &Linear<Leaf<LocalRing>>, ring: &LocalRing, model: &[u8], off: u64, len: u64) {
    let mut buf = AlignedBuf::new(len as usize);
    ring.block_on(vol.read(off, &mut buf)).unwrap();
    assert!(
        buf[..] == model[off as usize..(off + len) as usize],
        "read mismatch at {off} len {len}"
    );
}

#[test]
fn randomized_io_matches_model() {
    let f = fixture();
    let size = f.vol.size();
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng::new(0x7132_b1c5);
    let mut crossings = 0;
    for iter in 0..400 {
        let (off, len) = random_range(&mut rng, size, &f.boundaries);
        if f.boundaries.iter().any(|&b| b > off && b < off + len) {
            crossings += 1;
        }
        let range = off as usize..(off + len) as usize;
        match rng.below(100) {
            0..=44 => {
                let mut data = AlignedBuf::new(len as usize);
                rng.fill(&mut data);
                let fua = rng.below(4) == 0;
                f.ring.block_on(f.vol.write(off, &data, fua)).unwrap();
                model[range].copy_from_slice(&data);
            }
            45..=79 => check_read(&f.vol, &f.ring, &model, off, len),
            80..=85 => f.ring.block_on(f.vol.flush()).unwrap(),
            86..=92 => {
                f.ring.block_on(f.vol.discard(off, len)).unwrap();
                model[range].fill(0);
            }
            _ => {
                f.ring.block_on(f.vol.write_zeroes(off, len)).unwrap();
                model[range].fill(0);
            }
        }
        if iter % 100 == 99 {
            concurrent_batch(&f, &mut model, &mut rng);
        }
    }
    assert!(
        crossings > 20,
        "too few boundary-crossing requests: {crossings}"
    );
    // Full read-back in one request, and in uneven pieces.
    check_read(&f.vol, &f.ring, &model, 0, size);
    let mut off = 0;
    while off < size {
        let len = (512 * (1 + rng.below(700))).min(size - off);
        check_read(&f.vol, &f.ring, &model, off, len);
        off += len;
    }
}

/// 16 concurrent writes to disjoint ranges (one per slot of the volume), then
/// concurrent reads of random ranges, all through one LocalRing.
fn concurrent_batch(f: &Fixture, model: &mut [u8], rng: &mut Rng) {
    let size = f.vol.size();
    let slots = 16u64;
    let slot = size / slots / 512 * 512;
    let mut reqs = Vec::new();
    for s in 0..slots {
        let len = 512 * (1 + rng.below((slot / 512).min(512)));
        let off = s * slot + 512 * rng.below((slot - len) / 512 + 1);
        let mut data = AlignedBuf::new(len as usize);
        rng.fill(&mut data);
        reqs.push((off, data));
    }
    let futs: Vec<_> = reqs
        .iter()
        .map(|(off, data)| f.vol.write(*off, data, false))
        .collect();
    for r in f.ring.block_on(join_all(futs)) {
        r.unwrap();
    }
    for (off, data) in &reqs {
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    let ranges: Vec<(u64, u64)> = (0..24)
        .map(|_| random_range(rng, size, &f.boundaries))
        .collect();
    let mut bufs: Vec<AlignedBuf> = ranges
        .iter()
        .map(|&(_, len)| AlignedBuf::new(len as usize))
        .collect();
    let futs: Vec<_> = ranges
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(off, _), buf)| f.vol.read(off, buf))
        .collect();
    for r in f.ring.block_on(join_all(futs)) {
        r.unwrap();
    }
    for (&(off, len), buf) in ranges.iter().zip(&bufs) {
        assert!(
            buf[..] == model[off as usize..(off + len) as usize],
            "concurrent read mismatch at {off} len {len}"
        );
    }
}

#[test]
fn members_land_in_the_right_files() {
    let f = fixture();
    let size = f.vol.size();
    let mut data = AlignedBuf::new(size as usize);
    Rng::new(5).fill(&mut data);
    f.ring.block_on(f.vol.write(0, &data, false)).unwrap();
    let a = f._a.contents();
    let b = f._b.contents();
    let bnd = &f.boundaries;
    let (a0, b1, a2) = (
        512 * KIB as usize,
        4 * KIB as usize,
        (2 * MIB + 64 * KIB) as usize,
    );
    let d = |i: usize| &data[bnd[i] as usize..bnd[i + 1] as usize];
    assert!(a[a0..a0 + d(0).len()] == *d(0));
    assert!(b[b1..b1 + d(1).len()] == *d(1));
    assert!(a[a2..a2 + d(2).len()] == *d(2));
    // Gaps between/around partitions are untouched.
    assert!(a[..a0].iter().all(|&x| x == 0));
    assert!(a[a0 + d(0).len()..a2].iter().all(|&x| x == 0));
    assert!(a[a2 + d(2).len()..].iter().all(|&x| x == 0));
    assert!(b[..b1].iter().all(|&x| x == 0));
    assert!(b[b1 + d(1).len()..].iter().all(|&x| x == 0));
}

#[test]
fn limits_and_range_checks() {
    let f = fixture();
    let l = f.vol.limits();
    assert_eq!(l.logical_block, 512);
    assert!(l.discard && l.write_zeroes);
    let size = f.vol.size();
    let mut buf = AlignedBuf::new(1024);
    let err = f
        .ring
        .block_on(f.vol.read(size - 512, &mut buf))
        .unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    let err = f
        .ring
        .block_on(f.vol.write(u64::MAX - 511, &buf[..512], false))
        .unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    let err = f.ring.block_on(f.vol.discard(size, 512)).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    f.ring.block_on(f.vol.read(size, &mut buf[..0])).unwrap();
}
