//! Online mirror rebuild and scrub (MD's resync and `check`/`repair`).
//!
//! Both jobs run on their own thread with their own ring and their own
//! [`Mirror`] instance (built from the same [`crate::VolumeDesc`], so over the
//! same ALUs), sharing the mirror's [`MirrorHealth`] with the ublk queue
//! threads. They walk the mirror one `step` at a time under the health's *sync
//! window* (MD's resync barrier): the job opens the window over the step, waits
//! until no host write is in flight in it, copies or compares, advances the
//! checkpoint and closes the window. Host writes overlapping the window wait
//! (see [`MirrorHealth`]); everything else proceeds. One job per mirror at a
//! time ([`JobError::Busy`] otherwise).
//!
//! * [`rebuild_leg`] copies a *rebuilding* leg's `[checkpoint, size)` from the
//!   healthy legs. Host writes go to the rebuilding leg at every offset
//!   meanwhile (so the part already copied stays in sync) and reads never go
//!   to it. When the copy completes the leg becomes healthy.
//! * [`scrub`] compares every healthy leg against the first healthy one and
//!   counts mismatches in 4 KiB blocks ([`MISMATCH_BLOCK`]); with `repair`
//!   the first healthy leg's data is written over the mismatching blocks.
//! * [`resync_dirty`] copies only the regions set in the mirror's write-intent
//!   bitmap ([`crate::bitmap`], MD's bitmap-based resync): after a crash from
//!   the first healthy leg to the others, after a failed leg's return onto
//!   that leg; then clears them.
//!
//! [`JobControl`] is shared with the daemon: cancellation (honoured at the
//! next step boundary), progress, a rate limit and a checkpoint callback so
//! the daemon persists progress (a rebuild resumes from its checkpoint after
//! a restart, as pvmove and MD's `recovery_offset` do).
//!
//! When other storage processors expose the same volume (spec [0109]–[0110])
//! their host writes reach the legs too, past this health's window. The
//! control then carries a [`PeerFence`] (md-cluster's resync messages): before
//! a step the job has every other writer hold its writes off a span of the
//! legs around it, for a lease; a step whose write ended after the lease
//! could have run out is done again under a new hold.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bitmap::{IntentError, WriteIntent};
use crate::mirror::{Mirror, MirrorHealth};
use crate::{AlignedBuf, BlockDev, IoError};

/// Unit of [`ScrubReport::mismatches`] and [`ScrubReport::repaired`]: one
/// 4 KiB block of one leg (MD's `mismatch_cnt` counts 512-byte sectors; ours
/// counts 4 KiB blocks, a partial block at the end of the mirror counting as
/// one).
pub const MISMATCH_BLOCK: u64 = 4096;

/// Default interval between checkpoint callbacks: 64 MiB.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 64 << 20;

/// Callback receiving a checkpoint position (bytes of the leg/mirror done).
pub type OnCheckpoint = Box<dyn Fn(u64) + Send + Sync>;

/// Span of the legs a job asks other writers to hold at a time (a few steps:
/// one round trip per span, and their writes elsewhere never wait).
pub const FENCE_SPAN: u64 = 4 << 20;

/// A hold is renewed when less than this is left of its lease before a step.
const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// The other writers of a mirror, on other storage processors, that a job
/// copying onto or repairing its legs must hold off the range it works on
/// (md-cluster's `RESYNCING` message: each node suspends its writes in the
/// range until the next message).
pub trait PeerFence: Send + Sync {
    /// Have every other writer hold its writes to `[start, start + len)` of
    /// the legs, and return once none of theirs is in flight there.
    /// `Ok(until)`: the hold lasts at least until `until` (a lease: past it a
    /// writer may write there again). Blocks the job's thread, between steps.
    fn hold(&self, start: u64, len: u64) -> Result<Instant, String>;

    /// The job no longer works on the legs: every writer may write anywhere.
    fn release(&self);
}

/// A job's hold on the other writers of its mirror, through the control's
/// [`PeerFence`] (nothing to do without one); released on drop.
struct Fencing<'a> {
    ctl: &'a JobControl,
    fence: Option<&'a dyn PeerFence>,
    held: std::ops::Range<u64>,
    until: Option<Instant>,
}

impl<'a> Fencing<'a> {
    fn new(ctl: &'a JobControl) -> Self {
        Fencing {
            ctl,
            fence: ctl.fence.as_deref(),
            held: 0..0,
            until: None,
        }
    }

    /// Make sure `[pos, pos + n)` is held for at least [`FENCE_MARGIN`]
    /// more, asking for up to [`FENCE_SPAN`] (within `size`) when it is not.
    fn cover(&mut self, pos: u64, n: u64, size: u64) -> Result<(), JobError> {
        let Some(f) = self.fence else { return Ok(()) };
        let fresh = self
            .until
            .is_some_and(|t| Instant::now() + FENCE_MARGIN < t);
        if fresh && self.held.start <= pos && pos + n <= self.held.end {
            return Ok(());
        }
        let end = pos.saturating_add(FENCE_SPAN.max(n)).min(size).max(pos + n);
        self.until = None;
        let until = f.hold(pos, end - pos).map_err(JobError::Fence)?;
        self.held = pos..end;
        self.until = Some(until);
        Ok(())
    }

    /// Why the job stops before the step `[pos, pos + n)`: cancelled, or the
    /// other writers cannot be held off it.
    fn stop_before(&mut self, pos: u64, n: u64, size: u64) -> Option<JobError> {
        if self.ctl.is_cancelled() {
            return Some(JobError::Cancelled { checkpoint: pos });
        }
        self.cover(pos, n, size).err()
    }

    /// Whether the hold lasted until now (the step just written needs no
    /// redo). If not, the next [`Fencing::cover`] asks again.
    fn lasted(&mut self) -> bool {
        if self.fence.is_none() || self.until.is_some_and(|t| Instant::now() < t) {
            return true;
        }
        tracing::warn!(
            start = self.held.start,
            "the other writers' hold may have run out during the step: doing it again"
        );
        self.until = None;
        false
    }
}

impl Drop for Fencing<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.fence {
            if self.held.end > self.held.start {
                f.release();
            }
        }
    }
}

/// Control of a running job, shared (e.g. in an `Arc`) between the job thread
/// and the daemon.
pub struct JobControl {
    cancelled: AtomicBool,
    progress: AtomicU64,
    rate: AtomicU64,
    checkpoint_every: u64,
    on_checkpoint: Option<OnCheckpoint>,
    fence: Option<std::sync::Arc<dyn PeerFence>>,
}

impl Default for JobControl {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for JobControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobControl")
            .field("cancelled", &self.is_cancelled())
            .field("progress", &self.progress())
            .field("rate", &self.rate_limit())
            .finish()
    }
}

impl JobControl {
    /// No rate limit, no checkpoint callback.
    pub fn new() -> Self {
        JobControl {
            cancelled: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            on_checkpoint: None,
            fence: None,
        }
    }

    /// Hold the mirror's other writers (other SPs exposing the volume) off
    /// each span the job works on: see [`PeerFence`].
    pub fn with_fence(mut self, fence: std::sync::Arc<dyn PeerFence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Call `on_checkpoint(position)` each time the job advanced by at least
    /// `every` bytes since the last call (0 = after every step), when it is
    /// cancelled, and at the end.
    pub fn with_checkpoint(mut self, every: u64, on_checkpoint: OnCheckpoint) -> Self {
        self.checkpoint_every = every;
        self.on_checkpoint = Some(on_checkpoint);
        self
    }

    /// Ask the job to stop at its next step boundary.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether [`JobControl::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Position reached: the byte offset (in the leg) below which the job is
    /// done (for a rebuild, its checkpoint; for a scrub, `from` + checked).
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Limit the job to `bytes_per_sec` (0 = unlimited); may be changed while
    /// it runs. The job sleeps between steps (on its own thread).
    pub fn set_rate_limit(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Current rate limit in bytes per second (0 = unlimited).
    pub fn rate_limit(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    fn checkpoint(&self, pos: u64) {
        if let Some(cb) = &self.on_checkpoint {
            cb(pos);
        }
    }
}

/// Why a job stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Cancelled through [`JobControl::cancel`], at a step boundary.
    #[error("cancelled at checkpoint {checkpoint}")]
    Cancelled {
        /// Position reached: `[start, checkpoint)` is done (for a rebuild,
        /// the leg's checkpoint, kept in the health).
        checkpoint: u64,
    },
    /// The leg being rebuilt failed (an I/O error here or on a queue); the
    /// rebuild stopped and the leg is failed.
    #[error("rebuilding leg {leg} failed (errno {errno}) at {checkpoint}")]
    LegFailed {
        /// The leg.
        leg: usize,
        /// The errno (`EIO` when failed elsewhere).
        errno: i32,
        /// Its checkpoint when it failed.
        checkpoint: u64,
    },
    /// No healthy leg could be read.
    #[error("no healthy leg readable: {0}")]
    Io(IoError),
    /// The leg is not rebuilding (or does not exist).
    #[error("leg {0} is not rebuilding")]
    NotRebuilding(usize),
    /// Another job holds this mirror's sync window.
    #[error("another resync or scrub job is running on this mirror")]
    Busy,
    /// The health has no sync window covering the mirror (built with
    /// [`MirrorHealth::new`], or for another size).
    #[error("mirror health has no sync window of {0} bytes")]
    NoWindow(u64),
    /// The other writers of the mirror could not be held off the span the
    /// job works on (another SP did not answer): the job stops where it is.
    #[error("cannot hold the other writers of the mirror: {0}")]
    Fence(String),
    /// [`resync_dirty`] on a mirror without a write-intent bitmap.
    #[error("the mirror has no write-intent bitmap")]
    NoBitmap,
    /// Writing the write-intent bitmap failed on every copy (the regions
    /// copied stay marked dirty: they are copied again by the next run).
    #[error("writing the write-intent bitmap failed: {0}")]
    Bitmap(IoError),
    /// `step` is zero or not a multiple of the logical block size, or `from`
    /// is not block aligned / beyond the mirror.
    #[error("invalid step {step} or start {from}")]
    InvalidRange {
        /// Step requested.
        step: u64,
        /// Start requested.
        from: u64,
    },
}

/// Result of a completed scrub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Bytes of the mirror compared (from `from` to the end).
    pub checked: u64,
    /// Mismatching [`MISMATCH_BLOCK`]s, summed over the compared legs.
    pub mismatches: u64,
    /// Mismatching blocks rewritten from the first healthy leg (repair).
    pub repaired: u64,
}

fn check_job<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    from: u64,
    step: u64,
) -> Result<(), JobError> {
    let h = mirror.health();
    if h.window_size() < mirror.size() {
        return Err(JobError::NoWindow(mirror.size()));
    }
    let block = u64::from(mirror.limits().logical_block.max(1));
    if step == 0
        || !step.is_multiple_of(block)
        || step > usize::MAX as u64
        || !from.is_multiple_of(block)
    {
        return Err(JobError::InvalidRange { step, from });
    }
    if from > mirror.size() {
        return Err(JobError::InvalidRange { step, from });
    }
    Ok(())
}

/// Paces a job to the control's rate limit and calls the checkpoint callback.
pub(crate) struct Pacer<'a> {
    ctl: &'a JobControl,
    started: Instant,
    start: u64,
    last_checkpoint: u64,
    /// Bytes passed over without I/O (clean regions): not rate limited.
    skipped: u64,
}

impl<'a> Pacer<'a> {
    pub(crate) fn new(ctl: &'a JobControl, start: u64) -> Self {
        ctl.progress.store(start, Ordering::Relaxed);
        Pacer {
            ctl,
            started: Instant::now(),
            start,
            last_checkpoint: start,
            skipped: 0,
        }
    }

    /// Pass over `[from, to)` without I/O: progress moves, the rate limit
    /// ignores it.
    pub(crate) fn skip(&mut self, from: u64, to: u64) {
        self.skipped += to - from;
        self.advance(to);
    }

    /// `pos` reached: publish progress, checkpoint if due, then throttle.
    /// Whether reaching `pos` calls the checkpoint callback.
    pub(crate) fn due(&self, pos: u64) -> bool {
        pos - self.last_checkpoint >= self.ctl.checkpoint_every
    }

    pub(crate) fn advance(&mut self, pos: u64) {
        self.ctl.progress.store(pos, Ordering::Relaxed);
        if self.due(pos) {
            self.ctl.checkpoint(pos);
            self.last_checkpoint = pos;
        }
        let rate = self.ctl.rate_limit();
        if rate > 0 {
            let work = pos - self.start - self.skipped;
            let due = Duration::from_secs_f64(work as f64 / rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                // The job owns its thread and ring: blocking is fine.
                std::thread::sleep(due - elapsed);
            }
        }
    }

    /// Final (or cancelled) position: publish it and checkpoint unless just
    /// done for it.
    pub(crate) fn finish(&mut self, pos: u64) {
        self.ctl.progress.store(pos, Ordering::Relaxed);
        if pos != self.last_checkpoint || pos == self.start {
            self.ctl.checkpoint(pos);
            self.last_checkpoint = pos;
        }
    }
}

/// Read `buf` at `pos` from a healthy leg other than `skip` (in leg order);
/// a leg failing the read is failed (last-leg rule applies) and the next one
/// tried. Returns the leg read.
async fn read_healthy<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    pos: u64,
    buf: &mut [u8],
) -> Result<usize, JobError> {
    let h = mirror.health();
    let mut last = IoError::new(libc::EIO, "read", pos, buf.len() as u64);
    for leg in 0..h.legs() {
        if !h.is_healthy(leg) {
            continue;
        }
        match mirror.legs()[leg].read(pos, buf).await {
            Ok(()) => return Ok(leg),
            Err(e) => {
                h.fail(leg, e.errno());
                last = e;
            }
        }
    }
    Err(JobError::Io(last))
}

fn leg_failed(h: &MirrorHealth, leg: usize, errno: i32, checkpoint: u64) -> JobError {
    JobError::LegFailed {
        leg,
        errno,
        checkpoint: h.rebuild_checkpoint(leg).unwrap_or(checkpoint),
    }
}

/// Flush the leg being rebuilt; an error fails it.
async fn flush_leg<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    leg: usize,
    pos: u64,
) -> Result<(), JobError> {
    let h = mirror.health();
    mirror.legs()[leg].flush().await.map_err(|e| {
        h.fail(leg, e.errno());
        leg_failed(h, leg, e.errno(), pos)
    })
}

/// Rebuild `leg` of `mirror`: copy `[checkpoint, size)` from the healthy legs
/// `step` bytes at a time under the sync window, advancing the shared
/// checkpoint after each step; then the leg becomes healthy
/// ([`MirrorHealth::finish_rebuild`]). Returns the size copied up to (the
/// mirror size).
///
/// `mirror` is the job's own instance (own ring); its health is the one the
/// queues share. A write error on `leg` fails it (`on_fail`) and stops with
/// [`JobError::LegFailed`]; a read error fails the source leg and the next
/// healthy leg is used. Cancellation stops at a step boundary with the window
/// released and [`JobError::Cancelled`] carrying the checkpoint.
pub async fn rebuild_leg<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    leg: usize,
    step: u64,
    ctl: &JobControl,
) -> Result<u64, JobError> {
    let h = mirror.health();
    let mut pos = h
        .rebuild_checkpoint(leg)
        .ok_or(JobError::NotRebuilding(leg))?;
    check_job(mirror, 0, step)?;
    let job = h.claim_job().ok_or(JobError::Busy)?;
    let size = mirror.size();
    let mut buf = AlignedBuf::new(step.min(size.max(1)) as usize);
    let mut pacer = Pacer::new(ctl, pos);
    let mut fencing = Fencing::new(ctl);
    let start = pos;
    tracing::info!(leg, from = pos, size, step, "mirror rebuild started");
    while pos < size {
        let n = step.min(size - pos);
        // Stopped here with the copy so far durable.
        if let Some(why) = fencing.stop_before(pos, n, size) {
            flush_leg(mirror, leg, pos).await?;
            pacer.finish(pos);
            tracing::info!(leg, checkpoint = pos, %why, "mirror rebuild stopped");
            return Err(why);
        }
        if !h.is_rebuilding(leg) {
            return Err(leg_failed(h, leg, libc::EIO, pos));
        }
        let chunk = &mut buf[..n as usize];
        job.open(pos, n).await;
        let copied = match read_healthy(mirror, pos, chunk).await {
            Ok(_) => mirror.legs()[leg]
                .write(pos, chunk, false)
                .await
                .map_err(|e| {
                    h.fail(leg, e.errno());
                    leg_failed(h, leg, e.errno(), pos)
                }),
            Err(e) => Err(e),
        };
        if copied.is_ok() && !fencing.lasted() {
            job.close();
            continue;
        }
        if copied.is_ok() {
            h.set_checkpoint(leg, pos + n);
        }
        job.close();
        copied?;
        pos += n;
        // The copy is durable before a checkpoint is reported (the daemon
        // persists it) and before the leg counts as in sync.
        if pacer.due(pos) || pos == size {
            flush_leg(mirror, leg, pos).await?;
        }
        pacer.advance(pos);
    }
    if start == size {
        // Nothing left to copy (the loop flushed otherwise).
        flush_leg(mirror, leg, size).await?;
    }
    if !h.finish_rebuild(leg) {
        return Err(leg_failed(h, leg, libc::EIO, pos));
    }
    pacer.finish(size);
    tracing::info!(leg, size, "mirror rebuild complete");
    Ok(size)
}

/// Scrub `mirror` from `from` to its end, `step` bytes at a time under the
/// sync window: every healthy leg is compared with the first healthy one, and
/// mismatching [`MISMATCH_BLOCK`]s are counted (per leg); with `repair` they
/// are rewritten from the first healthy leg (MD's `repair`, which likewise
/// trusts the first readable copy). Failed legs are skipped, and a rebuilding
/// leg above its checkpoint (below it, it is in sync and compared).
///
/// A leg failing a read or a repair write is failed (last-leg rule applies);
/// the scrub goes on with the others. [`JobError::Io`] when no healthy leg
/// can be read.
pub async fn scrub<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    from: u64,
    step: u64,
    repair: bool,
    ctl: &JobControl,
) -> Result<ScrubReport, JobError> {
    check_job(mirror, from, step)?;
    let h = mirror.health();
    let job = h.claim_job().ok_or(JobError::Busy)?;
    let size = mirror.size();
    let cap = step.min(size.max(1)) as usize;
    let (mut reference, mut other) = (AlignedBuf::new(cap), AlignedBuf::new(cap));
    let mut report = ScrubReport::default();
    let mut pacer = Pacer::new(ctl, from);
    let mut fencing = Fencing::new(ctl);
    let mut pos = from;
    while pos < size {
        let n = step.min(size - pos);
        if let Some(why) = fencing.stop_before(pos, n, size) {
            pacer.finish(pos);
            return Err(why);
        }
        let want = &mut reference[..n as usize];
        let cmp = &mut other[..n as usize];
        job.open(pos, n).await;
        let first = match read_healthy(mirror, pos, want).await {
            Ok(leg) => leg,
            Err(e) => {
                job.close();
                return Err(e);
            }
        };
        for leg in first + 1..h.legs() {
            // A leg being rebuilt is in sync below its checkpoint: compared
            // there too, so that a repair after an unclean stop also reaches
            // the part of it that the copy will not go over again.
            let copied = h.rebuild_checkpoint(leg).is_some_and(|c| c >= pos + n);
            if !h.is_healthy(leg) && !copied {
                continue;
            }
            let dev = &mirror.legs()[leg];
            if let Err(e) = dev.read(pos, cmp).await {
                h.fail(leg, e.errno());
                continue;
            }
            let bad = want
                .chunks(MISMATCH_BLOCK as usize)
                .zip(cmp.chunks(MISMATCH_BLOCK as usize))
                .filter(|(a, b)| a != b)
                .count() as u64;
            report.mismatches += bad;
            if bad == 0 || !repair {
                continue;
            }
            // Rewrite each run of mismatching blocks.
            let blocks = want.len().div_ceil(MISMATCH_BLOCK as usize);
            let mut b = 0;
            while b < blocks {
                let differs = |b: usize| {
                    let r = b * MISMATCH_BLOCK as usize
                        ..((b + 1) * MISMATCH_BLOCK as usize).min(want.len());
                    want[r.clone()] != cmp[r]
                };
                if !differs(b) {
                    b += 1;
                    continue;
                }
                let run = b;
                while b < blocks && differs(b) {
                    b += 1;
                }
                let r =
                    run * MISMATCH_BLOCK as usize..(b * MISMATCH_BLOCK as usize).min(want.len());
                match dev.write(pos + r.start as u64, &want[r], false).await {
                    Ok(()) => report.repaired += (b - run) as u64,
                    Err(e) => {
                        h.fail(leg, e.errno());
                        break;
                    }
                }
            }
        }
        job.close();
        // Done again if the other writers' hold may have run out (what was
        // found and repaired stays counted).
        if !fencing.lasted() {
            continue;
        }
        pos += n;
        report.checked += n;
        pacer.advance(pos);
    }
    pacer.finish(size);
    tracing::info!(
        from,
        checked = report.checked,
        mismatches = report.mismatches,
        repaired = report.repaired,
        repair,
        "mirror scrub complete"
    );
    Ok(report)
}

/// Result of a completed [`resync_dirty`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyReport {
    /// Dirty regions copied.
    pub regions: u64,
    /// Bytes read from the source and written to the targets.
    pub bytes: u64,
    /// Regions cleared in the bitmap (idle, every leg healthy).
    pub cleared: u64,
}

/// Legs `resync_dirty` writes a piece read from leg `src` to.
fn dirty_targets(h: &MirrorHealth, target: Option<usize>, src: usize) -> u32 {
    match target {
        Some(leg) => 1 << leg,
        // Every leg that takes writes (healthy and rebuilding) but the source.
        None => ((1u32 << h.legs()) - 1) & !h.failed_mask() & !(1 << src),
    }
}

/// Flush the legs written since the last flush; an error fails the leg (and
/// stops a return resync when it is the returning leg).
async fn flush_targets<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    target: Option<usize>,
    pos: u64,
) -> Result<(), JobError> {
    let h = mirror.health();
    if let Some(leg) = target {
        return flush_leg(mirror, leg, pos).await;
    }
    for leg in 0..h.legs() {
        if h.failed_mask() & (1 << leg) == 0 {
            if let Err(e) = mirror.legs()[leg].flush().await {
                h.fail(leg, e.errno());
            }
        }
    }
    Ok(())
}

/// Clear the bits of `regions`, which the job made identical on every leg
/// (those still written to, or with a leg not healthy, stay set).
async fn clear_done<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    wi: &WriteIntent,
    regions: std::ops::Range<usize>,
) -> Result<u64, JobError> {
    match wi
        .clear_synced(mirror.health(), mirror.copies(), regions)
        .await
    {
        Ok(r) => Ok(r.cleared as u64),
        Err(IntentError::Io(e)) => Err(JobError::Bitmap(e)),
        Err(e) => {
            tracing::error!(error = %e, "write-intent bitmap not cleared");
            Err(JobError::Bitmap(IoError::new(
                libc::EINVAL,
                "write-intent",
                0,
                0,
            )))
        }
    }
}

/// Resynchronise the regions set in `mirror`'s write-intent bitmap
/// ([`crate::bitmap`]), `step` bytes at a time under the sync window (so host
/// writes stay correct, as for [`rebuild_leg`]), then clear their bits.
///
/// * `target: None` — after a crash (the bitmap was loaded with dirty regions,
///   [`WriteIntent::unsynced`]): every dirty region is read from the first
///   healthy leg and written to every other leg that takes writes; reads of
///   dirty regions go to that same leg until the end, when the bitmap is
///   marked synced. A target leg failing a write is failed and dropped.
/// * `target: Some(leg)` — a failed leg returned with its data intact: the
///   daemon made it rebuilding ([`MirrorHealth::start_rebuild`], checkpoint 0
///   or one persisted by an earlier run) and this copies the dirty regions
///   from the leg's checkpoint on onto it, moving its checkpoint past clean
///   regions too (they did not change while it was away); at the end the leg
///   becomes healthy ([`MirrorHealth::finish_rebuild`]). A write error on it
///   fails it ([`JobError::LegFailed`]).
///
/// Clean regions are never read. Progress is the leg offset reached; the
/// checkpoint callback is called as for [`rebuild_leg`], after the copies
/// below it are flushed (and, after a crash, their bits cleared: the bitmap is
/// the crash resync's checkpoint, a new run copies only what is left).
/// Cancellation stops at a step boundary ([`JobError::Cancelled`]). Bits are
/// cleared only while every leg is healthy (for a return, at the end).
pub async fn resync_dirty<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    target: Option<usize>,
    step: u64,
    ctl: &JobControl,
) -> Result<DirtyReport, JobError> {
    let h = mirror.health();
    let wi = h.write_intent().ok_or(JobError::NoBitmap)?.clone();
    check_job(mirror, 0, step)?;
    let from = match target {
        Some(leg) => h
            .rebuild_checkpoint(leg)
            .ok_or(JobError::NotRebuilding(leg))?,
        None => 0,
    };
    let job = h.claim_job().ok_or(JobError::Busy)?;
    let size = mirror.size();
    // Restart at the start of the region holding the checkpoint: a region is
    // copied whole.
    let mut pos = from.min(size) / wi.region_size() * wi.region_size();
    let mut buf = AlignedBuf::new(step.min(size.max(1)) as usize);
    let mut pacer = Pacer::new(ctl, pos);
    let mut report = DirtyReport::default();
    let mut fencing = Fencing::new(ctl);
    // Region being copied (counted once).
    let mut current = None;
    tracing::info!(
        ?target,
        from = pos,
        size,
        dirty = wi.dirty_regions(),
        "dirty-region resync started"
    );
    while pos < size {
        if ctl.is_cancelled() {
            flush_targets(mirror, target, pos).await?;
            if target.is_none() {
                clear_done(mirror, &wi, 0..wi.region_of(pos)).await?;
            }
            pacer.finish(pos);
            tracing::info!(?target, checkpoint = pos, "dirty-region resync cancelled");
            return Err(JobError::Cancelled { checkpoint: pos });
        }
        if let Some(leg) = target {
            if !h.is_rebuilding(leg) {
                return Err(leg_failed(h, leg, libc::EIO, pos));
            }
        }
        let r = wi.region_of(pos);
        let end = wi.region_range(r).end;
        let copy = current == Some(r) || wi.is_dirty(r);
        let next = if copy {
            if current != Some(r) {
                current = Some(r);
                report.regions += 1;
            }
            let n = step.min(end - pos);
            let chunk = &mut buf[..n as usize];
            if let Err(why) = fencing.cover(pos, n, size) {
                flush_targets(mirror, target, pos).await?;
                if target.is_none() {
                    clear_done(mirror, &wi, 0..wi.region_of(pos)).await?;
                }
                pacer.finish(pos);
                tracing::info!(?target, checkpoint = pos, %why, "dirty-region resync stopped");
                return Err(why);
            }
            job.open(pos, n).await;
            let copied = copy_piece(mirror, target, pos, chunk).await;
            job.close();
            copied?;
            if !fencing.lasted() {
                continue;
            }
            report.bytes += n;
            pos + n
        } else {
            end
        };
        if let Some(leg) = target {
            // Below `next` the leg holds every write: copied here, or clean.
            if h.rebuild_checkpoint(leg).is_some_and(|cp| cp < next) {
                h.set_checkpoint(leg, next);
            }
        }
        // Copies are durable (and, after a crash, their bits cleared) before a
        // checkpoint is reported.
        if pacer.due(next) || next == size {
            flush_targets(mirror, target, next).await?;
            if target.is_none() && next < size {
                let done = if next == end { r + 1 } else { r };
                report.cleared += clear_done(mirror, &wi, 0..done).await?;
            }
        }
        if copy {
            pacer.advance(next);
        } else {
            pacer.skip(pos, next);
        }
        pos = next;
    }
    if pos == from.min(size) {
        // Nothing to walk (the loop flushed otherwise).
        flush_targets(mirror, target, size).await?;
    }
    match target {
        Some(leg) => {
            if !h.finish_rebuild(leg) {
                return Err(leg_failed(h, leg, libc::EIO, size));
            }
        }
        None => wi.mark_synced(),
    }
    drop(job);
    drop(fencing);
    // In sync wherever every leg is healthy: clear what is idle.
    report.cleared += clear_done(mirror, &wi, 0..wi.regions()).await?;
    pacer.finish(size);
    tracing::info!(?target, ?report, "dirty-region resync complete");
    Ok(report)
}

/// Copy one piece (under the window): read it from the first healthy leg and
/// write it to the targets.
async fn copy_piece<D: BlockDev, C: BlockDev>(
    mirror: &Mirror<D, C>,
    target: Option<usize>,
    pos: u64,
    chunk: &mut [u8],
) -> Result<(), JobError> {
    let h = mirror.health();
    let src = read_healthy(mirror, pos, chunk).await?;
    let chunk: &[u8] = chunk;
    let targets = dirty_targets(h, target, src);
    for leg in (0..h.legs()).filter(|l| targets & (1 << l) != 0) {
        if let Err(e) = mirror.legs()[leg].write(pos, chunk, false).await {
            h.fail(leg, e.errno());
            if target.is_some() {
                return Err(leg_failed(h, leg, e.errno(), pos));
            }
        }
    }
    Ok(())
}
