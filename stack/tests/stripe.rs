//! Striping (RAID0): randomized I/O against a model over in-memory members and
//! over partitions of temporary image files; data placement; concurrency of
//! the pieces of one request; error propagation.

mod common;

use std::rc::Rc;

use common::memdev::{FailMode, MemDev, Tracker};
use common::workload::{check_all, concurrent_batch, random_op, KIB, MIB};
use common::{Rng, TempImage};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, Layout, MemberDesc, Stripe, Volume, VolumeDesc,
};

const CHUNK: u32 = 16 * 1024;

fn mem_stripe(n: usize, member: usize) -> (Stripe<MemDev>, Rc<Tracker>) {
    let tracker = Rc::new(Tracker::default());
    let members = (0..n)
        .map(|_| MemDev::with_tracker(member, tracker.clone()))
        .collect();
    (Stripe::new(members, CHUNK).unwrap(), tracker)
}

/// Every chunk of the model is on member k % N at row k / N.
fn assert_layout(s: &Stripe<MemDev>, model: &[u8]) {
    let n = s.members().len() as u64;
    let c = u64::from(s.chunk());
    for k in 0..s.size() / c {
        let m = &s.members()[(k % n) as usize];
        assert!(
            m.bytes((k / n) * c, c)[..] == model[(k * c) as usize..((k + 1) * c) as usize],
            "chunk {k} not on member {} row {}",
            k % n,
            k / n
        );
    }
}

#[test]
fn randomized_io_matches_model_and_raid0_layout() {
    // Members not a whole number of chunks: the tail is unused.
    let (s, _) = mem_stripe(3, (2 * MIB + 3000) as usize);
    assert_eq!(s.size(), 3 * 2 * MIB);
    let ring = LocalRing::new(8).unwrap();
    let mut model = vec![0u8; s.size() as usize];
    let mut rng = Rng::new(0x5712_1be5);
    for i in 0..300 {
        random_op(&s, &ring, &mut model, &mut rng, u64::from(CHUNK)).unwrap();
        if i % 100 == 50 {
            concurrent_batch(&s, &ring, &mut model, &mut rng, u64::from(CHUNK)).unwrap();
        }
    }
    check_all(&s, &ring, &model, &mut rng).unwrap();
    assert_layout(&s, &model);
    // The unused tail of each member was never touched.
    for m in s.members() {
        assert!(m.bytes(2 * MIB, 3000).iter().all(|&b| b == 0));
    }
}

#[test]
fn known_writes_land_on_the_right_member_offset() {
    let (s, _) = mem_stripe(3, MIB as usize);
    let ring = LocalRing::new(8).unwrap();
    let c = u64::from(CHUNK);
    // Chunk 5 -> member 2, row 1.
    let data = AlignedBuf::from_slice(&[0xab; 4096]);
    ring.block_on(s.write(5 * c + 512, &data, false)).unwrap();
    assert_eq!(s.members()[2].bytes(c + 512, 4096), vec![0xab; 4096]);
    assert_eq!(s.members()[2].bytes(c, 512), vec![0; 512]);
    // Straddling chunks 0|1: tail of member 0 row 0, head of member 1 row 0.
    let mut data = AlignedBuf::new(2048);
    data[..1024].fill(1);
    data[1024..].fill(2);
    ring.block_on(s.write(c - 1024, &data, true)).unwrap();
    assert_eq!(s.members()[0].bytes(c - 1024, 1024), vec![1; 1024]);
    assert_eq!(s.members()[1].bytes(0, 1024), vec![2; 1024]);
    // Straddling rows: chunk 2 (member 2 row 0) | chunk 3 (member 0 row 1).
    ring.block_on(s.write(3 * c - 1024, &data, false)).unwrap();
    assert_eq!(s.members()[2].bytes(c - 1024, 1024), vec![1; 1024]);
    assert_eq!(s.members()[0].bytes(c, 1024), vec![2; 1024]);
    // Each member received exactly the pieces it owns.
    let writes: Vec<u32> = s.members().iter().map(|m| m.writes()).collect();
    assert_eq!(writes, vec![2, 1, 2]);
    // Write-zeroes over rows 0..=1 of every member: one request per member.
    ring.block_on(s.write_zeroes(c - 1024, 5 * c)).unwrap();
    assert_eq!(s.members()[0].bytes(c - 1024, 1024), vec![0; 1024]);
    assert_eq!(s.members()[2].bytes(c + 512, 4096), vec![0; 4096]);
}

#[test]
fn pieces_of_one_request_run_concurrently_and_bounded() {
    let (s, tracker) = mem_stripe(4, MIB as usize);
    let ring = LocalRing::new(8).unwrap();
    // 16 chunks: more pieces than the join width (8).
    let mut buf = AlignedBuf::new(16 * CHUNK as usize);
    ring.block_on(s.read(0, &mut buf)).unwrap();
    assert_eq!(tracker.max_live.get(), 8, "8 pieces in flight at once");
    let reads: Vec<u32> = s.members().iter().map(|m| m.reads()).collect();
    assert_eq!(reads, vec![4, 4, 4, 4]);
}

#[test]
fn member_failure_propagates_errno() {
    let (s, _) = mem_stripe(3, MIB as usize);
    let ring = LocalRing::new(8).unwrap();
    let c = u64::from(CHUNK);
    s.members()[1].set_errno(libc::ENOSPC);
    s.members()[1].set_fail(FailMode::Always);
    let mut buf = AlignedBuf::new(2 * c as usize);
    let e = ring.block_on(s.read(0, &mut buf)).unwrap_err();
    assert_eq!((e.errno(), e.op(), e.offset()), (libc::ENOSPC, "read", 0));
    let e = ring.block_on(s.write(c / 2, &buf, false)).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC);
    // Within one chunk of member 1 (one member request, no join): the error
    // names the stripe's request, not the member's.
    let mut small = AlignedBuf::new(4096);
    let e = ring.block_on(s.read(c + 512, &mut small)).unwrap_err();
    assert_eq!(
        (e.errno(), e.op(), e.offset(), e.request_len()),
        (libc::ENOSPC, "read", c + 512, 4096)
    );
    let e = ring.block_on(s.write(4 * c, &small, false)).unwrap_err();
    assert_eq!((e.op(), e.offset()), ("write", 4 * c));
    assert_eq!(
        ring.block_on(s.discard(0, 3 * c)).unwrap_err().errno(),
        libc::ENOSPC
    );
    let before: Vec<u32> = s.members().iter().map(|m| m.flushes()).collect();
    assert_eq!(ring.block_on(s.flush()).unwrap_err().errno(), libc::ENOSPC);
    for (m, b) in s.members().iter().zip(before) {
        assert_eq!(m.flushes(), b + 1, "flush reaches every member");
    }
    // Requests avoiding member 1 still work.
    ring.block_on(s.read(2 * c, &mut buf)).unwrap();
    // Out of range is EINVAL, not a panic.
    assert_eq!(
        ring.block_on(s.read(s.size() - 512, &mut buf))
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
}

#[test]
fn stripe_over_image_partitions_through_build_volume() {
    let chunk = 64 * KIB;
    let a = TempImage::new((3 * MIB) as usize, 0, None);
    let b = TempImage::new((2 * MIB) as usize, 0, None);
    let fa = open_alu(&a.path).unwrap();
    let fb = open_alu(&b.path).unwrap();
    let member = 1536 * KIB;
    // Member 1 is a concatenation of two pieces of different files.
    let members = vec![
        MemberDesc {
            pieces: vec![(fa.clone(), 0, member).into()],
        },
        MemberDesc {
            pieces: vec![
                (fb.clone(), 0, 512 * KIB).into(),
                (fa.clone(), member, MIB).into(),
            ],
        },
        MemberDesc {
            pieces: vec![(fb.clone(), 512 * KIB, member).into()],
        },
    ];
    let desc = VolumeDesc {
        layout: Layout::Stripe {
            chunk: chunk as u32,
        },
        copies: 1,
        members,
        health: vec![],
        moving: None,
    };
    let ring = LocalRing::new(64).unwrap();
    let vol = build_volume(&desc, ring.clone()).unwrap();
    assert!(matches!(vol, Volume::Stripe(_)));
    assert_eq!(vol.size(), 3 * member);
    assert!(!vol.degraded());
    let mut model = vec![0u8; vol.size() as usize];
    let mut rng = Rng::new(0xf11e_5712);
    for i in 0..150 {
        random_op(&vol, &ring, &mut model, &mut rng, chunk).unwrap();
        if i % 50 == 25 {
            concurrent_batch(&vol, &ring, &mut model, &mut rng, chunk).unwrap();
        }
    }
    check_all(&vol, &ring, &model, &mut rng).unwrap();
    assert_eq!(ring.in_flight(), 0);

    // Chunk 4 -> member 1, row 1 -> B at 64K; chunk 10 -> member 1 row 3
    // (member offset 192K); chunk 25 -> member 1 row 8 (member offset 512K,
    // the second piece: A at 1536K).
    let fb_bytes = b.contents();
    assert!(
        fb_bytes[(64 * KIB) as usize..(128 * KIB) as usize]
            == model[(4 * chunk) as usize..(5 * chunk) as usize]
    );
    assert!(
        fb_bytes[(192 * KIB) as usize..(256 * KIB) as usize]
            == model[(10 * chunk) as usize..(11 * chunk) as usize]
    );
    let fa_bytes = a.contents();
    assert!(
        fa_bytes[member as usize..(member + chunk) as usize]
            == model[(25 * chunk) as usize..(26 * chunk) as usize]
    );
    // Chunk 5 -> member 2 row 1 -> B at 512K + 64K.
    assert!(
        fb_bytes[(576 * KIB) as usize..(640 * KIB) as usize]
            == model[(5 * chunk) as usize..(6 * chunk) as usize]
    );
}
