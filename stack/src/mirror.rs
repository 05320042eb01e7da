//! The mirroring object (spec [061], [074]–[076]): 1 to 4 legs of equal size
//! holding the same data (RAID1).
//!
//! A mirror volume has 2 legs or more; a one-leg mirror is a stripe column
//! while another column of the stripe moves (see [`crate::volume::VolumeDesc::moving`]),
//! so that every column has the same type. Its leg is the last healthy leg:
//! an error goes to the host for that request, as on a plain stripe column.
//!
//! * Reads go to one healthy leg, chosen round-robin per request with a
//!   per-instance counter (each ublk queue has its own `Mirror`, so no shared
//!   cache line is touched per I/O), except that a read starting where the
//!   last read sent to a leg ended goes to that leg: a sequential stream stays
//!   on one disk (MD's read_balance), whose readahead then serves it, instead
//!   of every other chunk going to each disk. A leg that fails a read is
//!   marked failed and the read is retried on the next healthy leg; only when
//!   no healthy leg is left does the read fail.
//! * Writes, write-zeroes and discard go to every healthy leg concurrently
//!   (heapless [`join`](crate::join)). A leg that errors is marked failed; the
//!   request succeeds if at least one leg succeeded. FUA is passed to every leg.
//! * Flush goes to every healthy leg; failing legs are marked failed; it fails
//!   only if no leg succeeded.
//! * A *rebuilding* leg (new or replaced, being copied onto by
//!   [`crate::resync::rebuild_leg`]) is never read, but gets every write,
//!   write-zeroes, discard and flush; its errors fail it (stopping the
//!   rebuild). It does not count as healthy: a request succeeds only if a
//!   healthy leg succeeded, and the last healthy leg is never failed.
//! * Writes, write-zeroes and discards respect the resync/scrub job's sync
//!   window (see [`MirrorHealth`]): lock-free and allocation-free, one
//!   atomic increment per touched 1 MiB region and one window check.
//! * With a write-intent bitmap ([`crate::bitmap`], attached to the health
//!   with [`MirrorHealth::with_write_intent`]), a write, write-zeroes or
//!   discard then waits until every touched region's bit is set on disk
//!   before any leg sees it (two atomic loads per region when it already is),
//!   and fails with `EIO` if the bitmap cannot be written on any copy. Reads
//!   of dirty regions go to the first healthy leg while a crash resync is
//!   pending.
//!
//! So a degraded mirror never returns an error to the host while one leg
//! works. A failed leg is never read again: it missed writes, and serving a
//! stale block would be silent corruption (MD's lesson: a failed-device record
//! keeps a stale disk from winning). Bringing a leg back needs a rebuild
//! ([`crate::resync`]), run by the daemon on a job thread.
//!
//! Health is shared by every queue thread of a volume through
//! [`MirrorHealth`] (one `AtomicU32` bitmask of failed legs): a leg failed on
//! one queue is skipped by all. The daemon persists failures through the
//! `on_fail` callback, which runs exactly once per leg transition; until it
//! returns no write of the mirror is acknowledged on any queue (MD holds
//! writes while a superblock change is pending).

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use crate::bitmap::{IntentError, WriteIntent};
use crate::join::join_bounded;
use crate::swap::LegSlot;
use crate::volume::BuildError;
use crate::{check_range, AlignedBuf, BlockDev, IoError, IoResult, Limits, ReadBuf, WriteBuf};

/// Largest number of legs of one mirror.
pub const MAX_LEGS: usize = 4;

/// Callback run when a leg transitions to failed: `(leg, errno)`.
pub type OnFail = Box<dyn Fn(usize, i32) + Send + Sync>;

/// Largest number of sync-window regions; the region size grows past
/// [`REGION_SHIFT_MIN`] for huge mirrors so the counters stay bounded (4 MiB).
const MAX_REGIONS: u64 = 1 << 20;

/// Smallest sync-window region: 1 MiB.
pub const REGION_SHIFT_MIN: u32 = 20;

/// No sync window open.
const NO_WINDOW: u64 = u64::MAX;

/// Health of a mirror, shared (in an `Arc`) by every queue's [`Mirror`] and by
/// the resync job ([`crate::resync`]).
///
/// Besides the failed legs it holds the *rebuilding* legs (a new or replaced
/// leg being copied onto: written by the host at every offset, never read) with
/// their checkpoints (`[0, checkpoint)` of the leg is in sync), and the sync
/// window of the one running resync/scrub job (MD's resync barrier): host
/// writes touching the window's regions (1 MiB granularity) wait until it
/// moves; the job waits, before copying or comparing the window, until no
/// host write is in flight in the window's regions. Both sides are lock-free:
/// per-region in-flight counters and the window position, all SeqCst
/// (Dekker-style, see `JobGuard::open`). See
/// [`MirrorHealth::new_with_rebuild`].
pub struct MirrorHealth {
    legs: usize,
    failed: AtomicU32,
    rebuilding: AtomicU32,
    checkpoint: [AtomicU64; MAX_LEGS],
    /// Leg size covered by the region counters (0: no window support).
    size: u64,
    region_shift: u32,
    /// Host writes/write-zeroes/discards in flight per region.
    inflight: Box<[AtomicU32]>,
    window_start: AtomicU64,
    window_len: AtomicU64,
    /// A resync or scrub job holds the window.
    job: AtomicBool,
    on_fail: OnFail,
    /// Leg failures being recorded (`fail` calls under way, `on_fail`
    /// running): no write that completes meanwhile is acknowledged until
    /// there are none (see [`MirrorHealth::fail`]).
    recording: AtomicU32,
    /// The legs' replaceable descriptions, set by the first tree built over
    /// this health record and shared by every queue's tree after it.
    slots: OnceLock<Vec<Arc<LegSlot>>>,
    /// The mirror's write-intent bitmap, if it has one.
    intent: Option<Arc<WriteIntent>>,
}

impl fmt::Debug for MirrorHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorHealth")
            .field("legs", &self.legs)
            .field("failed", &format_args!("{:#b}", self.failed_mask()))
            .field("rebuilding", &format_args!("{:#b}", self.rebuilding_mask()))
            .finish()
    }
}

/// Overall state of a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorState {
    /// Every leg is healthy.
    Optimal,
    /// Some legs failed or are rebuilding; at least one is healthy.
    Degraded,
    /// No leg works: I/O fails.
    Failed,
}

/// Waits one scheduling round without blocking the thread: pending once
/// (waking itself). Every 64 rounds the thread also yields to the OS, so a
/// waiter spinning against another thread does not burn a full core.
pub(crate) async fn backoff(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if spins.is_multiple_of(64) {
        std::thread::yield_now();
    }
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Held by a host write while it is in flight: its regions' counters are
/// incremented; dropping it decrements them.
pub(crate) struct WriteGuard<'a> {
    health: &'a MirrorHealth,
    regions: std::ops::Range<usize>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        for r in self.regions.clone() {
            self.health.inflight[r].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Exclusive right of one resync/scrub job over the sync window; releases the
/// window and the job slot on drop.
pub(crate) struct JobGuard<'a> {
    health: &'a MirrorHealth,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.health.window_start.store(NO_WINDOW, Ordering::SeqCst);
        self.health.job.store(false, Ordering::SeqCst);
    }
}

impl JobGuard<'_> {
    /// Open the window on `[start, start + len)` and wait until every host
    /// write in flight in its regions has completed. Host writes overlapping
    /// it wait from now on until [`JobGuard::close`].
    ///
    /// Dekker-style with the host side ([`MirrorHealth::enter_write`]), all
    /// SeqCst: the job stores the window then loads the counters, a host
    /// write increments its counters then loads the window, so at least one
    /// of them sees the other.
    pub(crate) async fn open(&self, start: u64, len: u64) {
        let h = self.health;
        h.set_window(start, len);
        let mut spins = 0;
        for r in h.regions(start, len) {
            while h.inflight[r].load(Ordering::SeqCst) != 0 {
                backoff(&mut spins).await;
            }
        }
    }

    /// Release the window (host writes anywhere proceed).
    pub(crate) fn close(&self) {
        self.health.window_start.store(NO_WINDOW, Ordering::SeqCst);
    }
}

/// The sync window held here for a job that runs on another storage
/// processor and copies onto (or repairs) the legs of the same mirror:
/// md-cluster's suspend range. The SP running the job tells every other SP
/// exposing the volume which range it works on; each holds its own host
/// writes there, as for a local job, and answers once none is in flight
/// ([`HeldWindow::drained`]). Dropping it releases the window and the job
/// slot.
pub struct HeldWindow {
    health: Arc<MirrorHealth>,
}

impl fmt::Debug for HeldWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldWindow")
            .field("start", &self.health.window_start.load(Ordering::SeqCst))
            .field("len", &self.health.window_len.load(Ordering::SeqCst))
            .finish()
    }
}

impl HeldWindow {
    /// Move the window to `[start, start + len)`: host writes overlapping it
    /// wait from now on (those waiting on the previous window go on unless
    /// they overlap this one). Returns at once: poll
    /// [`HeldWindow::drained`] for the writes already in flight there.
    pub fn set(&self, start: u64, len: u64) {
        self.health.set_window(start, len);
    }

    /// Whether no host write is in flight in the regions of
    /// `[start, start + len)` (the window set last).
    pub fn drained(&self, start: u64, len: u64) -> bool {
        !self.health.busy(start, len)
    }

    /// The health this window is held on.
    pub fn health(&self) -> &Arc<MirrorHealth> {
        &self.health
    }
}

impl Drop for HeldWindow {
    fn drop(&mut self) {
        self.health.window_start.store(NO_WINDOW, Ordering::SeqCst);
        self.health.job.store(false, Ordering::SeqCst);
    }
}

impl MirrorHealth {
    /// Health of a mirror of `legs` legs (clamped to 1..=[`MAX_LEGS`]) whose
    /// legs in `initially_failed` (bit `i` = leg `i`, as persisted by the
    /// daemon) are already failed. `on_fail` is not called for those.
    ///
    /// No leg rebuilds and there is no sync window: resync and scrub jobs
    /// refuse such a health ([`crate::resync::JobError::NoWindow`]); use
    /// [`MirrorHealth::new_with_rebuild`] for a mirror that may run them.
    pub fn new(legs: usize, initially_failed: u32, on_fail: OnFail) -> Self {
        Self::new_with_rebuild(legs, initially_failed, &[], 0, on_fail)
    }

    /// Health of a mirror of `legs` legs of `size` bytes each, with the legs
    /// of `initially_failed` failed and the legs of `rebuilding` (as
    /// `(leg, checkpoint)`, persisted by the daemon) rebuilding from their
    /// checkpoint. A leg both failed and rebuilding counts as failed.
    ///
    /// The sync-window region counters (one `AtomicU32` per 1 MiB region,
    /// more for mirrors above 1 TiB) are allocated here, once; host I/O never
    /// allocates.
    pub fn new_with_rebuild(
        legs: usize,
        initially_failed: u32,
        rebuilding: &[(usize, u64)],
        size: u64,
        on_fail: OnFail,
    ) -> Self {
        let legs = legs.clamp(1, MAX_LEGS);
        let failed = initially_failed & Self::all(legs);
        let checkpoint = [const { AtomicU64::new(0) }; MAX_LEGS];
        let mut reb = 0u32;
        for &(leg, cp) in rebuilding {
            if leg < legs && failed & (1 << leg) == 0 {
                reb |= 1 << leg;
                checkpoint[leg].store(cp.min(size), Ordering::Relaxed);
            }
        }
        let mut region_shift = REGION_SHIFT_MIN;
        while (size >> region_shift) >= MAX_REGIONS {
            region_shift += 1;
        }
        let regions = if size == 0 {
            0
        } else {
            ((size - 1) >> region_shift) + 1
        };
        MirrorHealth {
            legs,
            failed: AtomicU32::new(failed),
            rebuilding: AtomicU32::new(reb),
            checkpoint,
            size,
            region_shift,
            inflight: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            window_start: AtomicU64::new(NO_WINDOW),
            window_len: AtomicU64::new(0),
            job: AtomicBool::new(false),
            on_fail,
            recording: AtomicU32::new(0),
            slots: OnceLock::new(),
            intent: None,
        }
    }

    /// Attach the mirror's write-intent bitmap (before the health is shared):
    /// every queue's [`Mirror`] then marks regions before writing the legs.
    /// The bitmap must describe the same legs, and the health needs a sync
    /// window of the legs' size (built with [`MirrorHealth::new_with_rebuild`]
    /// and a non-zero size): the bitmap's lazy clear relies on its in-flight
    /// counters.
    pub fn with_write_intent(mut self, intent: Arc<WriteIntent>) -> Result<Self, IntentError> {
        if intent.legs() != self.legs || intent.leg_size() != self.size || self.size == 0 {
            return Err(IntentError::Mismatch {
                health_legs: self.legs,
                health_size: self.size,
                legs: intent.legs(),
                size: intent.leg_size(),
            });
        }
        self.intent = Some(intent);
        Ok(self)
    }

    /// The mirror's write-intent bitmap, if any.
    pub fn write_intent(&self) -> Option<&Arc<WriteIntent>> {
        self.intent.as_ref()
    }

    /// Whether any host write/write-zeroes/discard is in flight in the
    /// sync-window regions overlapping `[off, off + len)` (for a
    /// [`HeldWindow`]: whether the writes that entered before the window was
    /// set are done).
    pub fn busy(&self, off: u64, len: u64) -> bool {
        self.regions(off, len)
            .any(|r| self.inflight[r].load(Ordering::SeqCst) != 0)
    }

    /// The legs' shared slots, made from `make` the first time (by the first
    /// tree built over this mirror).
    pub fn slots_or_init(&self, make: impl FnOnce() -> Vec<Arc<LegSlot>>) -> &[Arc<LegSlot>] {
        self.slots.get_or_init(make)
    }

    /// The slot of `leg`, once a tree has been built: replacing it hands every
    /// queue a new leg (see [`crate::swap`]).
    pub fn slot(&self, leg: usize) -> Option<&Arc<LegSlot>> {
        self.slots.get().and_then(|s| s.get(leg))
    }

    fn all(legs: usize) -> u32 {
        (1u32 << legs) - 1
    }

    /// Number of legs.
    pub fn legs(&self) -> usize {
        self.legs
    }

    /// Leg size covered by the sync window (0 when built with
    /// [`MirrorHealth::new`]).
    pub fn window_size(&self) -> u64 {
        self.size
    }

    /// Bitmask of failed legs (bit `i` = leg `i`).
    pub fn failed_mask(&self) -> u32 {
        self.failed.load(Ordering::Acquire)
    }

    /// Bitmask of rebuilding legs (bit `i` = leg `i`).
    pub fn rebuilding_mask(&self) -> u32 {
        self.rebuilding.load(Ordering::Acquire)
    }

    /// Legs that are neither failed nor rebuilding.
    pub fn healthy_mask(&self) -> u32 {
        Self::all(self.legs) & !self.failed_mask() & !self.rebuilding_mask()
    }

    /// Whether leg `leg` is healthy (neither failed nor rebuilding): the only
    /// legs reads go to.
    pub fn is_healthy(&self, leg: usize) -> bool {
        leg < self.legs && self.healthy_mask() & (1 << leg) != 0
    }

    /// Whether leg `leg` is rebuilding.
    pub fn is_rebuilding(&self, leg: usize) -> bool {
        leg < self.legs && self.rebuilding_mask() & (1 << leg) != 0
    }

    /// Checkpoint of a rebuilding leg (`[0, checkpoint)` is in sync), `None`
    /// if the leg is not rebuilding.
    pub fn rebuild_checkpoint(&self, leg: usize) -> Option<u64> {
        self.is_rebuilding(leg)
            .then(|| self.checkpoint[leg].load(Ordering::SeqCst))
    }

    pub(crate) fn set_checkpoint(&self, leg: usize, pos: u64) {
        self.checkpoint[leg].store(pos, Ordering::SeqCst);
    }

    /// Turn a failed leg (e.g. re-added or replaced by the daemon) into a
    /// rebuilding one starting at `checkpoint`. The leg is never healthy in
    /// between. Returns false if the leg is not failed.
    ///
    /// Writes skip the leg until this call: pass a checkpoint of 0 unless the
    /// daemon knows the leg holds every write below it.
    pub fn start_rebuild(&self, leg: usize, checkpoint: u64) -> bool {
        if leg >= self.legs || self.failed_mask() & (1 << leg) == 0 {
            return false;
        }
        self.checkpoint[leg].store(checkpoint.min(self.size), Ordering::SeqCst);
        self.rebuilding.fetch_or(1 << leg, Ordering::SeqCst);
        self.failed.fetch_and(!(1 << leg), Ordering::SeqCst);
        true
    }

    /// End the rebuild of `leg`: it becomes healthy (read again). Returns
    /// false if it was not rebuilding (or failed meanwhile).
    pub fn finish_rebuild(&self, leg: usize) -> bool {
        if leg >= self.legs || self.failed_mask() & (1 << leg) != 0 {
            return false;
        }
        self.checkpoint[leg].store(self.size, Ordering::SeqCst);
        self.rebuilding.fetch_and(!(1 << leg), Ordering::SeqCst) & (1 << leg) != 0
    }

    /// Number of healthy legs (rebuilding legs do not count).
    pub fn healthy_count(&self) -> usize {
        self.healthy_mask().count_ones() as usize
    }

    /// Overall state.
    pub fn state(&self) -> MirrorState {
        match self.healthy_count() {
            0 => MirrorState::Failed,
            n if n == self.legs => MirrorState::Optimal,
            _ => MirrorState::Degraded,
        }
    }

    /// Mark `leg` failed with `errno`. Returns true, and calls `on_fail`, only
    /// for the call that made the transition (exactly once per leg, whatever
    /// the number of queue threads racing).
    ///
    /// The last healthy leg is never failed (as MD never fails the last
    /// device of an array): its error goes to the host for that one request,
    /// and the mirror keeps serving what it still can. Rebuilding legs do not
    /// count as healthy; failing one stops its rebuild.
    ///
    /// Until `on_fail` has returned (the daemon has persisted the failure),
    /// no write, write-zeroes, discard or flush of this mirror completes on
    /// any queue ([`MirrorHealth::recorded`]), as MD holds every write that
    /// completes while a superblock change is pending: one acknowledged
    /// meanwhile would be on the surviving legs only, and after a crash
    /// before the record the failed leg, not known as failed, could be the
    /// source of the resync and overwrite it. The count is raised before the
    /// transition, so a request that sees the leg failed (and skips it) also
    /// sees the count.
    pub fn fail(&self, leg: usize, errno: i32) -> bool {
        self.recording.fetch_add(1, Ordering::SeqCst);
        let changed = self.transition(leg);
        if changed {
            tracing::error!(
                leg,
                errno,
                remaining = self.healthy_count(),
                "mirror leg failed"
            );
            (self.on_fail)(leg, errno);
        }
        self.recording.fetch_sub(1, Ordering::SeqCst);
        changed
    }

    /// Resolves once no leg failure is being recorded (at once, one atomic
    /// load, in the common case).
    pub async fn recorded(&self) {
        let mut spins = 0;
        while self.recording.load(Ordering::SeqCst) != 0 {
            backoff(&mut spins).await;
        }
    }

    /// Mark `leg` failed without calling `on_fail`: for the daemon, when the
    /// failure is already persisted (an ALU failed by the administrator or
    /// under another volume). Same last-leg rule as [`MirrorHealth::fail`].
    pub fn mark_failed(&self, leg: usize) -> bool {
        self.transition(leg)
    }

    fn transition(&self, leg: usize) -> bool {
        if leg >= self.legs {
            return false;
        }
        let bit = 1u32 << leg;
        let all = Self::all(self.legs);
        let ok = self
            .failed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |prev| {
                let reb = self.rebuilding.load(Ordering::SeqCst);
                let others_healthy = all & !(prev | reb | bit) != 0;
                (prev & bit == 0 && (reb & bit != 0 || others_healthy)).then_some(prev | bit)
            })
            .is_ok();
        if ok {
            // Failed first, then no longer rebuilding: never healthy between.
            self.rebuilding.fetch_and(!bit, Ordering::SeqCst);
        }
        ok
    }

    /// Sync-window regions touched by `[off, off + len)` (clamped to the
    /// covered size).
    fn regions(&self, off: u64, len: u64) -> std::ops::Range<usize> {
        if self.inflight.is_empty() || len == 0 || off >= self.size {
            return 0..0;
        }
        let last = (off.saturating_add(len) - 1).min(self.size - 1);
        (off >> self.region_shift) as usize..(last >> self.region_shift) as usize + 1
    }

    /// Host side of the sync window, for a write/write-zeroes/discard of
    /// `[off, off + len)`: count it in flight in its regions, then wait while
    /// it overlaps the window. No lock, no allocation. The returned guard
    /// keeps it counted until dropped (after the legs completed).
    pub(crate) async fn enter_write(&self, off: u64, len: u64) -> WriteGuard<'_> {
        let regions = self.regions(off, len);
        let mut spins = 0;
        loop {
            for r in regions.clone() {
                self.inflight[r].fetch_add(1, Ordering::SeqCst);
            }
            let guard = WriteGuard {
                health: self,
                regions: regions.clone(),
            };
            let ws = self.window_start.load(Ordering::SeqCst);
            if ws == NO_WINDOW || regions.is_empty() {
                return guard;
            }
            // Compare whole regions, not bytes: a write sharing a region with
            // the window waits too, so the region's counter drains and the
            // job cannot be starved by writes next to its window.
            let window = self.regions(ws, self.window_len.load(Ordering::SeqCst));
            if window.end <= regions.start || regions.end <= window.start {
                return guard;
            }
            // Overlaps the window: back off (the guard decrements) and wait
            // until the window moved.
            drop(guard);
            while self.window_start.load(Ordering::SeqCst) == ws {
                backoff(&mut spins).await;
            }
        }
    }

    /// Store the window: its length first, with no window in between, so a
    /// host write never pairs the new start with the old length.
    fn set_window(&self, start: u64, len: u64) {
        self.window_start.store(NO_WINDOW, Ordering::SeqCst);
        self.window_len.store(len, Ordering::SeqCst);
        self.window_start.store(start, Ordering::SeqCst);
    }

    /// Claim the sync window for a job running on another SP (see
    /// [`HeldWindow`]); `None` if a job holds it here, or if this health has
    /// no sync window (built with [`MirrorHealth::new`]).
    pub fn hold_window(self: &Arc<Self>) -> Option<HeldWindow> {
        if self.inflight.is_empty() {
            return None;
        }
        self.job
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| HeldWindow {
                health: self.clone(),
            })
    }

    /// Claim the sync window for one job; `None` if another job holds it.
    pub(crate) fn claim_job(&self) -> Option<JobGuard<'_>> {
        self.job
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| JobGuard { health: self })
    }
}

/// RAID1 over `legs`, with health shared across queues; `C` is the type of
/// this instance's write-intent copy devices (one per leg, see
/// [`Mirror::with_copies`]; unused without a bitmap).
pub struct Mirror<D: BlockDev, C: BlockDev = D> {
    legs: Vec<D>,
    /// This instance's devices for the legs' bitmap copies (empty without a
    /// write-intent bitmap).
    copies: Vec<C>,
    /// Block buffer for writing the bitmap from this instance (allocated once).
    scratch: Cell<Option<AlignedBuf>>,
    health: Arc<MirrorHealth>,
    /// Round-robin position for reads (per instance, i.e. per queue).
    next_read: Cell<usize>,
    /// Where the last read this instance sent to each leg ended (`u64::MAX`:
    /// none yet): a read that starts there continues a stream on that leg.
    read_end: [Cell<u64>; MAX_LEGS],
    size: u64,
    limits: Limits,
}

impl<D: BlockDev> Mirror<D> {
    /// Mirror over `legs` (1 to [`MAX_LEGS`], all of the same size) with
    /// `health` describing the same number of legs. Refused if the health
    /// carries a write-intent bitmap: use [`Mirror::with_copies`].
    pub fn new(legs: Vec<D>, health: Arc<MirrorHealth>) -> Result<Self, BuildError> {
        Mirror::with_copies(legs, Vec::new(), health)
    }
}

impl<D: BlockDev, C: BlockDev> Mirror<D, C> {
    /// Mirror over `legs` (1 to [`MAX_LEGS`], all of the same size) with
    /// `health` describing the same number of legs and, when the health
    /// carries a write-intent bitmap, `copies`: this instance's devices for
    /// the legs' bitmap copies, one per leg in leg order (copy `i` lives on leg
    /// `i`'s ALU; each queue builds its own on its own ring, e.g.
    /// [`WriteIntent::copies_on`]). Without a bitmap `copies` is ignored.
    pub fn with_copies(
        legs: Vec<D>,
        copies: Vec<C>,
        health: Arc<MirrorHealth>,
    ) -> Result<Self, BuildError> {
        if !(1..=MAX_LEGS).contains(&legs.len()) {
            return Err(BuildError::MemberCount {
                layout: "mirror",
                expected: format!("1 to {MAX_LEGS} legs"),
                got: legs.len(),
            });
        }
        if health.legs() != legs.len() {
            return Err(BuildError::HealthLegs {
                mirror: 0,
                health_legs: health.legs(),
                legs: legs.len(),
            });
        }
        let size = legs[0].size();
        if let Some((i, l)) = legs.iter().enumerate().find(|(_, l)| l.size() != size) {
            return Err(BuildError::UnequalMembers {
                member: i,
                size: l.size(),
                expected: size,
            });
        }
        let limits = legs
            .iter()
            .map(|l| l.limits())
            .reduce(Limits::restrict)
            .expect("at least 1 leg");
        let scratch = match health.write_intent() {
            None => None,
            Some(_) if copies.len() != legs.len() => {
                return Err(BuildError::WriteIntent(format!(
                    "one bitmap copy per leg needed ({} legs), got {}",
                    legs.len(),
                    copies.len()
                )))
            }
            Some(wi) if wi.leg_size() != size => {
                return Err(BuildError::WriteIntent(format!(
                    "bitmap covers legs of {} bytes, the legs have {size}",
                    wi.leg_size()
                )))
            }
            Some(_) => Some(AlignedBuf::new(crate::bitmap::BLOCK_SIZE)),
        };
        Ok(Mirror {
            legs,
            copies,
            scratch: Cell::new(scratch),
            health,
            next_read: Cell::new(0),
            read_end: std::array::from_fn(|_| Cell::new(u64::MAX)),
            size,
            limits,
        })
    }

    /// The legs.
    pub fn legs(&self) -> &[D] {
        &self.legs
    }

    /// This instance's write-intent copy devices (one per leg; empty without a
    /// bitmap).
    pub fn copies(&self) -> &[C] {
        &self.copies
    }

    /// Make `[offset, offset + len)` durable in the write-intent bitmap, if the
    /// mirror has one (after `enter_write`, before any leg I/O).
    async fn mark(&self, offset: u64, len: u64, op: &'static str) -> IoResult<()> {
        match self.health.write_intent() {
            None => Ok(()),
            Some(wi) => wi
                .mark(offset, len, &self.health, &self.copies, &self.scratch)
                .await
                .map_err(|e| IoError::new(e.errno(), op, offset, len)),
        }
    }

    /// The shared health.
    pub fn health(&self) -> &Arc<MirrorHealth> {
        &self.health
    }

    /// Overall state (shared across queues).
    pub fn state(&self) -> MirrorState {
        self.health.state()
    }

    /// Run `op` on every leg not failed (healthy and rebuilding legs)
    /// concurrently; mark legs that fail. Succeeds if at least one leg that
    /// was healthy (not rebuilding) when the request started succeeded.
    async fn all_legs<'a, F, Fut>(
        &'a self,
        op: F,
        name: &'static str,
        offset: u64,
        len: u64,
    ) -> IoResult<()>
    where
        F: Fn(&'a D) -> Fut,
        Fut: std::future::Future<Output = IoResult<()>>,
    {
        let mask = self.health.failed_mask();
        let rebuilding = self.health.rebuilding_mask();
        // The legs tried, in order; `join_bounded` reports each by its
        // position here. (Tagging each leg's future with its leg through an
        // `async` block would hold that future twice in the request's future,
        // captured and awaited: twice the size, times every mirror of a
        // raid10 stripe, times every request in flight.)
        let mut live = [0usize; MAX_LEGS];
        let mut n = 0;
        for i in (0..self.legs.len()).filter(|i| mask & (1 << i) == 0) {
            live[n] = i;
            n += 1;
        }
        let live = &live[..n];
        let mut ok = 0;
        let mut err = None;
        let mut refused = false;
        join_bounded::<MAX_LEGS, _, _, _>(live.iter().map(|&i| op(&self.legs[i])), |k, r| {
            let leg = live[k];
            match r {
                Ok(()) => ok += usize::from(rebuilding & (1 << leg) == 0),
                // A leg that needs the bytes (now remote) did nothing and did
                // not fail: the request is served again from memory, on
                // every leg.
                Err(e) if e.is_needs_bytes() => refused = true,
                Err(e) => {
                    self.health.fail(leg, e.errno());
                    err.get_or_insert(e);
                }
            }
        })
        .await;
        if refused {
            return Err(IoError::needs_bytes(name, offset, len));
        }
        if ok > 0 {
            // Not acknowledged while a leg failure is being recorded.
            self.health.recorded().await;
            return Ok(());
        }
        // Every healthy leg we tried failed, or none was healthy to begin with.
        let errno = err.map_or(libc::EIO, |e| e.errno());
        Err(IoError::new(errno, name, offset, len))
    }
}

impl<D: BlockDev, C: BlockDev> BlockDev for Mirror<D, C> {
    fn size(&self) -> u64 {
        self.size
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    /// Read from one healthy leg, trying the next on failure.
    async fn read_to(&self, offset: u64, mut buf: ReadBuf<'_>) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("read", offset, len, self.size)?;
        let n = self.legs.len();
        // While a crash resync is pending the legs may differ in dirty regions:
        // read those from the first healthy leg (as the resync copies from it),
        // so a block never changes under the host without a write.
        let first = self
            .health
            .write_intent()
            .is_some_and(|wi| wi.unsynced_in(offset, len));
        let stream =
            || (0..n).find(|&l| self.read_end[l].get() == offset && self.health.is_healthy(l));
        let start = if first {
            0
        } else if let Some(leg) = stream() {
            leg
        } else {
            let next = self.next_read.get();
            self.next_read.set(next.wrapping_add(1));
            next
        };
        let mut last_errno = libc::EIO;
        for k in 0..n {
            let leg = (start + k) % n;
            // Re-check every time: this or another queue may have failed the
            // leg meanwhile.
            if !self.health.is_healthy(leg) {
                continue;
            }
            // Set before the read, so that the next read of a stream issued
            // while this one is in flight (readahead, a queue depth above 1)
            // follows it to the same leg.
            self.read_end[leg].set(offset + len);
            match self.legs[leg]
                .read_to(offset, buf.part(0, len as usize))
                .await
            {
                Ok(()) => return Ok(()),
                // The leg needs the bytes (it is remote now): not a failure.
                Err(e) if e.is_needs_bytes() => return Err(e.relabel("read", offset, len)),
                Err(e) => {
                    self.health.fail(leg, e.errno());
                    last_errno = e.errno();
                }
            }
        }
        Err(IoError::new(last_errno, "read", offset, len))
    }

    /// Write to every leg not failed.
    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("write", offset, len, self.size)?;
        let _in_flight = self.health.enter_write(offset, len).await;
        self.mark(offset, len, "write").await?;
        self.all_legs(|l| l.write_from(offset, buf, fua), "write", offset, len)
            .await
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    fn fixed(&self) -> bool {
        self.legs.iter().all(|l| l.fixed())
    }

    async fn flush(&self) -> IoResult<()> {
        self.all_legs(|l| l.flush(), "flush", 0, 0).await
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("discard", offset, len, self.size)?;
        let _in_flight = self.health.enter_write(offset, len).await;
        self.mark(offset, len, "discard").await?;
        self.all_legs(|l| l.discard(offset, len), "discard", offset, len)
            .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("write_zeroes", offset, len, self.size)?;
        let _in_flight = self.health.enter_write(offset, len).await;
        self.mark(offset, len, "write_zeroes").await?;
        self.all_legs(|l| l.write_zeroes(offset, len), "write_zeroes", offset, len)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn health_transitions_call_on_fail_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let h = MirrorHealth::new(
            3,
            0b100,
            Box::new(move |leg, errno| {
                assert_eq!((leg, errno), (1, libc::EIO));
                c.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert_eq!(h.failed_mask(), 0b100);
        assert_eq!(h.healthy_count(), 2);
        assert_eq!(h.state(), MirrorState::Degraded);
        assert!(!h.fail(2, libc::EIO), "already failed at start");
        assert!(h.fail(1, libc::EIO));
        assert!(!h.fail(1, libc::EIO));
        assert!(!h.fail(7, libc::EIO), "out of range leg ignored");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(h.healthy_count(), 1);
        let h = MirrorHealth::new(2, 0, Box::new(|_, _| {}));
        assert_eq!(h.state(), MirrorState::Optimal);
        assert!(h.fail(0, 5));
        assert!(!h.fail(1, 5), "the last healthy leg is never failed");
        assert!(!h.mark_failed(1), "not by the daemon either");
        assert_eq!(h.state(), MirrorState::Degraded);
        assert_eq!(h.failed_mask(), 0b01);
        // Only a mirror that starts with every leg gone is Failed.
        let h = MirrorHealth::new(2, 0b11, Box::new(|_, _| {}));
        assert_eq!(h.state(), MirrorState::Failed);
        let h = MirrorHealth::new(
            3,
            0,
            Box::new(|_, _| panic!("mark_failed must not call on_fail")),
        );
        assert!(h.mark_failed(2));
        assert!(!h.mark_failed(2));
    }

    #[test]
    fn rebuild_state_and_last_healthy_leg_rule() {
        let h = MirrorHealth::new_with_rebuild(
            3,
            0b100,
            &[(1, 1 << 40), (2, 0), (9, 0)],
            1 << 30,
            Box::new(|_, _| {}),
        );
        assert_eq!((h.failed_mask(), h.rebuilding_mask()), (0b100, 0b010));
        assert_eq!(
            h.rebuild_checkpoint(1),
            Some(1 << 30),
            "clamped to the size"
        );
        assert_eq!(h.rebuild_checkpoint(2), None, "failed wins");
        assert_eq!((h.healthy_count(), h.state()), (1, MirrorState::Degraded));
        assert!(!h.fail(0, 5), "leg 0 is the last healthy leg");
        assert!(h.fail(1, 5), "a rebuilding leg always can fail");
        assert_eq!((h.failed_mask(), h.rebuilding_mask()), (0b110, 0));
        assert!(!h.finish_rebuild(1));
        // Counters stay bounded for huge mirrors; none without a size.
        let h = MirrorHealth::new_with_rebuild(2, 0, &[], 1 << 42, Box::new(|_, _| {}));
        assert!(h.inflight.len() as u64 <= MAX_REGIONS);
        assert_eq!(
            h.regions((1 << 42) - 1, 1 << 20),
            h.inflight.len() - 1..h.inflight.len()
        );
        assert_eq!(
            MirrorHealth::new(2, 0, Box::new(|_, _| {})).inflight.len(),
            0
        );
        let h = MirrorHealth::new_with_rebuild(2, 0, &[], 3 << 20, Box::new(|_, _| {}));
        assert_eq!(h.inflight.len(), 3);
        assert_eq!(h.regions((1 << 20) - 1, 2), 0..2);
        assert_eq!(h.regions(0, 0), 0..0);
    }

    #[test]
    fn concurrent_fail_transitions_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let h = Arc::new(MirrorHealth::new(
            2,
            0,
            Box::new(move |_, _| {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        ));
        let wins: usize = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..1000).filter(|_| h.fail(0, 5)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A window held for another SP's job (md-cluster's suspend range) holds
    /// this SP's host writes as a local job's does: exclusive with local
    /// jobs, writes already in flight visible until they complete, new
    /// writes in it waiting until it moves, others never.
    #[test]
    fn a_held_window_holds_host_writes_like_a_local_job() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let cx = &mut Context::from_waker(Waker::noop());
        let without = Arc::new(MirrorHealth::new(2, 0, Box::new(|_, _| {})));
        assert!(without.hold_window().is_none(), "no sync window to hold");
        let h = Arc::new(MirrorHealth::new_with_rebuild(
            2,
            0,
            &[],
            8 << 20,
            Box::new(|_, _| {}),
        ));
        let mut early = std::pin::pin!(h.enter_write(0, 4096));
        let Poll::Ready(in_flight) = early.as_mut().poll(cx) else {
            panic!("no window yet: the write goes");
        };
        let w = h.hold_window().expect("the window is free");
        assert!(h.hold_window().is_none(), "one holder at a time");
        assert!(h.claim_job().is_none(), "a local job waits for the hold");
        w.set(0, 2 << 20);
        assert!(!w.drained(0, 2 << 20), "the early write is still in flight");
        assert!(w.drained(4 << 20, 1 << 20));
        drop(in_flight);
        assert!(w.drained(0, 2 << 20));
        let mut inside = std::pin::pin!(h.enter_write(1 << 20, 4096));
        assert!(
            inside.as_mut().poll(cx).is_pending(),
            "a write in the window waits"
        );
        assert!(inside.as_mut().poll(cx).is_pending());
        let mut outside = std::pin::pin!(h.enter_write(4 << 20, 4096));
        assert!(
            outside.as_mut().poll(cx).is_ready(),
            "a write elsewhere goes"
        );
        w.set(2 << 20, 1 << 20);
        assert!(inside.as_mut().poll(cx).is_ready(), "the window moved on");
        drop(w);
        assert!(h.claim_job().is_some(), "released with the hold");
    }
}
