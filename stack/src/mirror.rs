//! The mirroring object (spec [061], [074]–[076]): 2 to 4 legs of equal size
//! holding the same data (RAID1).
//!
//! * Reads go to one healthy leg, chosen round-robin per request with a
//!   per-instance counter (each ublk queue has its own `Mirror`, so no shared
//!   cache line is touched per I/O). A leg that fails a read is marked failed
//!   and the read is retried on the next healthy leg; only when no healthy leg
//!   is left does the read fail.
//! * Writes, write-zeroes and discard go to every healthy leg concurrently
//!   (heapless [`join`](crate::join)). A leg that errors is marked failed; the
//!   request succeeds if at least one leg succeeded. FUA is passed to every leg.
//! * Flush goes to every healthy leg; failing legs are marked failed; it fails
//!   only if no leg succeeded.
//!
//! So a degraded mirror never returns an error to the host while one leg
//! works. A failed leg is never read again: it missed writes, and serving a
//! stale block would be silent corruption (MD's lesson: a failed-device record
//! keeps a stale disk from winning). Bringing a leg back needs a resync, which
//! is the daemon's job, not the data path's.
//!
//! Health is shared by every queue thread of a volume through
//! [`MirrorHealth`] (one `AtomicU32` bitmask of failed legs): a leg failed on
//! one queue is skipped by all. The daemon persists failures through the
//! `on_fail` callback, which runs exactly once per leg transition.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::join::join_bounded;
use crate::volume::BuildError;
use crate::{check_range, BlockDev, IoError, IoResult, Limits};

/// Largest number of legs of one mirror.
pub const MAX_LEGS: usize = 4;

/// Callback run when a leg transitions to failed: `(leg, errno)`.
pub type OnFail = Box<dyn Fn(usize, i32) + Send + Sync>;

/// Health of a mirror, shared (in an `Arc`) by every queue's [`Mirror`].
pub struct MirrorHealth {
    legs: usize,
    failed: AtomicU32,
    on_fail: OnFail,
}

impl fmt::Debug for MirrorHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirrorHealth")
            .field("legs", &self.legs)
            .field("failed", &format_args!("{:#b}", self.failed_mask()))
            .finish()
    }
}

/// Overall state of a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorState {
    /// Every leg is healthy.
    Optimal,
    /// Some legs failed; at least one works.
    Degraded,
    /// No leg works: I/O fails.
    Failed,
}

impl MirrorHealth {
    /// Health of a mirror of `legs` legs (clamped to 1..=[`MAX_LEGS`]) whose
    /// legs in `initially_failed` (bit `i` = leg `i`, as persisted by the
    /// daemon) are already failed. `on_fail` is not called for those.
    pub fn new(legs: usize, initially_failed: u32, on_fail: OnFail) -> Self {
        let legs = legs.clamp(1, MAX_LEGS);
        MirrorHealth {
            legs,
            failed: AtomicU32::new(initially_failed & Self::all(legs)),
            on_fail,
        }
    }

    fn all(legs: usize) -> u32 {
        (1u32 << legs) - 1
    }

    /// Number of legs.
    pub fn legs(&self) -> usize {
        self.legs
    }

    /// Bitmask of failed legs (bit `i` = leg `i`).
    pub fn failed_mask(&self) -> u32 {
        self.failed.load(Ordering::Acquire)
    }

    /// Whether leg `leg` is healthy.
    pub fn is_healthy(&self, leg: usize) -> bool {
        leg < self.legs && self.failed_mask() & (1 << leg) == 0
    }

    /// Number of healthy legs.
    pub fn healthy_count(&self) -> usize {
        self.legs - self.failed_mask().count_ones() as usize
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
    /// and the mirror keeps serving what it still can.
    pub fn fail(&self, leg: usize, errno: i32) -> bool {
        if !self.transition(leg) {
            return false;
        }
        tracing::error!(
            leg,
            errno,
            remaining = self.healthy_count(),
            "mirror leg failed"
        );
        (self.on_fail)(leg, errno);
        true
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
        let all = (1u32 << self.legs) - 1;
        self.failed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |prev| {
                (prev & bit == 0 && prev | bit != all).then_some(prev | bit)
            })
            .is_ok()
    }
}

/// RAID1 over `legs`, with health shared across queues.
pub struct Mirror<D: BlockDev> {
    legs: Vec<D>,
    health: Arc<MirrorHealth>,
    /// Round-robin position for reads (per instance, i.e. per queue).
    next_read: Cell<usize>,
    size: u64,
    limits: Limits,
}

impl<D: BlockDev> Mirror<D> {
    /// Mirror over `legs` (2 to [`MAX_LEGS`], all of the same size) with
    /// `health` describing the same number of legs.
    pub fn new(legs: Vec<D>, health: Arc<MirrorHealth>) -> Result<Self, BuildError> {
        if !(2..=MAX_LEGS).contains(&legs.len()) {
            return Err(BuildError::MemberCount {
                layout: "mirror",
                expected: format!("2 to {MAX_LEGS} legs"),
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
            .expect("at least 2 legs");
        Ok(Mirror {
            legs,
            health,
            next_read: Cell::new(0),
            size,
            limits,
        })
    }

    /// The legs.
    pub fn legs(&self) -> &[D] {
        &self.legs
    }

    /// The shared health.
    pub fn health(&self) -> &Arc<MirrorHealth> {
        &self.health
    }

    /// Overall state (shared across queues).
    pub fn state(&self) -> MirrorState {
        self.health.state()
    }

    /// Run `op` on every healthy leg concurrently; mark legs that fail.
    /// Succeeds if at least one leg succeeded.
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
        let healthy = (0..self.legs.len()).filter(|i| mask & (1 << i) == 0);
        let legs = healthy.map(|i| {
            let f = op(&self.legs[i]);
            async move { (i, f.await) }
        });
        let mut ok = 0;
        let mut err = None;
        join_bounded::<MAX_LEGS, _, _, _>(legs, |_, (leg, r)| match r {
            Ok(()) => ok += 1,
            Err(e) => {
                self.health.fail(leg, e.errno());
                err.get_or_insert(e);
            }
        })
        .await;
        if ok > 0 {
            return Ok(());
        }
        // Every leg we tried failed, or none was healthy to begin with.
        let errno = err.map_or(libc::EIO, |e| e.errno());
        Err(IoError::new(errno, name, offset, len))
    }
}

impl<D: BlockDev> BlockDev for Mirror<D> {
    fn size(&self) -> u64 {
        self.size
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("read", offset, len, self.size)?;
        let n = self.legs.len();
        let start = self.next_read.get();
        self.next_read.set(start.wrapping_add(1));
        let mut last_errno = libc::EIO;
        for k in 0..n {
            let leg = (start + k) % n;
            // Re-check every time: this or another queue may have failed the
            // leg meanwhile.
            if !self.health.is_healthy(leg) {
                continue;
            }
            match self.legs[leg].read(offset, buf).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.health.fail(leg, e.errno());
                    last_errno = e.errno();
                }
            }
        }
        Err(IoError::new(last_errno, "read", offset, len))
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("write", offset, len, self.size)?;
        self.all_legs(|l| l.write(offset, buf, fua), "write", offset, len)
            .await
    }

    async fn flush(&self) -> IoResult<()> {
        self.all_legs(|l| l.flush(), "flush", 0, 0).await
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("discard", offset, len, self.size)?;
        self.all_legs(|l| l.discard(offset, len), "discard", offset, len)
            .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("write_zeroes", offset, len, self.size)?;
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
}
