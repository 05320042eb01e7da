//! Stacked block drivers for tierblk.
//!
//! This crate holds the data path below a ublk queue: everything that turns a
//! block request on a virtual volume into I/O on the backing ALUs (image files
//! or block devices).
//!
//! * [`Ring`] abstracts the per-queue io_uring. The daemon implements it on top
//!   of libublk's per-queue ring; [`uring::LocalRing`] is a standalone
//!   implementation for tests, tools and host benchmarks.
//! * [`BlockDev`] is the one seam between drivers: every virtual volume object
//!   (partition, linear, stripe, mirror, volume) implements it and stacks on
//!   other `BlockDev`s through static dispatch (generics), with no per-I/O
//!   allocation, boxing or locking.
//! * [`partition`] is the tier-1 partition object (spec [056]/[080]): a byte
//!   range of one ALU.
//! * [`remote`] is the remote reference to a tier-1 object in a peer (spec
//!   [0109]–[0110]) over the fabric's NBD ([`nbd`]), with path failover;
//!   [`leaf`] makes local and remote references one leaf type.
//! * [`linear`] is the concatenation object (spec [061]).
//! * [`stripe`] (RAID0), [`mirror`] (RAID1) and their composition RAID10 are
//!   the second-tier objects of spec [074]–[076]; [`volume`] assembles any
//!   supported layout into one [`Volume`] enum per queue thread.
//! * [`resync`] rebuilds a new or replaced mirror leg and scrubs mirrors
//!   online, on a job thread of its own, behind a sync window the queues'
//!   writes respect.
//! * [`bitmap`] is the mirrors' write-intent bitmap (MD's bitmap): a region is
//!   marked on disk before a write reaches the legs and cleared lazily; after a
//!   crash or a leg's return only marked regions are resynchronised.
//! * [`snapshot`] holds copy-on-write snapshots (spec VIII): the origin and
//!   snapshot drivers over a persistent exception store on a COW device.
//! * [`gate`] suspends a volume's host I/O (drain in-flight requests, hold new
//!   ones, resume in order), as dm's suspend/resume does: the barrier at which
//!   a snapshot is taken and the tree is changed.
//! * [`frames`] runs a future in a reused heap frame, so that a remote
//!   reference's large request future does not size every local leaf's.
//! * [`join`] runs the pieces of one request concurrently without allocating.
//! * [`tasks`] polls a fixed set of tasks (a ublk queue's tags, an NBD
//!   connection's slots) only when woken, with no allocation per wake.
//! * [`AlignedBuf`] is a page-aligned heap buffer usable for `O_DIRECT` I/O.
//!
//! All futures in this crate are `!Send` and are meant to be driven on the
//! thread owning the ring.

#![warn(missing_docs)]

use std::fmt;
use std::future::Future;

pub mod aligned;
pub mod bitmap;
pub mod frames;
pub mod gate;
pub mod join;
pub mod leaf;
pub mod linear;
pub mod mirror;
pub mod nbd;
pub mod partition;
pub mod remote;
pub mod resync;
pub mod snapshot;
pub mod stripe;
pub mod swap;
pub mod tasks;
pub mod uring;
pub mod volume;

pub use aligned::AlignedBuf;
pub use bitmap::{IntentCopy, IntentId, WriteIntent};
pub use leaf::{Leaf, Piece};
pub use linear::Linear;
pub use mirror::{HeldWindow, Mirror, MirrorHealth, MirrorState};
pub use partition::{open_alu, Partition};
pub use remote::{PathReport, RemoteDesc, RemoteRef};
pub use resync::{
    rebuild_leg, resync_dirty, scrub, DirtyReport, JobControl, JobError, PeerFence, ScrubReport,
};
pub use snapshot::{
    rollback, ExceptionStore, MakeCow, RollbackError, SetEntry, Snapshot, SnapshotOrigin,
    SnapshotSet, SnapshotState, SnapshotView, StoreError,
};
pub use stripe::Stripe;
pub use swap::{LegSlot, SwapLeg};
pub use volume::{build_volume, BuildError, Layout, MemberDesc, Volume, VolumeDesc};

/// A submission ring owned by one thread (one ublk queue). Futures are `!Send`;
/// no locks.
///
/// # Contract
///
/// An SQE may reference memory (the buffer of a read or write). The caller of
/// [`Ring::submit`] must keep that memory valid, and not otherwise access it,
/// until the returned future has resolved. In particular the returned future
/// must be driven to completion and never dropped while the operation is in
/// flight: the kernel keeps writing into / reading from the buffer until the
/// CQE is posted, whatever happens to the future. Every future in this crate
/// that borrows a caller buffer inherits the same contract: drive it to
/// completion.
pub trait Ring {
    /// Submit one SQE; resolves to the CQE result (>= 0 or -errno).
    ///
    /// The SQE's `user_data` is owned by the ring implementation and is
    /// overwritten.
    fn submit(&self, sqe: io_uring::squeue::Entry) -> impl Future<Output = i32>;
}

impl<R: Ring + ?Sized> Ring for &R {
    fn submit(&self, sqe: io_uring::squeue::Entry) -> impl Future<Output = i32> {
        (**self).submit(sqe)
    }
}

impl<R: Ring + ?Sized> Ring for std::rc::Rc<R> {
    fn submit(&self, sqe: io_uring::squeue::Entry) -> impl Future<Output = i32> {
        (**self).submit(sqe)
    }
}

/// Result of a block I/O.
pub type IoResult<T> = Result<T, IoError>;

/// A failed block I/O: the errno to report to the block layer plus context.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct IoError {
    errno: i32,
    op: &'static str,
    offset: u64,
    len: u64,
}

impl IoError {
    /// Build an error; `errno` is a positive errno value (a negative one is
    /// normalized, and 0 becomes `EIO`).
    pub fn new(errno: i32, op: &'static str, offset: u64, len: u64) -> Self {
        IoError {
            errno: errno.checked_abs().filter(|&e| e != 0).unwrap_or(libc::EIO),
            op,
            offset,
            len,
        }
    }

    /// Request outside the device.
    pub fn out_of_range(op: &'static str, offset: u64, len: u64) -> Self {
        Self::new(libc::EINVAL, op, offset, len)
    }

    /// The positive errno value.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The operation that failed ("read", "write", ...).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// Byte offset of the failed request, relative to the device that
    /// reported it.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the failed request in bytes.
    pub fn request_len(&self) -> u64 {
        self.len
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {} len {}: {}",
            self.op,
            self.offset,
            self.len,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// Queue limits of a block device, as reported to the block layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Logical block size in bytes (minimum I/O size and alignment).
    pub logical_block: u32,
    /// Physical block size in bytes.
    pub physical_block: u32,
    /// Largest single request in bytes.
    pub max_io_bytes: u32,
    /// Whether discard is supported.
    pub discard: bool,
    /// Whether write-zeroes is supported.
    pub write_zeroes: bool,
}

impl Limits {
    /// The most restrictive combination of two limit sets.
    pub fn restrict(self, other: Limits) -> Limits {
        Limits {
            logical_block: self.logical_block.max(other.logical_block),
            physical_block: self.physical_block.max(other.physical_block),
            max_io_bytes: self.max_io_bytes.min(other.max_io_bytes),
            discard: self.discard && other.discard,
            write_zeroes: self.write_zeroes && other.write_zeroes,
        }
    }
}

/// A block device in the stack. Offsets and lengths are in bytes.
///
/// Requests that do not fit in `[0, size())` fail with `EINVAL`; they never
/// panic. Futures borrow their buffers and must be driven to completion (see
/// [`Ring`]).
pub trait BlockDev {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Queue limits.
    fn limits(&self) -> Limits;
    /// Read `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> impl Future<Output = IoResult<()>>;
    /// Write `buf` at `offset`; with `fua` the data is durable on completion.
    fn write(&self, offset: u64, buf: &[u8], fua: bool) -> impl Future<Output = IoResult<()>>;
    /// Make all completed writes durable.
    fn flush(&self) -> impl Future<Output = IoResult<()>>;
    /// Discard (deallocate) a range; later reads return zeroes.
    fn discard(&self, offset: u64, len: u64) -> impl Future<Output = IoResult<()>>;
    /// Write zeroes over a range.
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = IoResult<()>>;
}

/// Check that `[offset, offset + len)` fits in a device of `size` bytes.
pub(crate) fn check_range(op: &'static str, offset: u64, len: u64, size: u64) -> IoResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(IoError::out_of_range(op, offset, len)),
    }
}

/// Convenience for the daemon: build, per queue thread, the concatenation of
/// `pieces` (in volume order) using `ring`.
pub fn build_linear<R: Ring + Clone>(pieces: &[Piece], ring: R) -> Linear<Leaf<R>> {
    Linear::new(pieces.iter().map(|p| p.build(ring.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_normalizes_errno_and_displays_context() {
        assert_eq!(IoError::new(-libc::EIO, "read", 0, 1).errno(), libc::EIO);
        assert_eq!(IoError::new(0, "read", 0, 1).errno(), libc::EIO);
        assert_eq!(IoError::new(i32::MIN, "read", 0, 1).errno(), libc::EIO);
        let e = IoError::new(libc::ENOSPC, "write", 4096, 512);
        assert_eq!(
            (e.errno(), e.op(), e.offset(), e.request_len()),
            (libc::ENOSPC, "write", 4096, 512)
        );
        let msg = e.to_string();
        assert!(msg.starts_with("write at offset 4096 len 512: "), "{msg}");
    }

    #[test]
    fn check_range_rejects_overflow_and_out_of_bounds() {
        assert!(check_range("read", 0, 10, 10).is_ok());
        assert!(check_range("read", 10, 0, 10).is_ok());
        assert_eq!(
            check_range("read", 10, 1, 10).unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            check_range("read", 11, 0, 10).unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            check_range("read", u64::MAX, 2, u64::MAX)
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
    }

    #[test]
    fn limits_restrict_takes_the_most_restrictive() {
        let a = Limits {
            logical_block: 512,
            physical_block: 4096,
            max_io_bytes: 1 << 20,
            discard: true,
            write_zeroes: false,
        };
        let b = Limits {
            logical_block: 4096,
            physical_block: 4096,
            max_io_bytes: 1 << 17,
            discard: false,
            write_zeroes: true,
        };
        let r = a.restrict(b);
        assert_eq!(
            r,
            Limits {
                logical_block: 4096,
                physical_block: 4096,
                max_io_bytes: 1 << 17,
                discard: false,
                write_zeroes: false
            }
        );
    }
}
