//! Online leg replacement (stack::swap): a mirror running on two queues gets a
//! new leg through its shared slot; both queues switch at their next I/O,
//! writes reach the new leg while it rebuilds, the old one is never touched
//! again, and after the rebuild the new leg holds the whole mirror.

mod common;

use common::TempImage;
use std::sync::Arc;
use tierblk_stack::resync::{rebuild_leg, JobControl};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, Layout, MemberDesc, MirrorHealth, VolumeDesc,
};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 4 * MIB;

fn member(img: &TempImage) -> MemberDesc {
    MemberDesc {
        pieces: vec![(open_alu(&img.path).unwrap(), 0, SIZE).into()],
    }
}

#[test]
fn a_replaced_leg_takes_writes_then_rebuilds_and_the_old_one_is_left_alone() {
    let legs = [
        TempImage::new(SIZE as usize, 0, None),
        TempImage::new(SIZE as usize, 0, None),
    ];
    let spare = TempImage::new(SIZE as usize, 0xEE, None);
    let health = Arc::new(MirrorHealth::new_with_rebuild(
        2,
        0,
        &[],
        SIZE,
        Box::new(|_, _| {}),
    ));
    let desc = VolumeDesc {
        layout: Layout::Mirror,
        copies: 2,
        members: legs.iter().map(member).collect(),
        health: vec![health.clone()],
        moving: None,
    };
    let ring = LocalRing::new(32).unwrap();
    // Two queues' instances of the same volume.
    let q1 = build_volume(&desc, ring.clone()).unwrap();
    let q2 = build_volume(&desc, ring.clone()).unwrap();
    let a = AlignedBuf::from_slice(&vec![0xA1; MIB as usize]);
    ring.block_on(q1.write(0, &a, false)).unwrap();

    // Leg 1 dies; the spare is put in its slot and starts rebuilding.
    assert!(health.mark_failed(1));
    let old = legs[1].contents();
    health.slot(1).unwrap().replace(member(&spare)).unwrap();
    assert!(health.start_rebuild(1, 0));

    // Both queues now write to the spare (not the old leg), and never read it.
    let b = AlignedBuf::from_slice(&vec![0xB2; MIB as usize]);
    ring.block_on(q2.write(2 * MIB, &b, false)).unwrap();
    ring.block_on(q1.write(3 * MIB, &b, true)).unwrap();
    let mut r = AlignedBuf::new(MIB as usize);
    ring.block_on(q2.read(0, &mut r)).unwrap();
    assert!(
        r.iter().all(|&x| x == 0xA1),
        "read served by the unsynced spare"
    );
    let s = spare.contents();
    assert!(s[2 * MIB as usize..].iter().all(|&x| x == 0xB2));
    assert!(
        s[..MIB as usize].iter().all(|&x| x == 0xEE),
        "spare not yet rebuilt"
    );
    assert_eq!(legs[1].contents(), old, "the replaced leg was written");

    // Rebuild on a job instance: the spare then equals leg 0.
    let job = build_volume(&desc, ring.clone()).unwrap();
    let ctl = JobControl::new();
    ring.block_on(rebuild_leg(&job.mirrors()[0], 1, MIB, &ctl))
        .unwrap();
    assert!(health.is_healthy(1));
    assert_eq!(spare.contents(), legs[0].contents());
    assert_eq!(legs[1].contents(), old);

    // A replacement of the wrong size is refused and changes nothing.
    let small = TempImage::new(MIB as usize, 0, None);
    let bad = MemberDesc {
        pieces: vec![(open_alu(&small.path).unwrap(), 0, MIB).into()],
    };
    let generation = health.slot(1).unwrap().generation();
    assert!(health.slot(1).unwrap().replace(bad).is_err());
    assert_eq!(health.slot(1).unwrap().generation(), generation);
    for img in legs.iter().chain([&spare, &small]) {
        let _ = std::fs::remove_file(&img.path);
    }
}
