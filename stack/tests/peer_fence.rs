//! A copy onto a mirror's legs while another storage processor writes them
//! (spec [0109]–[0110]: a volume exposed on several SPs; md-cluster's resync
//! ranges): the job holds the other writers off each span it works on
//! through a [`PeerFence`], and the other SP holds its writes with a
//! [`HeldWindow`] on its own mirror health.
//!
//! The two SPs are two trees over the same image files, each with its own
//! `MirrorHealth`, as in two daemons; the fence between them calls the other
//! SP's `HeldWindow` in process where the daemon sends a control request.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::memdev::MemDev;
use common::workload::{spawn_writer, KIB, MIB};
use common::{Rng, TempImage};
use tierblk_stack::leaf::Leaf;
use tierblk_stack::resync::{rebuild_leg, scrub, JobControl, JobError, PeerFence, FENCE_SPAN};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    open_alu, BlockDev, HeldWindow, IoResult, Layout, Limits, MemberDesc, Mirror, MirrorHealth,
    MirrorState, Piece, VolumeDesc,
};

fn health(legs: usize, rebuilding: &[(usize, u64)], size: u64) -> Arc<MirrorHealth> {
    Arc::new(MirrorHealth::new_with_rebuild(
        legs,
        0,
        rebuilding,
        size,
        Box::new(|leg, errno| panic!("leg {leg} failed ({errno})")),
    ))
}

/// The other SP, in process: what the daemon does on a fence request.
struct OtherSp {
    health: Arc<MirrorHealth>,
    held: Mutex<Option<HeldWindow>>,
    holds: AtomicUsize,
    releases: AtomicUsize,
}

impl OtherSp {
    fn new(health: Arc<MirrorHealth>) -> Self {
        OtherSp {
            health,
            held: Mutex::new(None),
            holds: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
        }
    }
}

impl PeerFence for OtherSp {
    fn hold(&self, start: u64, len: u64) -> Result<Instant, String> {
        let asked = Instant::now();
        let mut held = self.held.lock().unwrap();
        if held.is_none() {
            *held = Some(self.health.hold_window().ok_or("a job runs here")?);
        }
        let w = held.as_ref().unwrap();
        w.set(start, len);
        while !w.drained(start, len) {
            std::thread::yield_now();
        }
        self.holds.fetch_add(1, Ordering::SeqCst);
        Ok(asked + Duration::from_secs(3600))
    }

    fn release(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
        *self.held.lock().unwrap() = None;
    }
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    rng.fill(&mut v);
    v
}

/// A mirror of two legs on two image files (leg 0 holding `initial`, leg 1
/// garbage), as one SP's tree over its own health.
fn desc(a: &TempImage, b: &TempImage, leg: u64, h: Arc<MirrorHealth>) -> VolumeDesc {
    VolumeDesc {
        layout: Layout::Mirror,
        copies: 2,
        members: vec![
            MemberDesc {
                pieces: vec![(open_alu(&a.path).unwrap(), 0, leg).into()],
            },
            MemberDesc {
                pieces: vec![(open_alu(&b.path).unwrap(), 0, leg).into()],
            },
        ],
        health: vec![h],
        moving: None,
    }
}

/// A leg of the copying SP whose reads take two milliseconds more: the time
/// between the copy's read of the source and its write of the target, when
/// another SP's write to both would be lost on the target, is wide.
struct SlowReads(Leaf<LocalRing>);

impl BlockDev for SlowReads {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn limits(&self) -> Limits {
        self.0.limits()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        let r = self.0.read(offset, buf).await;
        // The job owns its thread: blocking it is what a slow disk does.
        std::thread::sleep(Duration::from_millis(2));
        r
    }
    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.0.write(offset, buf, fua).await
    }
    async fn flush(&self) -> IoResult<()> {
        self.0.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.0.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.0.write_zeroes(offset, len).await
    }
}

/// SP A rebuilds leg 1 on its job thread while SP B's queue thread writes
/// the volume through its own tree (leg 1 rebuilding there too: written
/// everywhere, never read). With the fence both legs end equal to what B
/// wrote; without it (tried when this test was written: it failed 8 runs of
/// 10), a B write landing between the job's read of leg 0 and its write of
/// leg 1 is overwritten by the older data on leg 1.
#[test]
fn a_copy_on_one_sp_while_another_sp_writes_converges_under_the_fence() {
    const LEG: u64 = 8 * MIB;
    let mut rng = Rng::new(71);
    let initial = random_bytes(&mut rng, LEG as usize);
    let a = TempImage::new(LEG as usize, 0, None);
    std::fs::write(&a.path, &initial).unwrap();
    let b = TempImage::new(LEG as usize, 0xee, None);
    let (ha, hb) = (health(2, &[(1, 0)], LEG), health(2, &[(1, 0)], LEG));
    let db = desc(&a, &b, LEG, hb.clone());
    let pieces = [
        Piece::local(open_alu(&a.path).unwrap(), 0, LEG),
        Piece::local(open_alu(&b.path).unwrap(), 0, LEG),
    ];
    let other = Arc::new(OtherSp::new(hb.clone()));
    let ctl = Arc::new(JobControl::new().with_fence(other.clone()));
    let done = Arc::new(AtomicBool::new(false));
    let job = {
        let (done, ctl, ha) = (done.clone(), ctl.clone(), ha.clone());
        std::thread::spawn(move || {
            let ring = LocalRing::new(32).unwrap();
            let legs = pieces
                .iter()
                .map(|p| SlowReads(p.build(ring.clone())))
                .collect();
            let m = Mirror::new(legs, ha).unwrap();
            let r = ring.block_on(rebuild_leg(&m, 1, 64 * KIB, &ctl));
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let writer = spawn_writer(db, done.clone(), initial, 72, 200);
    assert_eq!(job.join().unwrap(), Ok(LEG));
    let (model, ops) = writer.join().unwrap();
    assert!(ops >= 200);
    assert!(a.contents() == model, "leg 0 differs from what B wrote");
    assert!(
        b.contents() == model,
        "leg 1 differs: a write of B lost to the copy"
    );
    assert_eq!(ha.state(), MirrorState::Optimal);
    // One hold per span, released at the end: B writes freely again.
    assert!(other.holds.load(Ordering::SeqCst) >= (LEG / FENCE_SPAN) as usize);
    assert_eq!(other.releases.load(Ordering::SeqCst), 1);
    assert!(other.held.lock().unwrap().is_none());
    assert!(hb.hold_window().is_some(), "B's window was not released");
}

/// A fence driven by the test: the holds it was asked for, a lease per call
/// (`None`: refuse), in order; the last one repeats.
struct Scripted {
    leases: Mutex<Vec<Option<Duration>>>,
    asked: Mutex<Vec<(u64, u64)>>,
    releases: AtomicUsize,
}

impl Scripted {
    fn new(leases: Vec<Option<Duration>>) -> Self {
        Scripted {
            leases: Mutex::new(leases),
            asked: Mutex::default(),
            releases: AtomicUsize::new(0),
        }
    }
}

impl PeerFence for Scripted {
    fn hold(&self, start: u64, len: u64) -> Result<Instant, String> {
        self.asked.lock().unwrap().push((start, len));
        let mut l = self.leases.lock().unwrap();
        let lease = if l.len() > 1 { l.remove(0) } else { l[0] };
        lease
            .map(|d| Instant::now() + d)
            .ok_or_else(|| "sp2: unreachable".to_string())
    }

    fn release(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
}

fn mem_mirror(size: usize, h: Arc<MirrorHealth>) -> Mirror<MemDev> {
    let legs = vec![MemDev::new(size), MemDev::new(size)];
    legs[0].0.data.borrow_mut().fill(0x5a);
    legs[1].0.data.borrow_mut().fill(0xee);
    Mirror::new(legs, h).unwrap()
}

/// A hold whose lease may have run out before the step's write completed
/// gets the step done again under a new hold: the other SP may have written
/// there meanwhile.
#[test]
fn a_step_written_after_the_lease_may_have_run_out_is_done_again() {
    const SIZE: u64 = MIB;
    let h = health(2, &[(1, 0)], SIZE);
    let m = mem_mirror(SIZE as usize, h.clone());
    // Two leases already over, then a long one.
    let fence = Arc::new(Scripted::new(vec![
        Some(Duration::ZERO),
        Some(Duration::ZERO),
        Some(Duration::from_secs(3600)),
    ]));
    let ctl = JobControl::new().with_fence(fence.clone());
    let ring = LocalRing::new(8).unwrap();
    assert_eq!(ring.block_on(rebuild_leg(&m, 1, 256 * KIB, &ctl)), Ok(SIZE));
    // The first step was written twice more, each time under a new hold of
    // the whole mirror (smaller than a span); then one hold covered the rest.
    assert_eq!(*fence.asked.lock().unwrap(), vec![(0, SIZE); 3]);
    assert_eq!(m.legs()[1].writes(), 4 + 2);
    assert!(m.legs()[1].contents().iter().all(|&b| b == 0x5a));
    assert_eq!(fence.releases.load(Ordering::SeqCst), 1);
    assert_eq!(h.state(), MirrorState::Optimal);
}

/// When the other SPs cannot be held the job stops at the span it reached,
/// with the copy so far flushed (a checkpoint the daemon may persist), and a
/// later run goes on from there.
#[test]
fn a_fence_that_fails_stops_the_rebuild_at_a_durable_checkpoint() {
    const SIZE: u64 = 2 * FENCE_SPAN;
    let h = health(2, &[(1, 0)], SIZE);
    let m = mem_mirror(SIZE as usize, h.clone());
    let ring = LocalRing::new(8).unwrap();
    let fence = Arc::new(Scripted::new(vec![Some(Duration::from_secs(3600)), None]));
    let ctl = JobControl::new().with_fence(fence.clone());
    let r = ring.block_on(rebuild_leg(&m, 1, MIB, &ctl));
    assert_eq!(
        r,
        Err(JobError::Fence("sp2: unreachable".into())),
        "the second span could not be held"
    );
    assert_eq!(ctl.progress(), FENCE_SPAN);
    assert_eq!(h.rebuild_checkpoint(1), Some(FENCE_SPAN));
    assert!(
        m.legs()[1].flushes() >= 1,
        "the copy so far was not flushed"
    );
    assert_eq!(
        *fence.asked.lock().unwrap(),
        vec![(0, FENCE_SPAN), (FENCE_SPAN, FENCE_SPAN)]
    );
    assert_eq!(fence.releases.load(Ordering::SeqCst), 1);
    assert!(h.is_rebuilding(1), "the leg stays rebuilding");
    // Run again, the other SP reachable: from the checkpoint to the end.
    let fence = Arc::new(Scripted::new(vec![Some(Duration::from_secs(3600))]));
    let ctl = JobControl::new().with_fence(fence.clone());
    assert_eq!(ring.block_on(rebuild_leg(&m, 1, MIB, &ctl)), Ok(SIZE));
    assert_eq!(*fence.asked.lock().unwrap(), vec![(FENCE_SPAN, FENCE_SPAN)]);
    assert!(m.legs()[1].contents().iter().all(|&b| b == 0x5a));
}

/// A repairing scrub holds the other writers as a copy does; a step done
/// again keeps what the first pass found and repaired.
#[test]
fn a_repairing_scrub_holds_the_other_writers_and_redoes_a_step_past_its_lease() {
    const SIZE: u64 = MIB;
    let h = health(2, &[], SIZE);
    let m = mem_mirror(SIZE as usize, h.clone());
    let fence = Arc::new(Scripted::new(vec![
        Some(Duration::ZERO),
        Some(Duration::from_secs(3600)),
    ]));
    let ctl = JobControl::new().with_fence(fence.clone());
    let ring = LocalRing::new(8).unwrap();
    let report = ring.block_on(scrub(&m, 0, SIZE, true, &ctl)).unwrap();
    // Every 4 KiB block of leg 1 differed and was repaired in the first
    // pass; the pass done again found them equal.
    let blocks = SIZE / 4096;
    assert_eq!(
        (report.mismatches, report.repaired),
        (blocks, blocks),
        "{report:?}"
    );
    assert_eq!(report.checked, SIZE);
    assert_eq!(fence.asked.lock().unwrap().len(), 2);
    assert!(m.legs()[1].contents().iter().all(|&b| b == 0x5a));
    assert_eq!(fence.releases.load(Ordering::SeqCst), 1);
}
