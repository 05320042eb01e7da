//! Write-intent bitmap (stack::bitmap) with the mirror and the resync job: the
//! bitmap block is durable before any leg sees a write to a newly dirtied
//! region, a write to a region already on disk writes no bitmap, a bitmap that
//! cannot be written fails the write without touching the legs, a crash leaves
//! legs differing only in set regions and `resync_dirty` repairs exactly those
//! (never reading a clean region), sweeps clear idle regions after two passes
//! and never while a leg is failed, a returning leg gets only the dirty
//! regions, load merges copies, and the daemon's arrangement (build_volume over
//! image files, copies placed with `set_copy`, a leg replaced) works on real
//! rings.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use common::memdev::{FailMode, MemDev, YieldOnce};
use common::workload::MIB;
use common::{Rng, TempImage};
use tierblk_stack::bitmap::{Held, IntentBlock, IntentError, IntentId, WriteIntent, BLOCK_SIZE};
use tierblk_stack::resync::{resync_dirty, DirtyReport, JobControl, JobError};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, BuildError, IoResult, Layout, Limits, MemberDesc,
    Mirror, MirrorHealth, VolumeDesc,
};

const SIZE: u64 = 16 * MIB;
const ID: IntentId = IntentId {
    volume: 42,
    mirror: 0,
};

type Calls = Arc<Mutex<Vec<(usize, i32)>>>;

/// A health record for `legs` legs of `size` bytes carrying a fresh bitmap.
fn health_with(legs: usize, size: u64) -> (Arc<MirrorHealth>, Arc<WriteIntent>, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let wi = Arc::new(WriteIntent::new(ID, legs, size).unwrap());
    let h = MirrorHealth::new_with_rebuild(
        legs,
        0,
        &[],
        size,
        Box::new(move |leg, errno| c.lock().unwrap().push((leg, errno))),
    )
    .with_write_intent(wi.clone())
    .unwrap();
    (Arc::new(h), wi, calls)
}

fn copies(n: usize) -> Vec<MemDev> {
    (0..n).map(|_| MemDev::new(BLOCK_SIZE)).collect()
}

fn decode(c: &MemDev) -> IntentBlock {
    IntentBlock::decode(&c.contents()).unwrap()
}

fn data(rng: &mut Rng, len: u64) -> AlignedBuf {
    let mut d = AlignedBuf::new(len as usize);
    rng.fill(&mut d);
    d
}

/// Everything the legs and copies see, in order: (device, event, offset, len).
/// Devices are "leg0".., "copy0"..; events 'W' (write-like start), 'w'
/// (write-like completion), 'R' (read start).
type Log = Rc<RefCell<Vec<(String, char, u64, u64)>>>;

/// A MemDev that logs, can drop writes silently (a crash: they never reached
/// the medium), and can hold its writes until released.
#[derive(Clone)]
struct Dev {
    mem: MemDev,
    name: String,
    log: Log,
    drop_writes: Rc<Cell<bool>>,
    hold: Rc<Cell<bool>>,
}

impl Dev {
    fn new(mem: MemDev, name: String, log: &Log) -> Dev {
        Dev {
            mem,
            name,
            log: log.clone(),
            drop_writes: Rc::default(),
            hold: Rc::default(),
        }
    }

    fn push(&self, e: char, off: u64, len: u64) {
        self.log.borrow_mut().push((self.name.clone(), e, off, len));
    }

    async fn write_like<F: std::future::Future<Output = IoResult<()>>>(
        &self,
        off: u64,
        len: u64,
        f: F,
    ) -> IoResult<()> {
        self.push('W', off, len);
        while self.hold.get() {
            YieldOnce(false).await;
        }
        let r = if self.drop_writes.get() {
            Ok(())
        } else {
            f.await
        };
        self.push('w', off, len);
        r
    }
}

impl BlockDev for Dev {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn limits(&self) -> Limits {
        self.mem.limits()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.push('R', offset, buf.len() as u64);
        self.mem.read(offset, buf).await
    }
    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        let len = buf.len() as u64;
        self.write_like(offset, len, self.mem.write(offset, buf, fua))
            .await
    }
    async fn flush(&self) -> IoResult<()> {
        self.mem.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.write_like(offset, len, self.mem.discard(offset, len))
            .await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.write_like(offset, len, self.mem.write_zeroes(offset, len))
            .await
    }
}

/// Legs and copies of a mirror over `mems`/`cmems`, all logging into `log`.
fn devs(mems: &[MemDev], cmems: &[MemDev], log: &Log) -> (Vec<Dev>, Vec<Dev>) {
    (
        mems.iter()
            .enumerate()
            .map(|(i, m)| Dev::new(m.clone(), format!("leg{i}"), log))
            .collect(),
        cmems
            .iter()
            .enumerate()
            .map(|(i, m)| Dev::new(m.clone(), format!("copy{i}"), log))
            .collect(),
    )
}

/// Legs holding the same random contents.
fn same_legs(n: usize, rng: &mut Rng) -> Vec<MemDev> {
    let init = data(rng, SIZE);
    (0..n)
        .map(|_| {
            let m = MemDev::new(SIZE as usize);
            m.0.data.borrow_mut().copy_from_slice(&init);
            m
        })
        .collect()
}

fn regions_read(log: &Log, dev: &str) -> Vec<u64> {
    let mut r: Vec<u64> = log
        .borrow()
        .iter()
        .filter(|(d, e, _, _)| d == dev && *e == 'R')
        .flat_map(|&(_, _, off, len)| off / MIB..(off + len).div_ceil(MIB))
        .collect();
    r.sort();
    r.dedup();
    r
}

#[test]
fn the_bitmap_is_durable_before_a_leg_sees_a_newly_dirtied_region() {
    let ring = LocalRing::new(8).unwrap();
    let mut rng = Rng::new(1);
    let (h, wi, calls) = health_with(2, SIZE);
    let log: Log = Rc::default();
    let (legs, cps) = devs(&same_legs(2, &mut rng), &copies(2), &log);
    ring.block_on(wi.format(&cps)).unwrap();
    assert_eq!(wi.persists(), 1);
    assert_eq!(wi.region_size(), MIB);
    let m = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    log.borrow_mut().clear();
    let check_order = |what: &str| {
        // Every leg write-like start comes after both copies completed a
        // block holding its regions' bits.
        let log = log.borrow();
        for (i, (dev, e, off, len)) in log.iter().enumerate() {
            if !dev.starts_with("leg") || *e != 'W' {
                continue;
            }
            for c in ["copy0", "copy1"] {
                assert!(
                    log[..i].iter().any(|(d, e, _, _)| d == c && *e == 'w'),
                    "{what}: {dev} write at {off}+{len} before {c} was written: {log:?}"
                );
            }
        }
    };
    // First write to region 0: one block write per copy, then the legs.
    ring.block_on(m.write(4096, &data(&mut rng, 8192), false))
        .unwrap();
    check_order("first write");
    assert_eq!(wi.persists(), 2);
    assert!(decode(&cps[0].mem).is_set(0) && decode(&cps[1].mem).is_set(0));
    // Another write to region 0: no bitmap I/O at all.
    log.borrow_mut().clear();
    ring.block_on(m.write(MIB - 4096, &data(&mut rng, 4096), true))
        .unwrap();
    assert_eq!(wi.persists(), 2);
    assert!(log.borrow().iter().all(|(d, _, _, _)| d.starts_with("leg")));
    // A write straddling regions 2 and 3, a discard in 5 and write-zeroes in 6:
    // one block write each, before their legs.
    log.borrow_mut().clear();
    ring.block_on(m.write(3 * MIB - 4096, &data(&mut rng, 8192), false))
        .unwrap();
    ring.block_on(m.discard(5 * MIB, 4096)).unwrap();
    ring.block_on(m.write_zeroes(6 * MIB + 8192, 4096)).unwrap();
    check_order("straddling write, discard, write-zeroes");
    assert_eq!(wi.persists(), 5);
    let b = decode(&cps[1].mem);
    let set: Vec<usize> = (0..16).filter(|&r| b.is_set(r)).collect();
    assert_eq!(set, vec![0, 2, 3, 5, 6]);
    assert_eq!(wi.dirty_regions(), 5);
    // Concurrent first writes to one new region share block writes and none
    // reaches a leg before the bitmap.
    log.borrow_mut().clear();
    let bufs: Vec<AlignedBuf> = (0..6).map(|_| data(&mut rng, 4096)).collect();
    let before = wi.persists();
    ring.run_all(
        bufs.iter()
            .enumerate()
            .map(|(i, b)| {
                let m = &m;
                Box::pin(async move {
                    m.write(9 * MIB + 8192 * i as u64, b, false).await.unwrap();
                }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
            })
            .collect(),
    );
    check_order("concurrent first writes");
    let n = wi.persists() - before;
    assert!(
        (1..6).contains(&n),
        "{n} block writes for 6 concurrent writes"
    );
    assert!(calls.lock().unwrap().is_empty());
    // A read is not affected (no resync pending).
    let mut buf = AlignedBuf::new(4096);
    ring.block_on(m.read(0, &mut buf)).unwrap();
}

#[test]
fn a_bitmap_that_cannot_be_written_fails_the_write_before_the_legs() {
    let ring = LocalRing::new(8).unwrap();
    let mut rng = Rng::new(2);
    let (h, wi, calls) = health_with(2, SIZE);
    let legs = same_legs(2, &mut rng);
    let cps = copies(2);
    ring.block_on(wi.format(&cps)).unwrap();
    let m = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    // Copy 1 fails: the write succeeds on copy 0, and leg 1 (whose ALU lost
    // the bitmap write) is failed, as MD fails a device whose bitmap write
    // fails.
    cps[1].set_fail(FailMode::Always);
    ring.block_on(m.write(MIB, &data(&mut rng, 4096), false))
        .unwrap();
    assert_eq!(calls.lock().unwrap().as_slice(), &[(1, libc::EIO)]);
    assert_eq!(h.failed_mask(), 0b10);
    assert!(decode(&cps[0]).is_set(1));
    // From now on leg 1's copy is skipped.
    let w = cps[1].writes();
    ring.block_on(m.write(4 * MIB, &data(&mut rng, 4096), false))
        .unwrap();
    assert_eq!(cps[1].writes(), w);
    assert!(decode(&cps[0]).is_set(4));
    // The last copy fails too: the write fails and no leg sees it (leg 0, the
    // last healthy leg, is not failed).
    cps[0].set_fail(FailMode::Always);
    let legs_before = legs[0].writes() + legs[1].writes();
    let e = ring
        .block_on(m.write(7 * MIB, &data(&mut rng, 4096), false))
        .unwrap_err();
    assert_eq!(
        (e.errno(), e.op(), e.offset()),
        (libc::EIO, "write", 7 * MIB)
    );
    assert!(ring.block_on(m.discard(8 * MIB, 4096)).is_err());
    assert!(ring.block_on(m.write_zeroes(9 * MIB, 4096)).is_err());
    assert_eq!(
        legs[0].writes() + legs[1].writes(),
        legs_before,
        "legs written unmarked"
    );
    assert_eq!(legs[0].bytes(7 * MIB, 4096), legs[1].bytes(7 * MIB, 4096));
    assert_eq!(h.failed_mask(), 0b10);
    // A region already on disk needs no bitmap write: it still works.
    ring.block_on(m.write(MIB + 8192, &data(&mut rng, 4096), false))
        .unwrap();
    // A mirror whose health carries a bitmap needs one copy per leg.
    assert!(matches!(
        Mirror::new(legs.clone(), h.clone()),
        Err(BuildError::WriteIntent(_))
    ));
    assert!(matches!(
        Mirror::with_copies(legs.clone(), vec![cps[0].clone()], h.clone()),
        Err(BuildError::WriteIntent(_))
    ));
    // And the health must have a sync window of the legs' size.
    let other = Arc::new(WriteIntent::new(ID, 2, SIZE).unwrap());
    assert!(matches!(
        MirrorHealth::new(2, 0, Box::new(|_, _| {})).with_write_intent(other.clone()),
        Err(IntentError::Mismatch { .. })
    ));
    assert!(matches!(
        ring.block_on(other.sweep(&h, &cps)),
        Err(IntentError::NotAttached)
    ));
}

/// Write through `m` to `regions` (one 8 KiB write each, at a random place).
fn write_regions<D: BlockDev, C: BlockDev>(
    ring: &LocalRing,
    m: &Mirror<D, C>,
    rng: &mut Rng,
    regions: &[u64],
) {
    for &r in regions {
        let off = r * MIB + 4096 * rng.below(MIB / 4096 - 2);
        ring.block_on(m.write(off, &data(rng, 8192), false))
            .unwrap();
    }
}

#[test]
fn after_a_crash_only_set_regions_differ_and_resync_dirty_repairs_exactly_them() {
    let ring = LocalRing::new(8).unwrap();
    let mut rng = Rng::new(3);
    let mems = same_legs(2, &mut rng);
    let cmems = copies(2);
    let log: Log = Rc::default();
    {
        let (h, wi, _) = health_with(2, SIZE);
        let (legs, cps) = devs(&mems, &cmems, &log);
        ring.block_on(wi.format(&cps)).unwrap();
        let m = Mirror::with_copies(legs.clone(), cps, h).unwrap();
        write_regions(&ring, &m, &mut rng, &[1, 4]);
        // The crash: the last writes reached leg 0 only.
        legs[1].drop_writes.set(true);
        write_regions(&ring, &m, &mut rng, &[4, 7, 7, 11]);
        // Discard a range on leg 0 only, too.
        ring.block_on(m.discard(13 * MIB, 64 << 10)).unwrap();
    }
    let differing: Vec<u64> = (0..16)
        .filter(|&r| {
            let a = r * MIB..(r + 1) * MIB;
            mems[0].bytes(a.start, MIB) != mems[1].bytes(a.start, MIB)
        })
        .collect();
    assert_eq!(differing, vec![4, 7, 11, 13]);
    // Restart: a new bitmap loaded from the copies.
    let (h, wi, calls) = health_with(2, SIZE);
    let (legs, cps) = devs(&mems, &cmems, &log);
    let report = ring.block_on(wi.load(&cps));
    assert_eq!(report.copies.iter().filter(|c| c.is_ok()).count(), 2);
    assert!(!report.full);
    assert_eq!(report.dirty, 5, "regions 1, 4, 7, 11, 13");
    assert!(wi.unsynced());
    for r in differing.iter().chain(&[1]) {
        assert!(wi.is_dirty(*r as usize), "region {r}");
    }
    let host = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    let job = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    // Until the resync is done, reads of dirty regions go to the first leg
    // (the resync's source): the same answer every time.
    log.borrow_mut().clear();
    for _ in 0..4 {
        let mut buf = AlignedBuf::new(4096);
        ring.block_on(host.read(7 * MIB, &mut buf)).unwrap();
        assert_eq!(buf[..], mems[0].bytes(7 * MIB, 4096)[..]);
    }
    assert!(regions_read(&log, "leg1").is_empty());
    // Clean regions are still balanced.
    for _ in 0..4 {
        let mut buf = AlignedBuf::new(4096);
        ring.block_on(host.read(2 * MIB, &mut buf)).unwrap();
    }
    assert_eq!(regions_read(&log, "leg1"), vec![2]);
    // A sweep waits for the resync.
    let r = ring.block_on(wi.sweep(&h, &cps)).unwrap();
    assert_eq!((r.cleared, r.held), (0, Some(Held::ResyncPending)));
    log.borrow_mut().clear();
    let ctl = JobControl::new();
    let done = ring
        .block_on(resync_dirty(&job, None, 256 << 10, &ctl))
        .unwrap();
    assert_eq!(
        done,
        DirtyReport {
            regions: 5,
            bytes: 5 * MIB,
            cleared: 5
        }
    );
    assert!(
        mems[0].contents() == mems[1].contents(),
        "legs still differ"
    );
    // Only dirty regions were read, only from leg 0.
    assert_eq!(regions_read(&log, "leg0"), vec![1, 4, 7, 11, 13]);
    assert!(regions_read(&log, "leg1").is_empty());
    assert_eq!(ctl.progress(), SIZE);
    assert!(!wi.unsynced());
    assert_eq!(wi.dirty_regions(), 0);
    for c in &cmems {
        assert!(decode(c).bits.iter().all(|&w| w == 0), "bits left on disk");
    }
    assert!(calls.lock().unwrap().is_empty());
    // Nothing left: a second run copies nothing.
    let again = ring
        .block_on(resync_dirty(&job, None, 256 << 10, &ctl))
        .unwrap();
    assert_eq!(again, DirtyReport::default());
}

#[test]
fn a_crash_resync_survives_host_writes_cancellation_and_a_restart() {
    let ring = LocalRing::new(8).unwrap();
    let mut rng = Rng::new(4);
    let mems = same_legs(2, &mut rng);
    let (h, wi, _) = health_with(2, SIZE);
    let cmems = copies(2);
    ring.block_on(wi.format(&cmems)).unwrap();
    let m = Mirror::with_copies(mems.clone(), cmems.clone(), h).unwrap();
    write_regions(&ring, &m, &mut rng, &[0, 3, 5, 8, 12, 15]);
    // Leg 1 diverges in every dirty region.
    for r in [0u64, 3, 5, 8, 12, 15] {
        mems[1].0.data.borrow_mut()[(r * MIB) as usize..][..4096].fill(0xab);
    }
    let (h, wi, _) = health_with(2, SIZE);
    assert_eq!(ring.block_on(wi.load(&cmems)).dirty, 6);
    let host = Mirror::with_copies(mems.clone(), cmems.clone(), h.clone()).unwrap();
    let job = Mirror::with_copies(mems.clone(), cmems.clone(), h.clone()).unwrap();
    // Cancel after a few steps, with checkpoints every step: the regions
    // copied so far are cleared on disk (the bitmap is the checkpoint).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let ctl = JobControl::new().with_checkpoint(0, Box::new(move |p| s.lock().unwrap().push(p)));
    let stop_at = Cell::new(0);
    let model = RefCell::new(mems[0].contents());
    ring.run_all(vec![
        Box::pin(async {
            let r = resync_dirty(&job, None, 512 << 10, &ctl).await;
            assert!(matches!(r, Err(JobError::Cancelled { .. })), "{r:?}");
        }),
        Box::pin(async {
            // Host writes while the job runs, into dirty and clean regions.
            let mut rng = Rng::new(44);
            for i in 0..40u64 {
                let off = (i * 7 % 16) * MIB + 4096 * rng.below(200);
                let d = data(&mut rng, 4096);
                host.write(off, &d, false).await.unwrap();
                model.borrow_mut()[off as usize..][..4096].copy_from_slice(&d);
                if i == 20 {
                    stop_at.set(1);
                    ctl.cancel();
                }
                YieldOnce(false).await;
            }
        }),
    ]);
    assert_eq!(stop_at.get(), 1);
    let left = wi.dirty_regions();
    assert!(wi.unsynced(), "cancelled: still pending");
    assert!(!seen.lock().unwrap().is_empty());
    // The restarted run finishes the job.
    let ctl = JobControl::new();
    ring.block_on(resync_dirty(&job, None, 512 << 10, &ctl))
        .unwrap();
    assert!(mems[0].contents() == mems[1].contents());
    assert!(mems[0].contents() == *model.borrow());
    assert!(wi.dirty_regions() <= left);
    assert_eq!(wi.dirty_regions(), 0);
}

#[test]
fn sweeps_clear_idle_regions_after_two_passes_only() {
    let ring = LocalRing::new(8).unwrap();
    let mut rng = Rng::new(5);
    let (h, wi, _) = health_with(2, SIZE);
    let log: Log = Rc::default();
    let (legs, cps) = devs(&same_legs(2, &mut rng), &copies(2), &log);
    ring.block_on(wi.format(&cps)).unwrap();
    let m = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    write_regions(&ring, &m, &mut rng, &[0, 3, 9]);
    let sweep = || ring.block_on(wi.sweep(&h, &cps)).unwrap();
    let r = sweep();
    assert_eq!((r.cleared, r.aging, r.dirty, r.persisted), (0, 3, 3, false));
    // Region 3 is written between the passes: it starts over.
    write_regions(&ring, &m, &mut rng, &[3]);
    let persists = wi.persists();
    let r = sweep();
    assert_eq!((r.cleared, r.aging, r.dirty, r.persisted), (2, 1, 1, true));
    assert_eq!(wi.persists(), persists + 1);
    let b = decode(&cps[0].mem);
    assert!(!b.is_set(0) && b.is_set(3) && !b.is_set(9));
    // A write in flight keeps its region, however many passes run.
    legs[0].hold.set(true);
    let held = Cell::new(false);
    ring.run_all(vec![
        Box::pin(async {
            m.write(9 * MIB, &data(&mut Rng::new(9), 4096), false)
                .await
                .unwrap();
        }),
        Box::pin(async {
            // Let the write reach the held leg.
            while !log
                .borrow()
                .iter()
                .any(|(d, e, o, _)| d == "leg0" && *e == 'W' && *o == 9 * MIB)
            {
                YieldOnce(false).await;
            }
            for _ in 0..4 {
                let r = wi.sweep(&h, &cps).await.unwrap();
                assert!(r.busy >= 1 || r.aging >= 1, "{r:?}");
                assert!(wi.is_dirty(9));
                assert!(
                    decode(&cps[1].mem).is_set(9),
                    "cleared on disk while written"
                );
            }
            held.set(true);
            legs[0].hold.set(false);
        }),
    ]);
    assert!(held.get());
    // Region 3 went idle two passes ago and 9 was just written: 3 goes now,
    // 9 after two more passes.
    let r = sweep();
    assert!(!wi.is_dirty(3), "{r:?}");
    sweep();
    assert_eq!(sweep().dirty, 0);
    assert!(decode(&cps[1].mem).bits.iter().all(|&w| w == 0));
}

#[test]
fn a_failed_leg_keeps_the_bits_and_its_return_copies_only_them() {
    let ring = LocalRing::new(8).unwrap();
    let mut rng = Rng::new(6);
    let (h, wi, calls) = health_with(3, SIZE);
    let log: Log = Rc::default();
    let mems = same_legs(3, &mut rng);
    let (legs, cps) = devs(&mems, &copies(3), &log);
    ring.block_on(wi.format(&cps)).unwrap();
    let m = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    write_regions(&ring, &m, &mut rng, &[2]);
    // Leg 2 fails on a write to region 6 and misses the writes that follow.
    mems[2].set_fail(FailMode::WritesOnly);
    write_regions(&ring, &m, &mut rng, &[6, 10, 14]);
    assert_eq!(calls.lock().unwrap().as_slice(), &[(2, libc::EIO)]);
    assert_eq!(h.failed_mask(), 0b100);
    for _ in 0..4 {
        let r = ring.block_on(wi.sweep(&h, &cps)).unwrap();
        assert_eq!((r.cleared, r.held), (0, Some(Held::LegsNotHealthy)));
    }
    assert_eq!(wi.dirty_regions(), 4);
    // A failed leg's copy is no longer written; the others carry the bits.
    assert!(!decode(&cps[2].mem).is_set(10));
    assert!(decode(&cps[0].mem).is_set(14));
    // Its ALU returns with the data it had: rebuild from the bits only.
    mems[2].set_fail(FailMode::Never);
    assert!(h.start_rebuild(2, 0));
    // Writes now reach it again (and are marked as usual).
    write_regions(&ring, &m, &mut rng, &[14]);
    log.borrow_mut().clear();
    let job = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    let cp = Arc::new(Mutex::new(Vec::new()));
    let c = cp.clone();
    let ctl =
        JobControl::new().with_checkpoint(4 * MIB, Box::new(move |p| c.lock().unwrap().push(p)));
    let r = ring
        .block_on(resync_dirty(&job, Some(2), 256 << 10, &ctl))
        .unwrap();
    assert_eq!((r.regions, r.bytes), (4, 4 * MIB));
    assert!(h.is_healthy(2));
    assert!(mems[2].contents() == mems[0].contents());
    assert!(mems[1].contents() == mems[0].contents());
    // Only dirty regions were read, from the first healthy leg, and only the
    // returning leg was written.
    assert_eq!(regions_read(&log, "leg0"), vec![2, 6, 10, 14]);
    assert!(regions_read(&log, "leg1").is_empty());
    assert!(log
        .borrow()
        .iter()
        .filter(|(_, e, _, _)| *e == 'W')
        .all(|(d, _, _, _)| d == "leg2" || d.starts_with("copy")));
    // Checkpoints are leg offsets, reported at least every 4 MiB.
    assert_eq!(*cp.lock().unwrap().last().unwrap(), SIZE);
    // Every leg is healthy: the bits were cleared at the end.
    assert_eq!(r.cleared, 4);
    assert_eq!(wi.dirty_regions(), 0);
    // A leg that is not rebuilding is refused.
    assert_eq!(
        ring.block_on(resync_dirty(&job, Some(1), 256 << 10, &JobControl::new())),
        Err(JobError::NotRebuilding(1))
    );
    let plain = Arc::new(MirrorHealth::new_with_rebuild(
        2,
        0,
        &[],
        SIZE,
        Box::new(|_, _| {}),
    ));
    let no_bitmap = Mirror::new(same_legs(2, &mut rng), plain).unwrap();
    assert_eq!(
        ring.block_on(resync_dirty(&no_bitmap, None, 4096, &JobControl::new())),
        Err(JobError::NoBitmap)
    );
}

/// Writes made by another SP while a leg was out are in no bit: marking
/// every region makes the leg's return copy all of it, and the bits survive
/// sweeps and a reload until then.
#[test]
fn mark_all_makes_a_returning_leg_copy_everything() {
    let ring = LocalRing::new(8).unwrap();
    let mut rng = Rng::new(9);
    let (h, wi, _calls) = health_with(2, SIZE);
    let mems = same_legs(2, &mut rng);
    let log: Log = Rc::default();
    let (legs, cps) = devs(&mems, &copies(2), &log);
    ring.block_on(wi.format(&cps)).unwrap();
    let m = Mirror::with_copies(legs.clone(), cps.clone(), h.clone()).unwrap();
    write_regions(&ring, &m, &mut rng, &[3]);
    assert!(h.mark_failed(1));
    // What another SP wrote to leg 0 alone, past this bitmap.
    let other = data(&mut rng, MIB);
    mems[0].0.data.borrow_mut()[(9 * MIB) as usize..(10 * MIB) as usize].copy_from_slice(&other);
    ring.block_on(wi.mark_all(&h, &cps)).unwrap();
    let regions = wi.regions();
    assert_eq!(wi.dirty_regions(), regions);
    assert!(!wi.unsynced(), "no crash resync implied");
    let r = ring.block_on(wi.sweep(&h, &cps)).unwrap();
    assert_eq!(r.cleared, 0, "a leg is out: nothing cleared");
    // On disk in the working leg's copy: a reload finds every region dirty.
    let block = decode(&cps[0].mem);
    assert!((0..regions).all(|r| block.is_set(r)));
    let again = WriteIntent::new(ID, 2, SIZE).unwrap();
    ring.block_on(again.load(&cps[..1]));
    assert_eq!(again.dirty_regions(), regions);
    // The leg returns: its dirty-only copy takes everything, the other SP's
    // megabyte too.
    assert!(h.start_rebuild(1, 0));
    let job = Mirror::with_copies(legs, cps, h.clone()).unwrap();
    let r = ring
        .block_on(resync_dirty(&job, Some(1), 256 << 10, &JobControl::new()))
        .unwrap();
    assert_eq!((r.regions, r.bytes), (regions as u64, SIZE));
    assert!(mems[1].contents() == mems[0].contents());
}

#[test]
fn load_takes_the_union_of_valid_copies_and_falls_back_to_a_full_resync() {
    let ring = LocalRing::new(8).unwrap();
    let wi = WriteIntent::new(ID, 3, SIZE).unwrap();
    let block = |id: IntentId, set: &[usize], seq: u64| {
        let mut bits = vec![0u64; 1];
        for &r in set {
            bits[0] |= 1 << r;
        }
        IntentBlock {
            id,
            leg_size: SIZE,
            region_size: MIB,
            regions: 16,
            sequence: seq,
            bits,
        }
        .encode()
    };
    let dev = |b: &[u8]| {
        let d = MemDev::new(BLOCK_SIZE);
        d.0.data.borrow_mut().copy_from_slice(b);
        d
    };
    let mut torn = block(ID, &[9], 7);
    torn[3000..].fill(0);
    let foreign = block(
        IntentId {
            volume: 42,
            mirror: 1,
        },
        &[10],
        3,
    );
    let a = dev(&block(ID, &[1, 2], 5));
    let b = dev(&block(ID, &[2, 3], 4));
    let r = ring.block_on(wi.load(&[a.clone(), dev(&torn), dev(&foreign), b.clone()]));
    assert_eq!(r.dirty, 3);
    assert!(!r.full);
    assert_eq!(r.copies[0], Ok(5));
    assert!(r.copies[1].is_err() && r.copies[2].is_err());
    assert_eq!(r.copies[3], Ok(4));
    assert!((1..=3).all(|x| wi.is_dirty(x)) && !wi.is_dirty(9) && !wi.is_dirty(10));
    assert!(wi.unsynced());
    // Every copy unusable: all regions dirty.
    let unreadable = MemDev::new(BLOCK_SIZE);
    unreadable.set_fail(FailMode::Always);
    let wi = WriteIntent::new(ID, 3, SIZE).unwrap();
    let r = ring.block_on(wi.load(&[dev(&torn), MemDev::new(BLOCK_SIZE), unreadable]));
    assert!(r.full);
    assert_eq!((r.dirty, wi.dirty_regions()), (16, 16));
    // A clean (formatted) set of copies loads clean: no resync.
    let wi = WriteIntent::new(ID, 2, SIZE).unwrap();
    let cps = copies(2);
    ring.block_on(wi.format(&cps)).unwrap();
    let again = WriteIntent::new(ID, 2, SIZE).unwrap();
    let r = ring.block_on(again.load(&cps));
    assert_eq!((r.dirty, r.full), (0, false));
    assert!(!again.unsynced());
}

/// The daemon's arrangement: legs and bitmap copies on image files, placed
/// with `set_copy`, trees built per thread with `build_volume`; a replaced leg
/// takes its copy to the new ALU.
#[test]
fn build_volume_writes_the_copies_where_set_copy_placed_them() {
    const LEG: u64 = 4 * MIB;
    const COPY_AT: u64 = 0x50_0000 + 3 * 4096;
    let imgs: Vec<TempImage> = (0..3)
        .map(|_| TempImage::new((8 * MIB) as usize, 0, None))
        .collect();
    let files: Vec<_> = imgs.iter().map(|i| open_alu(&i.path).unwrap()).collect();
    let wi = Arc::new(WriteIntent::new(ID, 2, LEG).unwrap());
    let h = Arc::new(
        MirrorHealth::new_with_rebuild(2, 0, &[], LEG, Box::new(|_, _| {}))
            .with_write_intent(wi.clone())
            .unwrap(),
    );
    let desc = VolumeDesc {
        layout: Layout::Mirror,
        copies: 2,
        members: (0..2)
            .map(|i| MemberDesc {
                pieces: vec![(files[i].clone(), MIB, LEG).into()],
            })
            .collect(),
        health: vec![h.clone()],
        moving: None,
    };
    let ring = LocalRing::new(16).unwrap();
    // Without locations the tree is refused.
    assert!(matches!(
        build_volume(&desc, ring.clone()),
        Err(BuildError::WriteIntent(_))
    ));
    for (leg, file) in files.iter().take(2).enumerate() {
        wi.set_copy(leg, file.clone(), COPY_AT);
    }
    ring.block_on(wi.format(&wi.copies_on(ring.clone())))
        .unwrap();
    let vol = build_volume(&desc, ring.clone()).unwrap();
    let mut rng = Rng::new(7);
    ring.block_on(vol.write(2 * MIB + 4096, &data(&mut rng, 4096), false))
        .unwrap();
    let on_disk = |i: usize| {
        let c = imgs[i].contents();
        IntentBlock::decode(&c[COPY_AT as usize..][..BLOCK_SIZE]).unwrap()
    };
    assert!(on_disk(0).is_set(2) && on_disk(1).is_set(2));
    assert_eq!(on_disk(0).id, ID);
    // Replace leg 1 by a leg on ALU 2: the daemon fails it, places its copy,
    // publishes the leg, starts the rebuild.
    assert!(h.fail(1, libc::EIO));
    wi.set_copy(1, files[2].clone(), COPY_AT);
    h.slot(1)
        .unwrap()
        .replace(MemberDesc {
            pieces: vec![(files[2].clone(), 2 * MIB, LEG).into()],
        })
        .unwrap();
    assert!(h.start_rebuild(1, 0));
    ring.block_on(vol.write(3 * MIB, &data(&mut rng, 4096), false))
        .unwrap();
    assert!(
        on_disk(2).is_set(3) && on_disk(2).is_set(2),
        "new copy carries every bit"
    );
    assert!(!on_disk(1).is_set(3), "the old copy is left alone");
    // A sweeper thread with its own ring and copies.
    let sweeper = {
        let (wi, h) = (wi.clone(), h.clone());
        std::thread::spawn(move || {
            let ring = LocalRing::new(4).unwrap();
            let copies = wi.copies_on(ring.clone());
            ring.block_on(wi.sweep(&h, &copies)).unwrap()
        })
    };
    let r = sweeper.join().unwrap();
    assert_eq!(r.held, Some(Held::LegsNotHealthy), "leg 1 is rebuilding");
}
