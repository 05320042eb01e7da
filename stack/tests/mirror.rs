//! Mirroring (RAID1): randomized I/O against a model, read spreading, leg
//! failures (mid-run, on reads, on writes only, all legs), health shared by
//! several queue instances, and a mirror over image partitions through
//! build_volume (with a real kernel errno from a read-only leg).

mod common;

use std::sync::{Arc, Mutex};

use common::memdev::{FailMode, MemDev};
use common::workload::{check_all, check_read, concurrent_batch, random_op, KIB, MIB};
use common::{Rng, TempImage};
use tierblk_stack::mirror::MAX_LEGS;
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, Layout, MemberDesc, Mirror, MirrorHealth,
    MirrorState, Volume, VolumeDesc,
};

type Calls = Arc<Mutex<Vec<(usize, i32)>>>;

fn health(legs: usize, initially_failed: u32) -> (Arc<MirrorHealth>, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let h = MirrorHealth::new(
        legs,
        initially_failed,
        Box::new(move |leg, errno| c.lock().unwrap().push((leg, errno))),
    );
    (Arc::new(h), calls)
}

fn mem_mirror(legs: usize, size: u64) -> (Mirror<MemDev>, Calls) {
    let (h, calls) = health(legs, 0);
    let devs = (0..legs).map(|_| MemDev::new(size as usize)).collect();
    (Mirror::new(devs, h).unwrap(), calls)
}

const CHUNK: u64 = 64 * KIB;

#[test]
fn randomized_io_keeps_legs_identical_and_spreads_reads() {
    for legs in [2, 3] {
        let (m, calls) = mem_mirror(legs, 4 * MIB);
        let ring = LocalRing::new(8).unwrap();
        let mut model = vec![0u8; m.size() as usize];
        let mut rng = Rng::new(0x3177_0e00 + legs as u64);
        for i in 0..300 {
            random_op(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
            if i % 100 == 50 {
                concurrent_batch(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
            }
        }
        check_all(&m, &ring, &model, &mut rng).unwrap();
        for (i, leg) in m.legs().iter().enumerate() {
            assert!(leg.contents() == model, "leg {i} differs from the model");
        }
        let reads: Vec<u32> = m.legs().iter().map(|l| l.reads()).collect();
        let total: u32 = reads.iter().sum();
        for r in &reads {
            assert!(
                *r * legs as u32 * 10 >= total * 8,
                "reads not spread over legs: {reads:?}"
            );
        }
        assert_eq!(m.state(), MirrorState::Optimal);
        assert!(calls.lock().unwrap().is_empty());
    }
}

#[test]
fn a_sequential_stream_stays_on_one_leg_random_reads_alternate() {
    let (m, _calls) = mem_mirror(2, 4 * MIB);
    let ring = LocalRing::new(8).unwrap();
    let mut buf = AlignedBuf::new(128 * 1024);
    // A stream of 16 consecutive 128 KiB reads: one leg serves it all (MD's
    // read_balance), so that leg's readahead sees a sequential stream.
    for i in 0..16u64 {
        ring.block_on(m.read(MIB + i * 128 * KIB, &mut buf))
            .unwrap();
    }
    let reads: Vec<u32> = m.legs().iter().map(|l| l.reads()).collect();
    assert!(
        reads == [16, 0] || reads == [0, 16],
        "stream split: {reads:?}"
    );
    // Reads that do not continue a stream (each starts 64 KiB into a 256 KiB
    // slot and ends 64 KiB before the next) alternate.
    let before = reads;
    for i in 0..16u64 {
        let off = (i * 7 % 16) * 256 * KIB + 64 * KIB;
        ring.block_on(m.read(off, &mut buf)).unwrap();
    }
    let spread: Vec<u32> = (0..2).map(|l| m.legs()[l].reads() - before[l]).collect();
    assert_eq!(spread, [8, 8], "random reads not alternated");
    // Two streams at once, interleaved: each keeps its own leg.
    let (a, b) = (0, 2 * MIB);
    let before: Vec<u32> = m.legs().iter().map(|l| l.reads()).collect();
    for i in 0..8u64 {
        ring.block_on(m.read(a + i * 128 * KIB, &mut buf)).unwrap();
        ring.block_on(m.read(b + i * 128 * KIB, &mut buf)).unwrap();
    }
    let spread: Vec<u32> = (0..2).map(|l| m.legs()[l].reads() - before[l]).collect();
    assert_eq!(spread, [8, 8], "two streams, one per leg");
}

#[test]
fn leg_failure_mid_run_is_invisible_to_the_host() {
    let (m, calls) = mem_mirror(2, 4 * MIB);
    let ring = LocalRing::new(8).unwrap();
    let mut model = vec![0u8; m.size() as usize];
    let mut rng = Rng::new(0x0dea_d1e9);
    // Leg 1 works for 120 operations, then fails everything.
    m.legs()[1].set_fail(FailMode::AfterOps(120));
    let mut leg1_reads_at_failure = None;
    for i in 0..300 {
        random_op(&m, &ring, &mut model, &mut rng, CHUNK)
            .unwrap_or_else(|e| panic!("op {i} returned an error to the host: {e}"));
        if i % 100 == 50 {
            concurrent_batch(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
        }
        if m.health().failed_mask() != 0 && leg1_reads_at_failure.is_none() {
            leg1_reads_at_failure = Some((i, m.legs()[1].reads(), m.legs()[0].reads()));
        }
    }
    let (at, leg1_reads, leg0_reads) = leg1_reads_at_failure.expect("leg 1 never failed");
    assert!(at < 200, "failure should happen mid-run (at op {at})");
    assert_eq!(*calls.lock().unwrap(), vec![(1, libc::EIO)]);
    assert_eq!(m.state(), MirrorState::Degraded);
    assert_eq!(m.health().healthy_count(), 1);
    check_all(&m, &ring, &model, &mut rng).unwrap();
    assert_eq!(m.legs()[1].reads(), leg1_reads, "failed leg read again");
    assert!(m.legs()[0].reads() > leg0_reads + 50);
    assert!(m.legs()[0].contents() == model);
}

#[test]
fn all_legs_failing_returns_errors_but_keeps_the_last_leg() {
    let (m, calls) = mem_mirror(2, MIB);
    let ring = LocalRing::new(8).unwrap();
    let data = AlignedBuf::from_slice(&[7; 8192]);
    ring.block_on(m.write(0, &data, false)).unwrap();
    for leg in m.legs() {
        leg.set_errno(libc::EIO);
        leg.set_fail(FailMode::Always);
    }
    let e = ring.block_on(m.write(4096, &data, true)).unwrap_err();
    assert_eq!((e.errno(), e.op(), e.offset()), (libc::EIO, "write", 4096));
    // As in MD, the last healthy leg is never failed: one leg is failed (and
    // reported), the other keeps serving and its errors reach the host.
    assert_eq!(m.state(), MirrorState::Degraded);
    let calls_now = calls.lock().unwrap().clone();
    assert_eq!(calls_now.len(), 1, "{calls_now:?}");
    let survivor = 1 - calls_now[0].0;
    assert!(m.health().is_healthy(survivor));
    let mut buf = AlignedBuf::new(4096);
    assert!(ring.block_on(m.read(0, &mut buf)).is_err());
    assert!(ring.block_on(m.flush()).is_err());
    assert!(ring.block_on(m.discard(0, 4096)).is_err());
    assert!(ring.block_on(m.write_zeroes(0, 4096)).is_err());
    assert_eq!(calls.lock().unwrap().len(), 1);
    // When the survivor recovers, the mirror serves again without the failed leg.
    m.legs()[survivor].set_fail(FailMode::Never);
    ring.block_on(m.read(0, &mut buf)).unwrap();
    assert!(buf.iter().all(|&b| b == 7));
    assert!(m.health().is_healthy(survivor));
}

#[test]
fn read_error_is_retried_on_another_leg() {
    let (m, calls) = mem_mirror(2, MIB);
    let ring = LocalRing::new(8).unwrap();
    let mut data = AlignedBuf::new(64 * 1024);
    Rng::new(5).fill(&mut data);
    ring.block_on(m.write(128 * 1024, &data, false)).unwrap();
    m.legs()[0].set_errno(libc::EILSEQ);
    m.legs()[0].set_fail(FailMode::Always);
    // Two reads: round-robin makes one of them try leg 0 first.
    for _ in 0..2 {
        let mut buf = AlignedBuf::new(data.len());
        ring.block_on(m.read(128 * 1024, &mut buf)).unwrap();
        assert!(buf[..] == data[..]);
    }
    assert_eq!(*calls.lock().unwrap(), vec![(0, libc::EILSEQ)]);
    assert_eq!(m.legs()[0].failures(), 1);
    assert_eq!(m.state(), MirrorState::Degraded);
}

#[test]
fn leg_missing_writes_is_never_read_again() {
    let (m, calls) = mem_mirror(2, MIB);
    let ring = LocalRing::new(8).unwrap();
    m.legs()[1].set_errno(libc::ENOSPC);
    m.legs()[1].set_fail(FailMode::WritesOnly);
    let mut data = AlignedBuf::new(8192);
    Rng::new(9).fill(&mut data);
    ring.block_on(m.write(0, &data, true)).unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![(1, libc::ENOSPC)]);
    // Leg 1 would still answer reads, with stale data: it must not be asked.
    for _ in 0..10 {
        let mut buf = AlignedBuf::new(8192);
        ring.block_on(m.read(0, &mut buf)).unwrap();
        assert!(buf[..] == data[..]);
    }
    assert_eq!(m.legs()[1].reads(), 0);
    // Later writes and flushes skip it.
    let w = m.legs()[1].writes();
    ring.block_on(m.write(8192, &data, false)).unwrap();
    ring.block_on(m.flush()).unwrap();
    assert_eq!(m.legs()[1].writes(), w);
    assert_eq!(m.legs()[1].flushes(), 0);
}

#[test]
fn health_is_shared_by_queue_instances_and_initial_mask_is_honoured() {
    // Two "queues": two Mirror objects over the same disks and one health.
    let (h, calls) = health(2, 0);
    let disks = [MemDev::new(MIB as usize), MemDev::new(MIB as usize)];
    let q0 = Mirror::new(disks.to_vec(), h.clone()).unwrap();
    let q1 = Mirror::new(disks.to_vec(), h.clone()).unwrap();
    let ring = LocalRing::new(8).unwrap();
    let data = AlignedBuf::from_slice(&[3; 4096]);
    disks[1].set_fail(FailMode::Always);
    ring.block_on(q0.write(0, &data, false)).unwrap();
    assert_eq!(q1.state(), MirrorState::Degraded);
    let writes = disks[1].writes();
    ring.block_on(q1.write(4096, &data, false)).unwrap();
    assert_eq!(
        disks[1].writes(),
        writes,
        "queue 1 skips the leg failed on queue 0"
    );
    // Failing it again (from any queue) does not report it again.
    h.fail(1, libc::EIO);
    assert_eq!(calls.lock().unwrap().len(), 1);

    // A leg persisted as failed is never used and not reported again.
    let (h, calls) = health(3, 0b010);
    let disks: Vec<_> = (0..3).map(|_| MemDev::new(MIB as usize)).collect();
    let m = Mirror::new(disks.clone(), h).unwrap();
    assert_eq!(m.state(), MirrorState::Degraded);
    for _ in 0..6 {
        ring.block_on(m.write(0, &data, false)).unwrap();
        let mut buf = AlignedBuf::new(4096);
        ring.block_on(m.read(0, &mut buf)).unwrap();
    }
    assert_eq!((disks[1].reads(), disks[1].writes()), (0, 0));
    assert!(disks[0].reads() > 0 && disks[2].reads() > 0);
    assert!(calls.lock().unwrap().is_empty());
}

#[test]
fn construction_validates_legs() {
    let (h, _) = health(2, 0);
    assert!(Mirror::new(vec![MemDev::new(4096)], h.clone()).is_err());
    assert!(Mirror::new(vec![MemDev::new(4096), MemDev::new(8192)], h.clone()).is_err());
    assert!(Mirror::new((0..3).map(|_| MemDev::new(4096)).collect(), h.clone()).is_err());
    let (h5, _) = health(MAX_LEGS, 0);
    assert!(Mirror::new((0..MAX_LEGS + 1).map(|_| MemDev::new(4096)).collect(), h5).is_err());
    assert!(Mirror::new(vec![MemDev::new(4096), MemDev::new(4096)], h).is_ok());
    let (h1, _) = health(1, 0);
    assert!(Mirror::new(Vec::<MemDev>::new(), h1.clone()).is_err());
    assert!(Mirror::new(vec![MemDev::new(4096)], h1).is_ok());
}

/// A one-leg mirror (a stripe column while another column moves) behaves as
/// a plain stripe column: its leg's errors go to the host, request by request.
#[test]
fn one_leg_mirror_serves_io_and_errors_with_its_leg() {
    let ring = LocalRing::new(8).unwrap();
    let (m, calls) = mem_mirror(1, MIB);
    let mut model = vec![0u8; MIB as usize];
    let mut rng = Rng::new(0x1e6);
    for _ in 0..100 {
        random_op(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
    }
    check_all(&m, &ring, &model, &mut rng).unwrap();
    assert!(m.legs()[0].contents() == model);
    assert_eq!(m.state(), MirrorState::Optimal);

    let leg = &m.legs()[0];
    leg.set_errno(libc::ENOSPC);
    leg.set_fail(FailMode::Always);
    let mut buf = AlignedBuf::new(4096);
    let e = ring.block_on(m.read(0, &mut buf)).unwrap_err();
    assert_eq!((e.errno(), e.op()), (libc::ENOSPC, "read"));
    let e = ring.block_on(m.write(0, &buf, false)).unwrap_err();
    assert_eq!((e.errno(), e.op()), (libc::ENOSPC, "write"));
    assert!(ring.block_on(m.flush()).is_err());
    assert!(ring.block_on(m.write_zeroes(0, 4096)).is_err());
    // The last leg is never failed: once the error clears it serves again.
    assert_eq!(m.state(), MirrorState::Optimal);
    assert!(calls.lock().unwrap().is_empty());
    leg.set_fail(FailMode::Never);
    check_read(&m, &ring, &model, 0, 64 * KIB).unwrap();

    // Its leg persisted as failed: the mirror is Failed and never touches it.
    let (h, _) = health(1, 0b1);
    let dev = MemDev::new(MIB as usize);
    let m = Mirror::new(vec![dev.clone()], h).unwrap();
    assert_eq!(m.state(), MirrorState::Failed);
    let e = ring.block_on(m.read(0, &mut buf)).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert_eq!(
        ring.block_on(m.write(0, &buf, false)).unwrap_err().errno(),
        libc::EIO
    );
    assert!(ring.block_on(m.flush()).is_err());
    assert_eq!((dev.reads(), dev.writes(), dev.flushes()), (0, 0, 0));
}

fn image_mirror_desc(
    a: &TempImage,
    b_file: Arc<std::fs::File>,
    h: Arc<MirrorHealth>,
) -> VolumeDesc {
    let fa = open_alu(&a.path).unwrap();
    VolumeDesc {
        layout: Layout::Mirror,
        copies: 2,
        members: vec![
            MemberDesc {
                pieces: vec![(fa.clone(), 0, MIB).into(), (fa, 2 * MIB, MIB).into()],
            },
            MemberDesc {
                pieces: vec![(b_file, 4096, 2 * MIB).into()],
            },
        ],
        health: vec![h],
        moving: None,
    }
}

#[test]
fn mirror_over_image_partitions_through_build_volume() {
    let a = TempImage::new((3 * MIB) as usize, 0, None);
    let b = TempImage::new((3 * MIB) as usize, 0, None);
    let (h, calls) = health(2, 0);
    let desc = image_mirror_desc(&a, open_alu(&b.path).unwrap(), h);
    let ring = LocalRing::new(64).unwrap();
    let vol = build_volume(&desc, ring.clone()).unwrap();
    assert!(matches!(vol, Volume::Mirror(_)));
    assert_eq!(vol.size(), 2 * MIB);
    let mut model = vec![0u8; vol.size() as usize];
    let mut rng = Rng::new(0x1a6e);
    for i in 0..150 {
        random_op(&vol, &ring, &mut model, &mut rng, CHUNK).unwrap();
        if i % 50 == 25 {
            concurrent_batch(&vol, &ring, &mut model, &mut rng, CHUNK).unwrap();
        }
    }
    check_all(&vol, &ring, &model, &mut rng).unwrap();
    // Both legs hold the model, in their own placement.
    let (ca, cb) = (a.contents(), b.contents());
    let leg0: Vec<u8> = [&ca[..MIB as usize], &ca[(2 * MIB) as usize..]].concat();
    assert!(leg0 == model);
    assert!(cb[4096..4096 + (2 * MIB) as usize] == model[..]);
    assert!(!vol.degraded());
    assert!(calls.lock().unwrap().is_empty());
}

#[test]
fn read_only_leg_fails_with_kernel_errno_and_volume_degrades() {
    let a = TempImage::new((3 * MIB) as usize, 0, None);
    let b = TempImage::new((3 * MIB) as usize, 0, None);
    let (h, calls) = health(2, 0);
    let ro = Arc::new(std::fs::File::open(&b.path).unwrap());
    let desc = image_mirror_desc(&a, ro, h.clone());
    let ring = LocalRing::new(64).unwrap();
    let vol = build_volume(&desc, ring.clone()).unwrap();
    let mut model = vec![0u8; vol.size() as usize];
    let mut rng = Rng::new(77);
    for _ in 0..60 {
        random_op(&vol, &ring, &mut model, &mut rng, CHUNK).unwrap();
    }
    assert!(vol.degraded());
    assert!(!vol.failed());
    assert_eq!(*calls.lock().unwrap(), vec![(1, libc::EBADF)]);
    assert_eq!(h.state(), MirrorState::Degraded);
    check_read(&vol, &ring, &model, 0, vol.size()).unwrap();
    assert!(
        b.contents().iter().all(|&x| x == 0),
        "read-only leg untouched"
    );
}

#[test]
fn a_slow_leg_completing_out_of_order_changes_nothing() {
    let (m, calls) = mem_mirror(2, 4 * MIB);
    // Leg 0 answers many scheduling rounds after leg 1, every time.
    m.legs()[0].set_delay(25);
    let ring = LocalRing::new(8).unwrap();
    let mut model = vec![0u8; m.size() as usize];
    let mut rng = Rng::new(0x51_0e);
    for i in 0..200 {
        random_op(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
        if i % 50 == 25 {
            concurrent_batch(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
        }
    }
    check_all(&m, &ring, &model, &mut rng).unwrap();
    for leg in m.legs() {
        assert!(leg.contents() == model);
    }
    assert!(calls.lock().unwrap().is_empty());
    assert_eq!(m.state(), MirrorState::Optimal);
}

#[test]
fn a_torn_write_fails_the_leg_not_the_host() {
    let (m, calls) = mem_mirror(2, 4 * MIB);
    let ring = LocalRing::new(8).unwrap();
    let mut model = vec![0u8; m.size() as usize];
    let mut rng = Rng::new(0x7047);
    for _ in 0..50 {
        random_op(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
    }
    // From now on leg 1 writes half of each write, then reports EIO.
    m.legs()[1].set_fail(FailMode::TornWritesAfter(0));
    let before = m.legs()[1].failures();
    for _ in 0..150 {
        random_op(&m, &ring, &mut model, &mut rng, CHUNK).unwrap();
    }
    assert!(m.legs()[1].failures() > before, "no write was torn");
    assert_eq!(*calls.lock().unwrap(), vec![(1, libc::EIO)]);
    assert_eq!(m.state(), MirrorState::Degraded);
    // Leg 0 has every write whole; reads come from it alone.
    assert!(m.legs()[0].contents() == model);
    check_all(&m, &ring, &model, &mut rng).unwrap();
}

/// While one queue's leg failure is being recorded (the daemon persisting it
/// in `on_fail`), another queue's write, which skips the failed leg and
/// lands on the survivor only, is not acknowledged: after a crash before the
/// record, the resync could copy from the failed leg and lose it (MD holds
/// writes while a superblock change is pending).
#[test]
fn writes_wait_while_a_leg_failure_is_being_recorded() {
    use std::sync::mpsc;
    use std::time::Duration;
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let entered_tx = Mutex::new(entered_tx);
    let h = Arc::new(MirrorHealth::new(
        2,
        0,
        Box::new(move |_, _| {
            entered_tx.lock().unwrap().send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }),
    ));
    // Queue A: its write fails on leg 1, and `on_fail` blocks its thread.
    let ha = h.clone();
    let a = std::thread::spawn(move || {
        let legs = vec![MemDev::new(MIB as usize), MemDev::new(MIB as usize)];
        legs[1].set_fail(FailMode::WritesOnly);
        let m = Mirror::new(legs, ha).unwrap();
        let ring = LocalRing::new(8).unwrap();
        let data = AlignedBuf::from_slice(&[1; 4096]);
        ring.block_on(m.write(0, &data, false))
            .map_err(|e| e.errno())
    });
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        !h.is_healthy(1),
        "leg 1 failed in memory while it is recorded"
    );
    // Queue B: its own legs work; it sees leg 1 failed and writes leg 0 only.
    let hb = h.clone();
    let (done_tx, done) = mpsc::channel();
    let b = std::thread::spawn(move || {
        let legs = vec![MemDev::new(MIB as usize), MemDev::new(MIB as usize)];
        let m = Mirror::new(legs, hb).unwrap();
        let ring = LocalRing::new(8).unwrap();
        let data = AlignedBuf::from_slice(&[2; 4096]);
        let w = ring.block_on(m.write(8192, &data, false));
        done_tx.send(("write", w.is_ok())).unwrap();
        let f = ring.block_on(m.flush());
        done_tx.send(("flush", f.is_ok())).unwrap();
        (m.legs()[0].writes(), m.legs()[1].writes())
    });
    assert!(
        done.recv_timeout(Duration::from_millis(300)).is_err(),
        "a write was acknowledged before the leg failure was recorded"
    );
    release.send(()).unwrap();
    assert_eq!(
        done.recv_timeout(Duration::from_secs(10)),
        Ok(("write", true))
    );
    assert_eq!(
        done.recv_timeout(Duration::from_secs(10)),
        Ok(("flush", true))
    );
    assert_eq!(
        a.join().unwrap(),
        Ok(()),
        "queue A's write succeeded on leg 0"
    );
    assert_eq!(b.join().unwrap(), (1, 0), "queue B wrote leg 0 only");
}
