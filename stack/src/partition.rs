//! The tier-1 partition object (spec [056]/[080]): a byte range
//! `[start, start + len)` of one ALU (an image file or a block device).
//!
//! Every I/O goes through a [`Ring`] as one SQE per piece on the ALU's raw fd:
//! `Read`/`Write` (short transfers resubmit the remainder, `-EAGAIN`/`-EINTR`
//! are retried), FUA writes carry `RWF_DSYNC`, flush is an `fdatasync`-style
//! `Fsync`, discard punches a hole and write-zeroes uses `FALLOC_FL_ZERO_RANGE`
//! (falling back to writing zeroes when the ALU does not support it).
//!
//! The ALU is opened once per daemon with [`open_alu`] (`O_DIRECT` when the
//! filesystem allows it) and the `Arc<File>` is shared across queue threads;
//! each queue thread builds its own `Partition` around its own ring.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use io_uring::{opcode, types};

use crate::{check_range, BlockDev, IoError, IoResult, Limits, ReadBuf, Ring, WriteBuf};

/// Largest transfer submitted as one SQE (must fit the SQE's `u32` length and
/// stay block aligned).
const MAX_CHUNK: usize = 1 << 30;

/// How many times one request retries `-EAGAIN`/`-EINTR` before failing.
const MAX_RETRIES: u32 = 64;

/// Size of the static zero buffer used by the write-zeroes fallback.
const ZERO_CHUNK: usize = 64 * 1024;

/// Page-aligned zeroes, so the fallback also works on `O_DIRECT` fds.
#[repr(C, align(4096))]
struct Zeroes([u8; ZERO_CHUNK]);

static ZEROES: Zeroes = Zeroes([0; ZERO_CHUNK]);

/// `/dev/zero`, opened once per process: the source of the zeroes a read
/// past the end of an image file returns into a registered buffer.
fn dev_zero() -> Result<&'static File, i32> {
    static DEV_ZERO: OnceLock<Result<File, i32>> = OnceLock::new();
    DEV_ZERO
        .get_or_init(|| {
            File::open("/dev/zero").map_err(|e| {
                tracing::warn!("cannot open /dev/zero: {e}");
                e.raw_os_error().unwrap_or(libc::EIO)
            })
        })
        .as_ref()
        .map_err(|&e| e)
}

/// Default limits for an ALU whose geometry is not queried.
pub const DEFAULT_LIMITS: Limits = Limits {
    logical_block: 512,
    physical_block: 4096,
    max_io_bytes: 1 << 20,
    discard: true,
    write_zeroes: true,
};

/// Open an ALU read-write with `O_DIRECT`, falling back to buffered I/O when
/// the filesystem refuses `O_DIRECT` with `EINVAL` (e.g. tmpfs).
pub fn open_alu(path: &Path) -> io::Result<Arc<File>> {
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(f) => Ok(Arc::new(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(path = %path.display(), "O_DIRECT refused, using buffered I/O");
            Ok(Arc::new(
                OpenOptions::new().read(true).write(true).open(path)?,
            ))
        }
        Err(e) => Err(e),
    }
}

/// A byte range of an ALU, accessed through a [`Ring`].
pub struct Partition<R: Ring> {
    file: Arc<File>,
    start: u64,
    len: u64,
    ring: R,
    limits: Limits,
}

impl<R: Ring> Partition<R> {
    /// The range `[start, start + len)` of `file`, with I/O submitted on
    /// `ring`. Limits come from the block device geometry when `file` is a
    /// block device, [`DEFAULT_LIMITS`] otherwise.
    pub fn new(file: Arc<File>, start: u64, len: u64, ring: R) -> Self {
        // Kernel file offsets are signed: keep the range representable.
        let max_len = (i64::MAX as u64).saturating_sub(start);
        if len > max_len {
            tracing::warn!(
                start,
                len,
                "partition range exceeds the maximum file offset; truncated"
            );
        }
        let limits = query_limits(&file);
        Partition {
            file,
            start,
            len: len.min(max_len),
            ring,
            limits,
        }
    }

    /// Replace the reported limits (e.g. declare discard unsupported, which
    /// turns discard on an ALU without hole punching into a successful no-op).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Start offset of the partition on its ALU.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The ALU.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    /// Classify a CQE result of a request piece: `Ok(Some(n))` transferred `n`
    /// bytes (or succeeded, for non-transfer ops), `Ok(None)` retry, `Err` fail.
    fn outcome(
        &self,
        res: i32,
        retries: &mut u32,
        op: &'static str,
        offset: u64,
        len: u64,
    ) -> IoResult<Option<usize>> {
        if res >= 0 {
            return Ok(Some(res as usize));
        }
        let errno = -res;
        if (errno == libc::EAGAIN || errno == libc::EINTR) && *retries < MAX_RETRIES {
            *retries += 1;
            return Ok(None);
        }
        let err = IoError::new(errno, op, offset, len);
        tracing::warn!(start = self.start, error = %err, "partition I/O failed");
        Err(err)
    }

    /// Fill `buf` with zeroes: in memory directly, in a registered buffer by
    /// reading `/dev/zero` into it (the stack never holds its bytes).
    async fn zero_fill(&self, mut buf: ReadBuf<'_>, pos: u64) -> IoResult<()> {
        let len = buf.len();
        let dev_zero = match &mut buf {
            ReadBuf::Mem(b) => {
                b.fill(0);
                return Ok(());
            }
            ReadBuf::Fixed(_) => {
                dev_zero().map_err(|e| IoError::new(e, "read", pos, len as u64))?
            }
        };
        let mut done = 0usize;
        let mut retries = 0;
        while done < len {
            let n = (len - done).min(MAX_CHUNK);
            let sqe = buf.read_sqe(types::Fd(dev_zero.as_raw_fd()), 0, done, n as u32);
            let res = self.ring.submit(sqe).await;
            match self.outcome(res, &mut retries, "read", pos, n as u64)? {
                Some(0) => return Err(IoError::new(libc::EIO, "read", pos, len as u64)),
                Some(k) => done += k,
                None => {}
            }
        }
        Ok(())
    }

    /// `fallocate` through the ring, retrying `-EAGAIN`/`-EINTR`; returns the
    /// raw CQE result.
    async fn fallocate(&self, mode: i32, offset: u64, len: u64) -> i32 {
        let mut retries = 0;
        loop {
            let sqe = opcode::Fallocate::new(self.fd(), len)
                .offset(self.start + offset)
                .mode(mode)
                .build();
            let res = self.ring.submit(sqe).await;
            if (res == -libc::EAGAIN || res == -libc::EINTR) && retries < MAX_RETRIES {
                retries += 1;
                continue;
            }
            return res;
        }
    }
}

impl<R: Ring> BlockDev for Partition<R> {
    fn size(&self) -> u64 {
        self.len
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    /// Read into `buf` at partition offset `offset`.
    async fn read_to(&self, offset: u64, mut buf: ReadBuf<'_>) -> IoResult<()> {
        check_range("read", offset, buf.len() as u64, self.len)?;
        let mut done = 0usize;
        let mut retries = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_CHUNK);
            let pos = offset + done as u64;
            let sqe = buf.read_sqe(self.fd(), self.start + pos, done, n as u32);
            // The future is awaited to completion and `buf` outlives it
            // (Ring contract).
            let res = self.ring.submit(sqe).await;
            match self.outcome(res, &mut retries, "read", pos, n as u64)? {
                Some(0) => {
                    // End of an image file shorter than the partition: the
                    // unwritten tail reads as zeroes, like a sparse file.
                    let rest = buf.len() - done;
                    return self.zero_fill(buf.part(done, rest), pos).await;
                }
                Some(k) => done += k,
                None => {}
            }
        }
        Ok(())
    }

    /// Range-check and write `buf` at `offset`; with `fua` the data is
    /// durable on completion.
    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        check_range("write", offset, buf.len() as u64, self.len)?;
        let rw_flags = if fua { libc::RWF_DSYNC } else { 0 };
        let mut done = 0usize;
        let mut retries = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_CHUNK);
            let pos = offset + done as u64;
            let sqe = buf.write_sqe(self.fd(), self.start + pos, done, n as u32, rw_flags);
            // The future is awaited to completion and `buf` outlives it
            // (Ring contract).
            let res = self.ring.submit(sqe).await;
            match self.outcome(res, &mut retries, "write", pos, n as u64)? {
                Some(0) => {
                    let err = IoError::new(libc::EIO, "write", pos, n as u64);
                    tracing::warn!(start = self.start, error = %err, "partition write made no progress");
                    return Err(err);
                }
                Some(k) => done += k,
                None => {}
            }
        }
        Ok(())
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    fn fixed(&self) -> bool {
        true
    }

    async fn flush(&self) -> IoResult<()> {
        let mut retries = 0;
        loop {
            let sqe = opcode::Fsync::new(self.fd())
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            let res = self.ring.submit(sqe).await;
            if self.outcome(res, &mut retries, "flush", 0, 0)?.is_some() {
                return Ok(());
            }
        }
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("discard", offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        let res = self
            .fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .await;
        if (res == -libc::EOPNOTSUPP || res == -libc::EINVAL) && !self.limits.discard {
            // Discard is advisory and the limits say it is not supported.
            return Ok(());
        }
        let mut retries = MAX_RETRIES;
        self.outcome(res, &mut retries, "discard", offset, len)
            .map(|_| ())
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("write_zeroes", offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        let res = self
            .fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .await;
        if res == -libc::EOPNOTSUPP || res == -libc::EINVAL {
            tracing::debug!(
                start = self.start,
                offset,
                len,
                "ZERO_RANGE unsupported; writing zeroes"
            );
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                let n = (end - pos).min(ZERO_CHUNK as u64) as usize;
                self.write_from(pos, WriteBuf::Mem(&ZEROES.0[..n]), false)
                    .await?;
                pos += n as u64;
            }
            return Ok(());
        }
        let mut retries = MAX_RETRIES;
        self.outcome(res, &mut retries, "write_zeroes", offset, len)
            .map(|_| ())
    }
}

/// `_IO(0x12, 104)`: logical sector size of a block device.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `_IO(0x12, 123)`: physical sector size of a block device.
const BLKPBSZGET: libc::c_ulong = 0x127b;

/// Limits of `file`: its sector sizes if it is a block device, else defaults.
fn query_limits(file: &File) -> Limits {
    let is_blk = file
        .metadata()
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if !is_blk {
        return DEFAULT_LIMITS;
    }
    let fd = file.as_raw_fd();
    let mut logical: libc::c_int = 0;
    let mut physical: libc::c_uint = 0;
    // SAFETY: `fd` is a valid open block device fd borrowed from `file`;
    // BLKSSZGET writes one `int` into `logical`, which lives across the call.
    let r1 = unsafe { libc::ioctl(fd, BLKSSZGET as _, &mut logical as *mut libc::c_int) };
    // SAFETY: as above; BLKPBSZGET writes one `unsigned int` into `physical`.
    let r2 = unsafe { libc::ioctl(fd, BLKPBSZGET as _, &mut physical as *mut libc::c_uint) };
    let mut limits = DEFAULT_LIMITS;
    if r1 == 0 && logical > 0 {
        limits.logical_block = logical as u32;
    }
    if r2 == 0 && physical > 0 {
        limits.physical_block = physical as u32;
    }
    limits.physical_block = limits.physical_block.max(limits.logical_block);
    limits
}
