//! Striping over mirroring (RAID10, spec [075]–[076] Fig. 6): 2 stripes x 2
//! copies. Randomized I/O against a model, a leg failure mid-run that the host
//! never sees, a whole mirror failing, and the same layout over image
//! partitions through build_volume.

mod common;

use std::sync::{Arc, Mutex};

use common::memdev::{FailMode, MemDev};
use common::workload::{check_all, concurrent_batch, random_op, KIB, MIB};
use common::{Rng, TempImage};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, Layout, MemberDesc, Mirror, MirrorHealth,
    MirrorState, Stripe, Volume, VolumeDesc,
};

const CHUNK: u32 = 32 * 1024;

type Calls = Arc<Mutex<Vec<(usize, usize, i32)>>>;

/// 2 mirrors of 2 MemDev legs each; `calls` records (mirror, leg, errno).
fn mem_raid10(leg_size: u64) -> (Stripe<Mirror<MemDev>>, Calls) {
    let calls: Calls = Arc::default();
    let mirrors = (0..2)
        .map(|mi| {
            let c = calls.clone();
            let h = MirrorHealth::new(
                2,
                0,
                Box::new(move |leg, errno| c.lock().unwrap().push((mi, leg, errno))),
            );
            let legs = (0..2).map(|_| MemDev::new(leg_size as usize)).collect();
            Mirror::new(legs, Arc::new(h)).unwrap()
        })
        .collect();
    (Stripe::new(mirrors, CHUNK).unwrap(), calls)
}

#[test]
fn randomized_io_then_leg_failure_mid_run() {
    let (v, calls) = mem_raid10(3 * MIB);
    assert_eq!(v.size(), 6 * MIB);
    let ring = LocalRing::new(8).unwrap();
    let mut model = vec![0u8; v.size() as usize];
    let mut rng = Rng::new(0x4a1d_0010);
    let chunk = u64::from(CHUNK);
    for i in 0..400 {
        if i == 200 {
            // Leg 1 of mirror 0 dies mid-run.
            v.members()[0].legs()[1].set_fail(FailMode::Always);
        }
        random_op(&v, &ring, &mut model, &mut rng, chunk)
            .unwrap_or_else(|e| panic!("op {i} returned an error to the host: {e}"));
        if i % 100 == 50 {
            concurrent_batch(&v, &ring, &mut model, &mut rng, chunk).unwrap();
        }
    }
    check_all(&v, &ring, &model, &mut rng).unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![(0, 1, libc::EIO)]);
    assert_eq!(v.members()[0].state(), MirrorState::Degraded);
    assert_eq!(v.members()[1].state(), MirrorState::Optimal);
    // Healthy legs hold exactly their stripe column of the model.
    for (mi, m) in v.members().iter().enumerate() {
        for (li, leg) in m.legs().iter().enumerate() {
            if (mi, li) == (0, 1) {
                continue;
            }
            for row in 0..leg.size() / chunk {
                let k = row * 2 + mi as u64;
                assert!(
                    leg.bytes(row * chunk, chunk)[..]
                        == model[(k * chunk) as usize..((k + 1) * chunk) as usize],
                    "mirror {mi} leg {li} row {row}"
                );
            }
        }
    }
}

#[test]
fn losing_both_legs_of_one_mirror_fails_its_chunks_only() {
    let (v, calls) = mem_raid10(MIB);
    let ring = LocalRing::new(8).unwrap();
    let chunk = u64::from(CHUNK);
    let data = AlignedBuf::from_slice(&vec![9u8; (4 * chunk) as usize]);
    ring.block_on(v.write(0, &data, false)).unwrap();
    for leg in v.members()[1].legs() {
        leg.set_fail(FailMode::Always);
    }
    let mut buf = AlignedBuf::new((2 * chunk) as usize);
    // Chunks 0 and 1: mirror 0 and mirror 1.
    let e = ring.block_on(v.read(0, &mut buf)).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    // (Only chunk 1, so mirror 0 keeps its known content.)
    assert!(ring
        .block_on(v.write(chunk, &buf[..chunk as usize], false))
        .is_err());
    assert!(ring.block_on(v.flush()).is_err());
    // The last leg of mirror 1 is kept (MD's rule): degraded, not failed.
    assert_eq!(v.members()[1].state(), MirrorState::Degraded);
    assert_eq!(v.members()[0].state(), MirrorState::Optimal);
    let c = calls.lock().unwrap().clone();
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!((c[0].0, c[0].2), (1, libc::EIO));
    // Chunk 2 lives on mirror 0: still readable.
    let mut one = AlignedBuf::new(chunk as usize);
    ring.block_on(v.read(2 * chunk, &mut one)).unwrap();
    assert!(one.iter().all(|&b| b == 9));
}

#[test]
fn raid10_over_image_partitions_through_build_volume() {
    let leg = 1280 * KIB;
    let imgs: Vec<TempImage> = (0..4)
        .map(|_| TempImage::new((2 * MIB) as usize, 0, None))
        .collect();
    let files: Vec<_> = imgs.iter().map(|i| open_alu(&i.path).unwrap()).collect();
    let members = (0..4)
        .map(|m| MemberDesc {
            pieces: vec![(files[m].clone(), 8192, leg).into()],
        })
        .collect();
    let calls: Calls = Arc::default();
    let health = (0..2)
        .map(|mi| {
            let c = calls.clone();
            Arc::new(MirrorHealth::new(
                2,
                0,
                Box::new(move |leg, e| c.lock().unwrap().push((mi, leg, e))),
            ))
        })
        .collect();
    let desc = VolumeDesc {
        layout: Layout::Raid10 { chunk: CHUNK },
        copies: 2,
        members,
        health,
        moving: None,
    };
    let ring = LocalRing::new(64).unwrap();
    let vol = build_volume(&desc, ring.clone()).unwrap();
    assert!(matches!(vol, Volume::Raid10(_)));
    assert_eq!(vol.size(), 2 * leg);
    let mut model = vec![0u8; vol.size() as usize];
    let mut rng = Rng::new(0x10_4a1d);
    let chunk = u64::from(CHUNK);
    for i in 0..150 {
        random_op(&vol, &ring, &mut model, &mut rng, chunk).unwrap();
        if i % 50 == 25 {
            concurrent_batch(&vol, &ring, &mut model, &mut rng, chunk).unwrap();
        }
    }
    check_all(&vol, &ring, &model, &mut rng).unwrap();
    assert!(!vol.degraded());
    assert_eq!(vol.mirror_states().count(), 2);
    // Member m = stripe m / 2, leg m % 2: both legs of a column are equal
    // and hold chunks k with k % 2 == column.
    for (m, img) in imgs.iter().enumerate() {
        let c = img.contents();
        let col = (m / 2) as u64;
        for row in 0..leg / chunk {
            let k = row * 2 + col;
            let at = (8192 + row * chunk) as usize;
            assert!(
                c[at..at + chunk as usize]
                    == model[(k * chunk) as usize..((k + 1) * chunk) as usize],
                "image {m} row {row}"
            );
        }
    }
    assert!(calls.lock().unwrap().is_empty());
}
