//! Online mirror rebuild and scrub (stack::resync): rebuild under random host
//! writes on the same ring, resume from a checkpoint, cancellation, scrub and
//! repair with exact mismatch counts, the sync window ordering host writes
//! against the job's copy, reads never served by a rebuilding leg, a failing
//! rebuilding leg, job errors, throttling, and a real two-thread rebuild over
//! image partitions built through build_volume.

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::memdev::{FailMode, MemDev, YieldOnce};
use common::workload::{random_op, random_range, spawn_writer, KIB, MIB};
use common::{Rng, TempImage};
use tierblk_stack::resync::{rebuild_leg, scrub, JobControl, JobError, ScrubReport};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, IoResult, Layout, Limits, MemberDesc, Mirror,
    MirrorHealth, MirrorState, VolumeDesc,
};

type Calls = Arc<Mutex<Vec<(usize, i32)>>>;

fn health(
    legs: usize,
    failed: u32,
    rebuilding: &[(usize, u64)],
    size: u64,
) -> (Arc<MirrorHealth>, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let h = MirrorHealth::new_with_rebuild(
        legs,
        failed,
        rebuilding,
        size,
        Box::new(move |leg, errno| c.lock().unwrap().push((leg, errno))),
    );
    (Arc::new(h), calls)
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    rng.fill(&mut v);
    v
}

/// Legs: leg 0 (and any other healthy leg) holds `model`, rebuilding legs hold
/// garbage (0xee).
fn legs_with(model: &[u8], n: usize, rebuilding: &[usize]) -> Vec<MemDev> {
    (0..n)
        .map(|i| {
            let d = MemDev::new(model.len());
            if rebuilding.contains(&i) {
                d.0.data.borrow_mut().fill(0xee);
            } else {
                d.0.data.borrow_mut().copy_from_slice(model);
            }
            d
        })
        .collect()
}

/// One random host operation (write, discard, write-zeroes or read checked
/// against the model), as a future for a shared ring.
async fn host_op<D: BlockDev>(m: &D, model: &RefCell<Vec<u8>>, rng: &mut Rng) {
    let (off, len) = random_range(rng, m.size(), 64 * KIB, 256 * KIB);
    let r = off as usize..(off + len) as usize;
    match rng.below(10) {
        0..=4 => {
            let mut data = AlignedBuf::new(len as usize);
            rng.fill(&mut data);
            m.write(off, &data, false).await.unwrap();
            model.borrow_mut()[r].copy_from_slice(&data);
        }
        5 => {
            m.discard(off, len).await.unwrap();
            model.borrow_mut()[r].fill(0);
        }
        6 => {
            m.write_zeroes(off, len).await.unwrap();
            model.borrow_mut()[r].fill(0);
        }
        7 => m.flush().await.unwrap(),
        _ => {
            let mut buf = AlignedBuf::new(len as usize);
            m.read(off, &mut buf).await.unwrap();
            assert!(buf[..] == model.borrow()[r], "host read mismatch at {off}");
        }
    }
}

#[test]
fn rebuild_while_random_host_io_runs_converges_to_the_model() {
    const SIZE: u64 = 4 * MIB;
    for (legs, target) in [(2usize, 1usize), (3, 0)] {
        let mut rng = Rng::new(0x5e5c + legs as u64);
        let model = RefCell::new(random_bytes(&mut rng, SIZE as usize));
        let devs = legs_with(&model.borrow(), legs, &[target]);
        let (h, calls) = health(legs, 0, &[(target, 0)], SIZE);
        let host = Mirror::new(devs.clone(), h.clone()).unwrap();
        let job = Mirror::new(devs.clone(), h.clone()).unwrap();
        let ring = LocalRing::new(16).unwrap();
        let ctl = JobControl::new();
        let done = Cell::new(false);
        let ops = Cell::new(0u32);
        let result = RefCell::new(None);
        let host_reads_of_target = Cell::new(u32::MAX);
        ring.run_all(vec![
            Box::pin(async {
                *result.borrow_mut() = Some(rebuild_leg(&job, target, 64 * KIB, &ctl).await);
                // The job read nothing from the target; whatever was read
                // from it came from the host.
                host_reads_of_target.set(devs[target].reads());
                done.set(true);
            }),
            Box::pin(async {
                let mut rng = Rng::new(99 + legs as u64);
                while !done.get() || ops.get() < 100 {
                    host_op(&host, &model, &mut rng).await;
                    ops.set(ops.get() + 1);
                }
            }),
        ]);
        assert_eq!(result.into_inner().unwrap(), Ok(SIZE));
        assert!(ops.get() >= 100);
        assert_eq!(
            host_reads_of_target.get(),
            0,
            "the rebuilding leg was never read while rebuilding"
        );
        let model = model.into_inner();
        for (i, d) in devs.iter().enumerate() {
            assert!(d.contents() == model, "{legs} legs: leg {i} differs");
        }
        assert_eq!(h.state(), MirrorState::Optimal);
        assert_eq!(h.rebuild_checkpoint(target), None);
        assert_eq!(ctl.progress(), SIZE);
        assert!(calls.lock().unwrap().is_empty());
    }
}

#[test]
fn rebuild_resumes_from_its_checkpoint_copying_only_the_tail() {
    const SIZE: u64 = 4 * MIB;
    let mut rng = Rng::new(7);
    let model = random_bytes(&mut rng, SIZE as usize);
    let devs = legs_with(&model, 2, &[1]);
    // The head was copied before a restart.
    devs[1].0.data.borrow_mut()[..3 * MIB as usize].copy_from_slice(&model[..3 * MIB as usize]);
    let (h, _) = health(2, 0, &[(1, 3 * MIB)], SIZE);
    assert_eq!(h.rebuild_checkpoint(1), Some(3 * MIB));
    assert_eq!(h.rebuild_checkpoint(0), None);
    let m = Mirror::new(devs.clone(), h.clone()).unwrap();
    let cps = Arc::new(Mutex::new(Vec::new()));
    let c = cps.clone();
    let ctl = JobControl::new()
        .with_checkpoint(512 * KIB, Box::new(move |pos| c.lock().unwrap().push(pos)));
    let ring = LocalRing::new(8).unwrap();
    assert_eq!(ring.block_on(rebuild_leg(&m, 1, 256 * KIB, &ctl)), Ok(SIZE));
    assert_eq!(devs[1].writes(), 4, "only the 1 MiB tail, in 256 KiB steps");
    assert_eq!(devs[0].reads(), 4);
    assert!(devs[1].contents() == model);
    assert_eq!(*cps.lock().unwrap(), vec![3 * MIB + 512 * KIB, SIZE]);
    assert_eq!(devs[1].flushes(), 2, "flushed before each checkpoint");
    assert!(h.is_healthy(1));
}

#[test]
fn cancel_stops_at_a_step_boundary_and_the_rebuild_resumes() {
    const SIZE: u64 = 4 * MIB;
    const STEP: u64 = 128 * KIB;
    let mut rng = Rng::new(8);
    let model = random_bytes(&mut rng, SIZE as usize);
    let devs = legs_with(&model, 2, &[1]);
    let (h, _) = health(2, 0, &[(1, 0)], SIZE);
    let m = Mirror::new(devs.clone(), h.clone()).unwrap();
    let cps = Arc::new(Mutex::new(Vec::new()));
    let c = cps.clone();
    let ctl = JobControl::new().with_checkpoint(MIB, Box::new(move |p| c.lock().unwrap().push(p)));
    let ring = LocalRing::new(8).unwrap();
    let result = RefCell::new(None);
    ring.run_all(vec![
        Box::pin(async {
            *result.borrow_mut() = Some(rebuild_leg(&m, 1, STEP, &ctl).await);
        }),
        Box::pin(async {
            // The "daemon" cancels once a bit more than 1 MiB is done.
            while ctl.progress() <= MIB {
                YieldOnce(false).await;
            }
            ctl.cancel();
        }),
    ]);
    let Some(Err(JobError::Cancelled { checkpoint })) = result.into_inner() else {
        panic!("expected a cancellation");
    };
    assert!(checkpoint > MIB && checkpoint < SIZE, "{checkpoint}");
    assert_eq!(checkpoint % STEP, 0, "stopped at a step boundary");
    assert_eq!(h.rebuild_checkpoint(1), Some(checkpoint));
    assert_eq!(*cps.lock().unwrap(), vec![MIB, checkpoint]);
    let leg1 = devs[1].contents();
    let c = checkpoint as usize;
    assert!(leg1[..c] == model[..c]);
    assert!(
        leg1[c..].iter().all(|&b| b == 0xee),
        "nothing past the step"
    );
    assert_eq!(devs[1].writes() as u64, checkpoint / STEP);
    // The window is released: a host write anywhere completes at once.
    let data = AlignedBuf::from_slice(&[5; 4096]);
    ring.block_on(m.write(checkpoint, &data, false)).unwrap();
    let mut model = model;
    model[c..c + 4096].fill(5);
    // Resume from the checkpoint with a fresh control.
    let before = devs[1].writes();
    let ctl = JobControl::new();
    assert_eq!(ring.block_on(rebuild_leg(&m, 1, STEP, &ctl)), Ok(SIZE));
    assert_eq!(
        (devs[1].writes() - before) as u64,
        (SIZE - checkpoint) / STEP
    );
    assert!(devs[1].contents() == model);
    assert!(devs[0].contents() == model);
    assert_eq!(h.state(), MirrorState::Optimal);
}

#[test]
fn scrub_counts_mismatches_in_4k_blocks_and_repair_fixes_them() {
    const SIZE: u64 = 2 * MIB;
    const STEP: u64 = 256 * KIB;
    let mut rng = Rng::new(9);
    let model = random_bytes(&mut rng, SIZE as usize);
    let devs = legs_with(&model, 3, &[]);
    let (h, calls) = health(3, 0, &[], SIZE);
    let m = Mirror::new(devs.clone(), h.clone()).unwrap();
    let ring = LocalRing::new(8).unwrap();
    let ctl = JobControl::new();
    let clean = ScrubReport {
        checked: SIZE,
        mismatches: 0,
        repaired: 0,
    };
    assert_eq!(ring.block_on(scrub(&m, 0, STEP, false, &ctl)), Ok(clean));
    let flip = |d: &MemDev, off: u64| d.0.data.borrow_mut()[off as usize] ^= 0x5a;
    flip(&devs[1], 17); // block 0 of leg 1
    flip(&devs[1], 5 * 4096 + 4095); // blocks 5 and 6 of leg 1: 2
    flip(&devs[1], 6 * 4096);
    flip(&devs[1], STEP - 1); // straddling a step boundary: 2
    flip(&devs[1], STEP);
    flip(&devs[2], SIZE - 1); // last block of leg 2
    flip(&devs[1], 40 * 4096 + 9); // the same block on legs 1 and 2: 2
    flip(&devs[2], 40 * 4096 + 100);
    let bad = ScrubReport {
        checked: SIZE,
        mismatches: 8,
        repaired: 0,
    };
    assert_eq!(ring.block_on(scrub(&m, 0, STEP, false, &ctl)), Ok(bad));
    assert_eq!(
        ring.block_on(scrub(&m, 0, STEP, false, &ctl)),
        Ok(bad),
        "check only"
    );
    // From 1 MiB: only the last block of leg 2.
    assert_eq!(
        ring.block_on(scrub(&m, MIB, STEP, false, &ctl)),
        Ok(ScrubReport {
            checked: MIB,
            mismatches: 1,
            repaired: 0
        })
    );
    let writes: Vec<u32> = devs.iter().map(|d| d.writes()).collect();
    assert_eq!(writes, vec![0, 0, 0], "check never writes");
    assert_eq!(
        ring.block_on(scrub(&m, 0, STEP, true, &ctl)),
        Ok(ScrubReport {
            checked: SIZE,
            mismatches: 8,
            repaired: 8
        })
    );
    // Leg 1: runs {0}, {5,6}, {63,64 in two steps}, {40}; leg 2: {40}, {last}.
    assert_eq!((devs[1].writes(), devs[2].writes()), (5, 2));
    assert_eq!(ring.block_on(scrub(&m, 0, STEP, false, &ctl)), Ok(clean));
    for d in &devs {
        assert!(d.contents() == model);
    }
    assert_eq!(ctl.progress(), SIZE);
    assert!(calls.lock().unwrap().is_empty());
}

/// A leg being rebuilt is compared (and repaired) below its checkpoint,
/// where it is in sync and the rebuild will not copy again; never above it.
#[test]
fn scrub_covers_a_rebuilding_leg_below_its_checkpoint() {
    const SIZE: u64 = 2 * MIB;
    const STEP: u64 = 256 * KIB;
    let mut rng = Rng::new(11);
    let model = random_bytes(&mut rng, SIZE as usize);
    // Leg 1 is copied up to 1 MiB; beyond, it holds garbage (0xee).
    let devs = legs_with(&model, 2, &[1]);
    devs[1].0.data.borrow_mut()[..MIB as usize].copy_from_slice(&model[..MIB as usize]);
    let (h, calls) = health(2, 0, &[(1, MIB)], SIZE);
    let m = Mirror::new(devs.clone(), h.clone()).unwrap();
    let ring = LocalRing::new(8).unwrap();
    let ctl = JobControl::new();
    // A write in flight at an unclean stop reached leg 0 only.
    devs[1].0.data.borrow_mut()[3 * 4096] ^= 0x5a;
    let report = ring.block_on(scrub(&m, 0, STEP, true, &ctl)).unwrap();
    assert_eq!((report.mismatches, report.repaired), (1, 1), "{report:?}");
    assert!(devs[1].contents()[..MIB as usize] == model[..MIB as usize]);
    assert!(
        devs[1].contents()[MIB as usize..]
            .iter()
            .all(|&b| b == 0xee),
        "the scrub wrote above the checkpoint"
    );
    assert_eq!(h.rebuild_checkpoint(1), Some(MIB));
    assert!(calls.lock().unwrap().is_empty());
}

/// Log of leg operations: (who, leg, kind, offset, len) where kind is 'q'
/// (host request issued to the mirror), 'R'/'W' (leg read/write-like start)
/// or 'r'/'w' (completion).
type Log = Rc<RefCell<Vec<(&'static str, usize, char, u64, u64)>>>;

/// A leg that logs its operations.
struct Logged {
    dev: MemDev,
    who: &'static str,
    leg: usize,
    log: Log,
}

impl Logged {
    async fn logged<T>(&self, kind: char, off: u64, len: u64, f: impl Future<Output = T>) -> T {
        let up = kind.to_ascii_uppercase();
        self.log
            .borrow_mut()
            .push((self.who, self.leg, up, off, len));
        let r = f.await;
        self.log
            .borrow_mut()
            .push((self.who, self.leg, kind, off, len));
        r
    }
}

impl BlockDev for Logged {
    fn size(&self) -> u64 {
        self.dev.size()
    }
    fn limits(&self) -> Limits {
        self.dev.limits()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        let len = buf.len() as u64;
        self.logged('r', offset, len, self.dev.read(offset, buf))
            .await
    }
    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        let len = buf.len() as u64;
        self.logged('w', offset, len, self.dev.write(offset, buf, fua))
            .await
    }
    async fn flush(&self) -> IoResult<()> {
        self.dev.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.logged('w', offset, len, self.dev.discard(offset, len))
            .await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.logged('w', offset, len, self.dev.write_zeroes(offset, len))
            .await
    }
}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b + blen && b < a + alen
}

#[test]
fn host_writes_overlapping_the_window_wait_for_the_copy() {
    // Steps of one sync-window region (1 MiB): every window opens on a
    // region where host writes are in flight.
    const SIZE: u64 = 8 * MIB;
    const STEP: u64 = MIB;
    let mut rng = Rng::new(10);
    let model = RefCell::new(random_bytes(&mut rng, SIZE as usize));
    let devs = legs_with(&model.borrow(), 2, &[1]);
    let log: Log = Rc::default();
    let wrap = |who| {
        devs.iter()
            .enumerate()
            .map(|(leg, d)| Logged {
                dev: d.clone(),
                who,
                leg,
                log: log.clone(),
            })
            .collect::<Vec<_>>()
    };
    let (h, _) = health(2, 0, &[(1, 0)], SIZE);
    let host = Mirror::new(wrap("host"), h.clone()).unwrap();
    let job = Mirror::new(wrap("job"), h.clone()).unwrap();
    let ring = LocalRing::new(8).unwrap();
    let ctl = JobControl::new();
    let done = Cell::new(false);
    let hammer = |seed: u64| {
        let (host, model, done, ctl, log) = (&host, &model, &done, &ctl, &log);
        async move {
            let mut rng = Rng::new(seed);
            while !done.get() {
                // Aim at the step being copied (the window) or just past it.
                let pos = ctl.progress() + 4096 * rng.below(2 * STEP / 4096);
                let len = 4096 * (1 + rng.below(8));
                if pos + len > SIZE {
                    YieldOnce(false).await;
                    continue;
                }
                let mut data = AlignedBuf::new(len as usize);
                rng.fill(&mut data);
                log.borrow_mut().push(("host", 9, 'q', pos, len));
                host.write(pos, &data, false).await.unwrap();
                model.borrow_mut()[pos as usize..(pos + len) as usize].copy_from_slice(&data);
            }
        }
    };
    ring.run_all(vec![
        Box::pin(async {
            assert_eq!(rebuild_leg(&job, 1, STEP, &ctl).await, Ok(SIZE));
            done.set(true);
        }),
        Box::pin(hammer(1)),
        Box::pin(hammer(2)),
    ]);
    let model = model.into_inner();
    assert!(devs[0].contents() == model && devs[1].contents() == model);
    // For every step: between the job's read start and its write completion,
    // no host write overlapping the step started or landed on any leg; host
    // writes requested meanwhile were held.
    let log = log.borrow();
    let mut held = 0;
    let mut steps = 0;
    for (a, &(who, _, kind, off, len)) in log.iter().enumerate() {
        if (who, kind) != ("job", 'R') {
            continue;
        }
        steps += 1;
        let b = a + log[a..]
            .iter()
            .position(|&e| e == ("job", 1, 'w', off, len))
            .expect("the step was written");
        for &(w, _, k, o, l) in &log[a..b] {
            if w == "host" && overlaps(o, l, off, len) {
                assert!(
                    k == 'q' || k == 'r' || k == 'R',
                    "host write {k} at {o}+{l} landed inside step {off}+{len}"
                );
                held += usize::from(k == 'q');
            }
        }
    }
    assert_eq!(steps as u64, SIZE / STEP);
    assert!(held > 0, "no host write hit the window: test too weak");
}

#[test]
fn reads_never_hit_a_rebuilding_leg_but_everything_else_does() {
    const SIZE: u64 = MIB;
    let model = vec![0u8; SIZE as usize];
    let devs = legs_with(&model, 2, &[]);
    let (h, calls) = health(2, 0, &[(1, 0)], SIZE);
    let m = Mirror::new(devs.clone(), h.clone()).unwrap();
    assert_eq!(m.state(), MirrorState::Degraded);
    assert_eq!((h.healthy_count(), h.rebuilding_mask()), (1, 0b10));
    let ring = LocalRing::new(8).unwrap();
    let data = AlignedBuf::from_slice(&[7; 8192]);
    for i in 0..20 {
        ring.block_on(m.write(i * 8192, &data, false)).unwrap();
        let mut buf = AlignedBuf::new(8192);
        ring.block_on(m.read(i * 8192, &mut buf)).unwrap();
        assert!(buf[..] == data[..]);
    }
    ring.block_on(m.flush()).unwrap();
    ring.block_on(m.discard(0, 4096)).unwrap();
    ring.block_on(m.write_zeroes(SIZE - 8192, 8192)).unwrap();
    assert_eq!(devs[1].reads(), 0);
    assert_eq!((devs[1].writes(), devs[1].flushes()), (20, 1));
    assert!(
        devs[1].contents() == devs[0].contents(),
        "writes hit every offset"
    );
    // The rebuilding leg succeeding does not save a write the healthy leg
    // failed (and the last healthy leg is not failed).
    devs[0].set_fail(FailMode::WritesOnly);
    assert!(ring.block_on(m.write(0, &data, false)).is_err());
    assert!(h.is_healthy(0));
    devs[0].set_fail(FailMode::Never);
    assert!(h.finish_rebuild(1));
    assert!(!h.finish_rebuild(1));
    assert_eq!(m.state(), MirrorState::Optimal);
    for _ in 0..4 {
        let mut buf = AlignedBuf::new(4096);
        ring.block_on(m.read(8192, &mut buf)).unwrap();
    }
    assert!(devs[1].reads() > 0, "a finished leg serves reads again");
    assert!(calls.lock().unwrap().is_empty());
    // A failed leg can be turned into a rebuilding one.
    let (h, _) = health(2, 0b10, &[], SIZE);
    assert!(!h.start_rebuild(0, 0), "not failed");
    assert!(h.start_rebuild(1, 0));
    assert_eq!((h.failed_mask(), h.rebuilding_mask()), (0, 0b10));
    assert_eq!(h.rebuild_checkpoint(1), Some(0));
}

#[test]
fn a_failing_rebuilding_leg_stops_the_rebuild_and_fails() {
    const SIZE: u64 = 2 * MIB;
    let mut rng = Rng::new(11);
    let model = random_bytes(&mut rng, SIZE as usize);
    let devs = legs_with(&model, 2, &[1]);
    let (h, calls) = health(2, 0, &[(1, 0)], SIZE);
    let m = Mirror::new(devs.clone(), h.clone()).unwrap();
    let ring = LocalRing::new(8).unwrap();
    devs[1].set_fail(FailMode::AfterOps(3));
    let r = ring.block_on(rebuild_leg(&m, 1, 128 * KIB, &JobControl::new()));
    assert_eq!(
        r,
        Err(JobError::LegFailed {
            leg: 1,
            errno: libc::EIO,
            checkpoint: 3 * 128 * KIB
        })
    );
    assert_eq!(*calls.lock().unwrap(), vec![(1, libc::EIO)]);
    assert_eq!((h.failed_mask(), h.rebuilding_mask()), (0b10, 0));
    assert_eq!(h.rebuild_checkpoint(1), None);
    assert_eq!(h.state(), MirrorState::Degraded);
    // Host I/O goes on, without the failed leg.
    let w = devs[1].writes();
    let data = AlignedBuf::from_slice(&[1; 4096]);
    ring.block_on(m.write(0, &data, false)).unwrap();
    assert_eq!(devs[1].writes(), w);
    assert_eq!(
        ring.block_on(rebuild_leg(&m, 1, 128 * KIB, &JobControl::new())),
        Err(JobError::NotRebuilding(1))
    );

    // Failed by a host write on a queue while the job runs: the job stops.
    let devs = legs_with(&model, 2, &[1]);
    let (h, calls) = health(2, 0, &[(1, 0)], SIZE);
    let host = Mirror::new(devs.clone(), h.clone()).unwrap();
    let job = Mirror::new(devs.clone(), h.clone()).unwrap();
    let result = RefCell::new(None);
    ring.run_all(vec![
        Box::pin(async {
            *result.borrow_mut() = Some(rebuild_leg(&job, 1, 64 * KIB, &JobControl::new()).await);
        }),
        Box::pin(async {
            while h.rebuild_checkpoint(1).unwrap() < 256 * KIB {
                YieldOnce(false).await;
            }
            devs[1].set_fail(FailMode::Always);
            host.write(SIZE - 4096, &data, false).await.unwrap();
        }),
    ]);
    let Some(Err(JobError::LegFailed { leg: 1, .. })) = result.into_inner() else {
        panic!("expected the rebuild to stop on the failed leg");
    };
    assert_eq!(*calls.lock().unwrap(), vec![(1, libc::EIO)]);
    assert!(!h.is_rebuilding(1) && h.failed_mask() == 0b10);
}

#[test]
fn job_argument_and_exclusion_errors() {
    let devs = legs_with(&[0; MIB as usize], 2, &[]);
    let ring = LocalRing::new(8).unwrap();
    let ctl = JobControl::new();
    let plain = Arc::new(MirrorHealth::new(2, 0, Box::new(|_, _| {})));
    let m = Mirror::new(devs.clone(), plain).unwrap();
    assert_eq!(
        ring.block_on(scrub(&m, 0, 4096, false, &ctl)),
        Err(JobError::NoWindow(MIB))
    );
    let (h, _) = health(2, 0, &[(1, 0)], MIB);
    let m = Mirror::new(devs.clone(), h.clone()).unwrap();
    assert_eq!(
        ring.block_on(rebuild_leg(&m, 0, 4096, &ctl)),
        Err(JobError::NotRebuilding(0))
    );
    assert_eq!(
        ring.block_on(rebuild_leg(&m, 7, 4096, &ctl)),
        Err(JobError::NotRebuilding(7))
    );
    for (from, step) in [(0, 0), (0, 1000), (100, 4096), (2 * MIB, 4096)] {
        assert_eq!(
            ring.block_on(scrub(&m, from, step, false, &ctl)),
            Err(JobError::InvalidRange { step, from })
        );
    }
    // One job per mirror at a time.
    let (a, b) = (RefCell::new(None), RefCell::new(None));
    ring.run_all(vec![
        Box::pin(async { *a.borrow_mut() = Some(rebuild_leg(&m, 1, 64 * KIB, &ctl).await) }),
        Box::pin(async { *b.borrow_mut() = Some(scrub(&m, 0, 64 * KIB, false, &ctl).await) }),
    ]);
    assert_eq!(a.into_inner(), Some(Ok(MIB)));
    assert_eq!(b.into_inner(), Some(Err(JobError::Busy)));
    // Released afterwards.
    assert!(ring.block_on(scrub(&m, 0, 64 * KIB, false, &ctl)).is_ok());
}

#[test]
fn rate_limit_throttles_the_job() {
    let devs = legs_with(&[0; MIB as usize], 2, &[]);
    let (h, _) = health(2, 0, &[], MIB);
    let m = Mirror::new(devs, h).unwrap();
    let ring = LocalRing::new(8).unwrap();
    let ctl = JobControl::new();
    ctl.set_rate_limit(8 * MIB);
    assert_eq!(ctl.rate_limit(), 8 * MIB);
    let t = Instant::now();
    ring.block_on(scrub(&m, 0, 128 * KIB, false, &ctl)).unwrap();
    let ms = t.elapsed().as_millis();
    assert!(ms >= 110, "1 MiB at 8 MiB/s took {ms} ms");
    ctl.set_rate_limit(0);
    let t = Instant::now();
    ring.block_on(scrub(&m, 0, 128 * KIB, false, &ctl)).unwrap();
    assert!(t.elapsed().as_millis() < 100);
}

/// The daemon's arrangement: a queue thread hammering writes through its own
/// volume tree, a job thread rebuilding through its own tree and ring, the
/// mirror health shared; legs are partitions of image files.
#[test]
fn rebuild_on_a_job_thread_while_a_queue_thread_writes() {
    const LEG: u64 = 4 * MIB;
    let mut rng = Rng::new(12);
    let initial = random_bytes(&mut rng, LEG as usize);
    let a = TempImage::new((LEG + MIB) as usize, 0, None);
    let b = TempImage::new((LEG + MIB) as usize, 0xee, None);
    let mut img = a.contents();
    img[MIB as usize..].copy_from_slice(&initial);
    std::fs::write(&a.path, &img).unwrap();
    let (h, calls) = health(2, 0, &[(1, 0)], LEG);
    let desc = VolumeDesc {
        layout: Layout::Mirror,
        copies: 2,
        members: vec![
            MemberDesc {
                pieces: vec![(open_alu(&a.path).unwrap(), MIB, LEG).into()],
            },
            MemberDesc {
                // Leg 1 in two pieces, in the other order on its ALU.
                pieces: {
                    let fb = open_alu(&b.path).unwrap();
                    vec![
                        (fb.clone(), 3 * MIB, 2 * MIB).into(),
                        (fb, 0, 2 * MIB).into(),
                    ]
                },
            },
        ],
        health: vec![h.clone()],
        moving: None,
    };
    let done = Arc::new(AtomicBool::new(false));
    let ctl = Arc::new(JobControl::new());
    ctl.set_rate_limit(32 * MIB);
    let job = {
        let (desc, done, ctl) = (desc.clone(), done.clone(), ctl.clone());
        std::thread::spawn(move || {
            let ring = LocalRing::new(32).unwrap();
            let vol = build_volume(&desc, ring.clone()).unwrap();
            assert_eq!(vol.mirrors().len(), 1);
            let r = ring.block_on(rebuild_leg(&vol.mirrors()[0], 1, 128 * KIB, &ctl));
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let queue = spawn_writer(desc.clone(), done.clone(), initial, 13, 200);
    assert_eq!(job.join().unwrap(), Ok(LEG));
    let (model, ops) = queue.join().unwrap();
    assert!(ops >= 200);
    let (ca, cb) = (a.contents(), b.contents());
    assert!(ca[MIB as usize..] == model[..], "leg 0 differs");
    let leg1: Vec<u8> = [&cb[3 * MIB as usize..], &cb[..2 * MIB as usize]].concat();
    assert!(leg1 == model, "leg 1 differs from the model");
    assert_eq!(h.state(), MirrorState::Optimal);
    assert_eq!(ctl.progress(), LEG);
    assert!(calls.lock().unwrap().is_empty());
}

/// RAID10: the daemon rebuilds per mirror through `Volume::mirrors`.
#[test]
fn raid10_rebuilds_one_mirror_through_volume_mirrors() {
    const LEG: u64 = 2 * MIB;
    let imgs: Vec<TempImage> = (0..4)
        .map(|i| TempImage::new(LEG as usize, if i == 2 { 0xee } else { 0 }, None))
        .collect();
    // Mirror 1's leg 0 (member 2) is new.
    let (h0, _) = health(2, 0, &[], LEG);
    let (h1, calls) = health(2, 0, &[(0, 0)], LEG);
    let desc = VolumeDesc {
        layout: Layout::Raid10 { chunk: 64 * 1024 },
        copies: 2,
        members: imgs
            .iter()
            .map(|t| MemberDesc {
                pieces: vec![(open_alu(&t.path).unwrap(), 0, LEG).into()],
            })
            .collect(),
        health: vec![h0, h1.clone()],
        moving: None,
    };
    let ring = LocalRing::new(32).unwrap();
    let host = build_volume(&desc, ring.clone()).unwrap();
    let job = build_volume(&desc, ring.clone()).unwrap();
    assert_eq!(host.mirrors().len(), 2);
    assert!(host.degraded());
    let mut model = vec![0u8; host.size() as usize];
    let mut rng = Rng::new(14);
    for _ in 0..50 {
        random_op(&host, &ring, &mut model, &mut rng, 64 * KIB).unwrap();
    }
    let ctl = JobControl::new();
    assert_eq!(
        ring.block_on(rebuild_leg(&job.mirrors()[1], 0, 256 * KIB, &ctl)),
        Ok(LEG)
    );
    assert!(!host.degraded());
    assert!(imgs[2].contents() == imgs[3].contents());
    assert!(imgs[0].contents() == imgs[1].contents());
    let report = ring
        .block_on(scrub(&job.mirrors()[0], 0, 256 * KIB, false, &ctl))
        .unwrap();
    assert_eq!((report.checked, report.mismatches), (LEG, 0));
    common::workload::check_all(&host, &ring, &model, &mut rng).unwrap();
    assert!(calls.lock().unwrap().is_empty());
}
