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
    /// A refusal of a registered buffer, not a failure ([`Self::needs_bytes`]).
    needs_bytes: bool,
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
            needs_bytes: false,
            op,
            offset,
            len,
        }
    }

    /// Request outside the device.
    pub fn out_of_range(op: &'static str, offset: u64, len: u64) -> Self {
        Self::new(libc::EINVAL, op, offset, len)
    }

    /// A device that needs a request's bytes refused a registered buffer
    /// (see [`BlockDev`]): nothing failed, and the request is to be served
    /// again from memory. Its errno is `EOPNOTSUPP`, for a caller that has
    /// no memory form to retry with. Layers that count device failures (a
    /// mirror's legs) pass it up instead.
    pub fn needs_bytes(op: &'static str, offset: u64, len: u64) -> Self {
        IoError {
            needs_bytes: true,
            ..Self::new(libc::EOPNOTSUPP, op, offset, len)
        }
    }

    /// The same error, re-labelled with the request of a layer above (its
    /// operation, offset and length); a refusal stays one.
    pub fn relabel(&self, op: &'static str, offset: u64, len: u64) -> Self {
        IoError {
            op,
            offset,
            len,
            ..self.clone()
        }
    }

    /// Whether this is the refusal of [`Self::needs_bytes`].
    pub fn is_needs_bytes(&self) -> bool {
        self.needs_bytes
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

/// A range of a buffer registered in the ring's buffer table (an io_uring
/// fixed buffer): the form in which a zero-copy ublk request's data reaches
/// the stack (`UBLK_F_AUTO_BUF_REG`; docs/benchmarks/copy.md, *Zero copy on
/// a newer kernel*). The stack never sees its bytes: the leaves name it in
/// `READ_FIXED`/`WRITE_FIXED`, and the layers above only cut sub-ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixed {
    addr: u64,
    // u32 keeps a `WriteBuf` at 24 bytes: every layer's request future
    // holds one (a ublk request is at most its 512 KiB tag buffer).
    len: u32,
    index: u16,
}

impl Fixed {
    /// `len` bytes of the buffer at `index` of the ring's table, whose first
    /// byte has the SQE address `addr`. For a buffer the kernel registered
    /// (a ublk request's pages) the address is the offset into the request's
    /// data, from 0; for one user space registered, the memory's address.
    /// `len` must fit in a `u32` (panics otherwise).
    pub fn new(index: u16, addr: u64, len: usize) -> Fixed {
        let len = u32::try_from(len).expect("fixed buffer range over 4 GiB");
        Fixed { addr, len, index }
    }

    /// The buffer's index in the ring's table.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The SQE address of the range's first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `[start, start + len)` of this range; panics outside it, as
    /// slicing does.
    pub fn slice(self, start: usize, len: usize) -> Fixed {
        assert!(
            start.checked_add(len).is_some_and(|end| end <= self.len()),
            "fixed buffer range {start}+{len} outside {}",
            self.len
        );
        Fixed {
            addr: self.addr + start as u64,
            len: len as u32,
            index: self.index,
        }
    }
}

/// Where a read lands: memory, or a registered buffer ([`Fixed`]). The
/// layers that split a request (linear, stripe, mirror) are written once
/// over it; [`BlockDev::read_to`] hands each piece to the right method.
#[derive(Debug)]
pub enum ReadBuf<'a> {
    /// Bytes in memory.
    Mem(&'a mut [u8]),
    /// A range of a registered buffer.
    Fixed(Fixed),
}

impl<'a> ReadBuf<'a> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            ReadBuf::Mem(b) => b.len(),
            ReadBuf::Fixed(f) => f.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[start, start + len)`, borrowed.
    pub fn part(&mut self, start: usize, len: usize) -> ReadBuf<'_> {
        match self {
            ReadBuf::Mem(b) => ReadBuf::Mem(&mut b[start..start + len]),
            ReadBuf::Fixed(f) => ReadBuf::Fixed(f.slice(start, len)),
        }
    }

    /// The first `mid` bytes and the rest.
    pub fn split_at(self, mid: usize) -> (ReadBuf<'a>, ReadBuf<'a>) {
        match self {
            ReadBuf::Mem(b) => {
                let (head, tail) = b.split_at_mut(mid);
                (ReadBuf::Mem(head), ReadBuf::Mem(tail))
            }
            ReadBuf::Fixed(f) => (
                ReadBuf::Fixed(f.slice(0, mid)),
                ReadBuf::Fixed(f.slice(mid, f.len() - mid)),
            ),
        }
    }

    /// The SQE reading `n` bytes of `fd` at file offset `pos` into this
    /// buffer from byte `at` on. The buffer must stay valid until the SQE
    /// completes ([`Ring`]'s contract).
    pub fn read_sqe(
        &mut self,
        fd: io_uring::types::Fd,
        pos: u64,
        at: usize,
        n: u32,
    ) -> io_uring::squeue::Entry {
        use io_uring::opcode;
        match self {
            ReadBuf::Mem(b) => opcode::Read::new(fd, b[at..].as_mut_ptr(), n)
                .offset(pos)
                .build(),
            ReadBuf::Fixed(f) => {
                let f = f.slice(at, n as usize);
                opcode::ReadFixed::new(fd, f.addr as *mut u8, n, f.index)
                    .offset(pos)
                    .build()
            }
        }
    }
}

/// Where a write's data comes from: memory, or a registered buffer
/// ([`Fixed`]); see [`ReadBuf`].
#[derive(Clone, Copy, Debug)]
pub enum WriteBuf<'a> {
    /// Bytes in memory.
    Mem(&'a [u8]),
    /// A range of a registered buffer.
    Fixed(Fixed),
}

impl<'a> WriteBuf<'a> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            WriteBuf::Mem(b) => b.len(),
            WriteBuf::Fixed(f) => f.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `[start, start + len)`.
    pub fn part(self, start: usize, len: usize) -> WriteBuf<'a> {
        match self {
            WriteBuf::Mem(b) => WriteBuf::Mem(&b[start..start + len]),
            WriteBuf::Fixed(f) => WriteBuf::Fixed(f.slice(start, len)),
        }
    }

    /// The first `mid` bytes and the rest.
    pub fn split_at(self, mid: usize) -> (WriteBuf<'a>, WriteBuf<'a>) {
        (self.part(0, mid), self.part(mid, self.len() - mid))
    }

    /// The SQE writing `n` bytes of this buffer, from byte `at` on, to `fd`
    /// at file offset `pos` with `rw_flags`. The buffer must stay valid
    /// until the SQE completes ([`Ring`]'s contract).
    pub fn write_sqe(
        self,
        fd: io_uring::types::Fd,
        pos: u64,
        at: usize,
        n: u32,
        rw_flags: i32,
    ) -> io_uring::squeue::Entry {
        use io_uring::opcode;
        match self.part(at, n as usize) {
            WriteBuf::Mem(b) => opcode::Write::new(fd, b.as_ptr(), n)
                .offset(pos)
                .rw_flags(rw_flags)
                .build(),
            WriteBuf::Fixed(f) => opcode::WriteFixed::new(fd, f.addr as *const u8, n, f.index)
                .offset(pos)
                .rw_flags(rw_flags)
                .build(),
        }
    }
}

/// A block device in the stack. Offsets and lengths are in bytes.
///
/// Requests that do not fit in `[0, size())` fail with `EINVAL`; they never
/// panic. Futures borrow their buffers and must be driven to completion (see
/// [`Ring`]).
///
/// Reads and writes take memory (`read`, `write`) or either memory or a
/// registered buffer (`read_to`, `write_from` with a [`ReadBuf`] or
/// [`WriteBuf`]: zero copy). A device that cannot name a registered buffer
/// (one that needs the bytes: a remote reference) keeps the defaults, which
/// refuse it with [`IoError::needs_bytes`]; the layers above pass that
/// refusal up untouched (it is not a device failure), and the caller serves
/// the request again from memory.
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

    /// Whether `read_to` and `write_from` serve a registered buffer, as far
    /// as the tree in place now tells: every device down to the leaves can
    /// name one. A hint for choosing the form; a request that
    /// meets a changed tree is still refused cleanly
    /// ([`IoError::needs_bytes`]).
    fn fixed(&self) -> bool {
        false
    }

    /// Read into either form of buffer. The layers of the stack implement
    /// their reads here and `read` in terms of it, and call their members'
    /// `read_to`, so that one request's future nests one future per layer
    /// whichever the form. The default serves memory with `read` and
    /// refuses a registered buffer ([`IoError::needs_bytes`]).
    fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> impl Future<Output = IoResult<()>> {
        async move {
            match buf {
                ReadBuf::Mem(b) => self.read(offset, b).await,
                ReadBuf::Fixed(f) => Err(IoError::needs_bytes("read", offset, f.len() as u64)),
            }
        }
    }

    /// Write from either form of buffer; see [`Self::read_to`].
    fn write_from(
        &self,
        offset: u64,
        buf: WriteBuf<'_>,
        fua: bool,
    ) -> impl Future<Output = IoResult<()>> {
        async move {
            match buf {
                WriteBuf::Mem(b) => self.write(offset, b, fua).await,
                WriteBuf::Fixed(f) => Err(IoError::needs_bytes("write", offset, f.len() as u64)),
            }
        }
    }
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
