//! Copy-on-write snapshots (spec VIII, \[0153\]–\[0167\]), in the spirit of
//! dm-snapshot's persistent exception store.
//!
//! A snapshot is a point-in-time image of an origin volume (\[0154\]) that never
//! changes once taken (\[0155\]). It is made of three objects (\[0156\], \[0161\]):
//! the origin (any [`BlockDev`], typically the T1 partition or the volume being
//! snapped), a COW device (any [`BlockDev`], e.g. a [`crate::Partition`] on an
//! ALU, possibly another ALU than the origin's, \[0165\]) holding both the *COW
//! copy* (old data of the chunks changed since the snapshot) and the *change
//! log* (the exception table mapping an origin chunk to its COW chunk), and the
//! shared in-memory [`SnapshotState`].
//!
//! * [`SnapshotOrigin`] wraps the origin and its active snapshots (several per
//!   origin, \[0167\]). Reads pass through. A write, write-zeroes or discard to a
//!   chunk not yet copied for some snapshot first copies the chunk's old data to
//!   that snapshot's COW device and commits the exception, then writes the
//!   origin (\[0156\] step 1208).
//! * [`SnapshotView`] is the snapshot device (\[0157\]): a chunk that changed is
//!   read from the COW device, any other chunk from the origin. Writes fail
//!   with `EROFS` (\[0155\]).
//! * [`rollback`] merges a snapshot back into the origin (restore, \[0167\]).
//!
//! # Commit protocol (dm-snapshot)
//!
//! Per origin write, per snapshot lacking some of its chunks: claim the chunks
//! (so no other queue copies them), copy each old origin chunk to a fresh COW
//! data chunk, **flush** the COW device, write the metadata block(s) holding the
//! new exceptions with **FUA**, insert them in the shared table, release the
//! claims, and only then write the origin. A crash anywhere leaves each
//! snapshot consistent: an exception whose metadata block is not durable (or
//! torn: its CRC fails) never committed, and its origin write never happened.
//!
//! # On-disk layout of the COW device
//!
//! All integers little endian; `B` = 4096 bytes, `C` = chunk size (a power of
//! two, 4 KiB ..= 16 MiB).
//!
//! ```text
//! [0, B)                       header
//! [B, B + N*B)                 metadata area: N slots of one block each
//! [data_start, +D*C)           data area: D chunks (data_start is C aligned)
//! ```
//!
//! `N = D` (a commit uses at least one data chunk, so slots never run out
//! first, short of slots wasted by crashes), with `D` the largest count for
//! which the layout fits the device ([`Geometry::compute`]). When either runs
//! out the snapshot is invalidated (dm-snapshot's overflow): the flag is
//! persisted in the header, its view fails reads with `EIO`, the origin keeps
//! working.
//!
//! The header is a single copy, rewritten only to invalidate or to empty the
//! store (after a [`rollback`]); a torn rewrite makes [`ExceptionStore::open`]
//! fail with [`StoreError::BadHeader`].
//!
//! Header block (byte offsets):
//!
//! | off  | size | field                                            |
//! |------|------|--------------------------------------------------|
//! | 0    | 8    | magic `"TBSNAPHD"`                               |
//! | 8    | 4    | version (1)                                      |
//! | 12   | 4    | flags: bit 0 = snapshot invalid (COW full/failed)|
//! | 16   | 4    | chunk size in bytes                              |
//! | 20   | 4    | reserved, 0                                      |
//! | 24   | 8    | snapshot id                                      |
//! | 32   | 8    | nonce: random per format, nonzero                |
//! | 40   | 8    | origin size in bytes (the snapshot's size)       |
//! | 48   | 8    | `N`, metadata slots                              |
//! | 56   | 8    | `data_start`, byte offset of the data area       |
//! | 64   | 8    | `D`, data chunks                                 |
//! | 72   | 4020 | zero                                             |
//! | 4092 | 4    | crc32c of bytes `[0, 4092)`                      |
//!
//! Metadata block in slot `s` (at byte `B * (1 + s)`), written once, append
//! only, never rewritten while the store lives:
//!
//! | off  | size   | field                                         |
//! |------|--------|-----------------------------------------------|
//! | 0    | 8      | magic `"TBSNAPEX"`                            |
//! | 8    | 8      | nonce (equals the header's)                   |
//! | 16   | 8      | sequence: the slot number `s`                 |
//! | 24   | 4      | entry count `n`, 1 ..= 253                    |
//! | 28   | 4      | reserved, 0                                   |
//! | 32   | 16 * n | entries: origin chunk u64, COW data chunk u64 |
//! | ...  |        | zero                                          |
//! | 4092 | 4      | crc32c of bytes `[0, 4092)`                   |
//!
//! Opening scans every slot and keeps every valid block (magic, CRC, nonce,
//! sequence = slot, entries in range); others are ignored, so a torn block (or
//! a hole left by two queues committing concurrently) only loses its own
//! uncommitted exceptions, and blocks of an earlier format (another nonce) never
//! come back. The next slot is the highest valid slot + 1, the next data chunk
//! the highest used + 1. A reformat (new nonce) empties the store in one header
//! write.
//!
//! # Sharing between queues
//!
//! [`SnapshotState`] (in an `Arc`) is shared by every queue's
//! [`SnapshotOrigin`]/[`SnapshotView`] of a volume: the exception table in
//! sharded mutexes (one short lock per chunk lookup, no allocation), the next
//! free slot and chunk (atomics), and sharded sets of chunks being copied. A
//! writer claims chunks in ascending order (deadlock free) and waits (yielding)
//! for a chunk another queue is copying, then finds it committed: each chunk is
//! copied once.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::mirror::backoff;
use crate::resync::{JobControl, Pacer};
use crate::{check_range, AlignedBuf, BlockDev, IoError, IoResult, Limits, ReadBuf, WriteBuf};

/// Size of the header and of each metadata block.
pub const BLOCK: u64 = 4096;
/// Header magic.
pub const HEADER_MAGIC: [u8; 8] = *b"TBSNAPHD";
/// Metadata block magic.
pub const META_MAGIC: [u8; 8] = *b"TBSNAPEX";
/// On-disk format version.
pub const VERSION: u32 = 1;
/// Exceptions per metadata block.
pub const ENTRIES_PER_BLOCK: usize = 253;
/// Smallest chunk size.
pub const MIN_CHUNK: u32 = 4096;
/// Largest chunk size.
pub const MAX_CHUNK: u32 = 16 << 20;
/// Default chunk size (64 KiB).
pub const DEFAULT_CHUNK: u32 = 64 << 10;

const CRC_OFF: usize = 4092;
const META_HDR: usize = 32;
const FLAG_INVALID: u32 = 1;
const SHARDS: usize = 16;
/// Slots read per I/O when opening.
const SCAN_BATCH: u64 = 64;

const ST_VALID: u8 = 0;
const ST_INVALIDATING: u8 = 1;
const ST_INVALID: u8 = 2;
const ST_FAILED: u8 = 3;

/// Why an exception store could not be formatted or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// I/O on the COW device failed.
    #[error("COW device I/O: {0}")]
    Io(IoError),
    /// The header block is not a valid snapshot header.
    #[error("bad snapshot header: {0}")]
    BadHeader(&'static str),
    /// Chunk size not a power of two in [`MIN_CHUNK`]..=[`MAX_CHUNK`].
    #[error("invalid chunk size {0}")]
    BadChunk(u32),
    /// The COW device cannot hold one data chunk.
    #[error("COW device of {0} bytes too small")]
    TooSmall(u64),
}

impl From<IoError> for StoreError {
    fn from(e: IoError) -> Self {
        StoreError::Io(e)
    }
}

/// Placement of the metadata and data areas on a COW device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Metadata slots (`N`).
    pub meta_slots: u64,
    /// Byte offset of the data area.
    pub data_start: u64,
    /// Data chunks (`D`).
    pub data_chunks: u64,
}

fn check_chunk(chunk: u32) -> Result<(), StoreError> {
    if chunk.is_power_of_two() && (MIN_CHUNK..=MAX_CHUNK).contains(&chunk) {
        Ok(())
    } else {
        Err(StoreError::BadChunk(chunk))
    }
}

impl Geometry {
    /// The largest layout with `N = D` fitting a COW device of `cow_size`
    /// bytes.
    pub fn compute(cow_size: u64, chunk_size: u32) -> Result<Geometry, StoreError> {
        check_chunk(chunk_size)?;
        let c = chunk_size as u64;
        let mut d = cow_size.saturating_sub(BLOCK) / (c + BLOCK);
        while d > 0 {
            let meta_end = BLOCK * (1 + d);
            let data_start = meta_end.div_ceil(c) * c;
            if data_start.saturating_add(d * c) <= cow_size {
                return Ok(Geometry {
                    chunk_size,
                    meta_slots: d,
                    data_start,
                    data_chunks: d,
                });
            }
            d -= 1;
        }
        Err(StoreError::TooSmall(cow_size))
    }

    /// Whether the geometry is self-consistent and fits `cow_size` bytes.
    fn fits(&self, cow_size: u64) -> bool {
        let c = self.chunk_size as u64;
        let meta_end = self
            .meta_slots
            .checked_add(1)
            .and_then(|n| n.checked_mul(BLOCK));
        let data_end = self
            .data_chunks
            .checked_mul(c)
            .and_then(|n| n.checked_add(self.data_start));
        matches!((meta_end, data_end), (Some(m), Some(e))
            if check_chunk(self.chunk_size).is_ok()
                && self.data_start.is_multiple_of(c)
                && m <= self.data_start
                && e <= cow_size
                && self.meta_slots >= self.data_chunks.min(1))
    }
}

/// The decoded header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreHeader {
    /// Snapshot id (the daemon's).
    pub snapshot_id: u64,
    /// Per-format random nonce.
    pub nonce: u64,
    /// Origin size, i.e. the snapshot's size, in bytes.
    pub origin_size: u64,
    /// Layout.
    pub geometry: Geometry,
    /// The snapshot was invalidated (COW full or failed).
    pub invalid: bool,
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn seal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..CRC_OFF]);
    block[CRC_OFF..CRC_OFF + 4].copy_from_slice(&crc.to_le_bytes());
}

fn sealed(block: &[u8]) -> bool {
    block.len() == BLOCK as usize && crc32c::crc32c(&block[..CRC_OFF]) == le32(block, CRC_OFF)
}

impl StoreHeader {
    /// Encode into a 4 KiB block.
    pub fn encode(&self, block: &mut [u8]) {
        block.fill(0);
        block[0..8].copy_from_slice(&HEADER_MAGIC);
        block[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.invalid { FLAG_INVALID } else { 0 };
        block[12..16].copy_from_slice(&flags.to_le_bytes());
        block[16..20].copy_from_slice(&self.geometry.chunk_size.to_le_bytes());
        block[24..32].copy_from_slice(&self.snapshot_id.to_le_bytes());
        block[32..40].copy_from_slice(&self.nonce.to_le_bytes());
        block[40..48].copy_from_slice(&self.origin_size.to_le_bytes());
        block[48..56].copy_from_slice(&self.geometry.meta_slots.to_le_bytes());
        block[56..64].copy_from_slice(&self.geometry.data_start.to_le_bytes());
        block[64..72].copy_from_slice(&self.geometry.data_chunks.to_le_bytes());
        seal(block);
    }

    /// Decode and validate a header block of a COW device of `cow_size`
    /// bytes. Never panics.
    pub fn decode(block: &[u8], cow_size: u64) -> Result<StoreHeader, StoreError> {
        if block.len() != BLOCK as usize || block[0..8] != HEADER_MAGIC {
            return Err(StoreError::BadHeader("magic"));
        }
        if !sealed(block) {
            return Err(StoreError::BadHeader("checksum"));
        }
        if le32(block, 8) != VERSION {
            return Err(StoreError::BadHeader("version"));
        }
        let flags = le32(block, 12);
        if flags & !FLAG_INVALID != 0 {
            return Err(StoreError::BadHeader("unknown flags"));
        }
        let h = StoreHeader {
            snapshot_id: le64(block, 24),
            nonce: le64(block, 32),
            origin_size: le64(block, 40),
            geometry: Geometry {
                chunk_size: le32(block, 16),
                meta_slots: le64(block, 48),
                data_start: le64(block, 56),
                data_chunks: le64(block, 64),
            },
            invalid: flags & FLAG_INVALID != 0,
        };
        if h.nonce == 0 {
            return Err(StoreError::BadHeader("nonce"));
        }
        if !h.geometry.fits(cow_size) {
            return Err(StoreError::BadHeader("geometry"));
        }
        Ok(h)
    }
}

/// Encode the metadata block of `slot` holding `entries` (1 ..=
/// [`ENTRIES_PER_BLOCK`]).
fn encode_meta(block: &mut [u8], nonce: u64, slot: u64, entries: &[(u64, u64)]) {
    debug_assert!(!entries.is_empty() && entries.len() <= ENTRIES_PER_BLOCK);
    block.fill(0);
    block[0..8].copy_from_slice(&META_MAGIC);
    block[8..16].copy_from_slice(&nonce.to_le_bytes());
    block[16..24].copy_from_slice(&slot.to_le_bytes());
    block[24..28].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, &(o, c)) in entries.iter().enumerate() {
        let at = META_HDR + 16 * i;
        block[at..at + 8].copy_from_slice(&o.to_le_bytes());
        block[at + 8..at + 16].copy_from_slice(&c.to_le_bytes());
    }
    seal(block);
}

/// The entries of a valid metadata block of `slot`, or `None`. Never panics.
fn decode_meta(
    block: &[u8],
    nonce: u64,
    slot: u64,
    origin_chunks: u64,
    data_chunks: u64,
) -> Option<impl Iterator<Item = (u64, u64)> + '_> {
    if block.len() != BLOCK as usize
        || block[0..8] != META_MAGIC
        || !sealed(block)
        || le64(block, 8) != nonce
        || le64(block, 16) != slot
    {
        return None;
    }
    let n = le32(block, 24) as usize;
    if n == 0 || n > ENTRIES_PER_BLOCK {
        return None;
    }
    let entries = (0..n).map(move |i| {
        let at = META_HDR + 16 * i;
        (le64(block, at), le64(block, at + 8))
    });
    if entries
        .clone()
        .any(|(o, c)| o >= origin_chunks || c >= data_chunks)
    {
        return None;
    }
    Some(entries)
}

fn new_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    x.max(1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The in-memory state of one snapshot, shared (in an `Arc`) by every queue
/// thread's [`SnapshotOrigin`] and [`SnapshotView`] of the volume and by
/// [`rollback`]. Built by [`ExceptionStore::format`] or
/// [`ExceptionStore::open`].
pub struct SnapshotState {
    snapshot_id: u64,
    origin_size: u64,
    geometry: Geometry,
    chunk_shift: u32,
    nonce: AtomicU64,
    status: AtomicU8,
    table: [Mutex<HashMap<u64, u64>>; SHARDS],
    inflight: [Mutex<HashSet<u64>>; SHARDS],
    next_slot: AtomicU64,
    next_chunk: AtomicU64,
    exceptions: AtomicU64,
    copied: AtomicU64,
}

impl std::fmt::Debug for SnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotState")
            .field("id", &self.snapshot_id)
            .field("origin_size", &self.origin_size)
            .field("geometry", &self.geometry)
            .field("exceptions", &self.exception_count())
            .field("invalid", &self.is_invalid())
            .finish()
    }
}

impl SnapshotState {
    fn new(h: &StoreHeader) -> Self {
        SnapshotState {
            snapshot_id: h.snapshot_id,
            origin_size: h.origin_size,
            geometry: h.geometry,
            chunk_shift: h.geometry.chunk_size.trailing_zeros(),
            nonce: AtomicU64::new(h.nonce),
            status: AtomicU8::new(if h.invalid { ST_INVALID } else { ST_VALID }),
            table: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            inflight: std::array::from_fn(|_| Mutex::new(HashSet::new())),
            next_slot: AtomicU64::new(0),
            next_chunk: AtomicU64::new(0),
            exceptions: AtomicU64::new(0),
            copied: AtomicU64::new(0),
        }
    }

    /// The snapshot id stored in the header.
    pub fn snapshot_id(&self) -> u64 {
        self.snapshot_id
    }

    /// The snapshot's size (the origin's size when it was taken).
    pub fn origin_size(&self) -> u64 {
        self.origin_size
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.geometry.chunk_size as u64
    }

    /// Layout of the COW device.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Committed exceptions (chunks of the origin changed since the snapshot).
    pub fn exception_count(&self) -> u64 {
        self.exceptions.load(Ordering::SeqCst)
    }

    /// Chunks copied to the COW device by this process (a statistic).
    pub fn copied_chunks(&self) -> u64 {
        self.copied.load(Ordering::SeqCst)
    }

    /// Data chunks used on the COW device (including ones wasted by a crash).
    pub fn used_chunks(&self) -> u64 {
        self.next_chunk.load(Ordering::SeqCst)
    }

    /// Whether the snapshot was invalidated (COW full or failing): its view
    /// fails every read with `EIO` and the origin no longer copies for it.
    pub fn is_invalid(&self) -> bool {
        self.status.load(Ordering::SeqCst) != ST_VALID
    }

    /// The COW data chunk holding origin chunk `chunk`, if it changed.
    pub fn lookup(&self, chunk: u64) -> Option<u64> {
        lock(&self.table[chunk as usize % SHARDS])
            .get(&chunk)
            .copied()
    }

    /// Every exception `(origin chunk, COW chunk)`, sorted by origin chunk.
    pub fn exceptions(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .table
            .iter()
            .flat_map(|s| lock(s).iter().map(|(&o, &c)| (o, c)).collect::<Vec<_>>())
            .collect();
        v.sort_unstable();
        v
    }

    fn origin_chunks(&self) -> u64 {
        self.origin_size.div_ceil(self.chunk_size())
    }

    /// Length of origin chunk `chunk` (the last one may be partial).
    fn chunk_len(&self, chunk: u64) -> u64 {
        let start = chunk << self.chunk_shift;
        self.chunk_size().min(self.origin_size - start)
    }

    fn data_offset(&self, cow_chunk: u64) -> u64 {
        self.geometry.data_start + (cow_chunk << self.chunk_shift)
    }

    fn header(&self, invalid: bool) -> StoreHeader {
        StoreHeader {
            snapshot_id: self.snapshot_id,
            nonce: self.nonce.load(Ordering::SeqCst),
            origin_size: self.origin_size,
            geometry: self.geometry,
            invalid,
        }
    }

    fn insert(&self, origin_chunk: u64, cow_chunk: u64) -> bool {
        let fresh = lock(&self.table[origin_chunk as usize % SHARDS])
            .insert(origin_chunk, cow_chunk)
            .is_none();
        if fresh {
            self.exceptions.fetch_add(1, Ordering::SeqCst);
        }
        fresh
    }

    fn try_claim(&self, chunk: u64) -> bool {
        lock(&self.inflight[chunk as usize % SHARDS]).insert(chunk)
    }

    fn release(&self, chunk: u64) {
        lock(&self.inflight[chunk as usize % SHARDS]).remove(&chunk);
    }

    /// Reserve `n` consecutive units of `counter` below `limit`.
    fn alloc(counter: &AtomicU64, n: u64, limit: u64) -> Option<u64> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                v.checked_add(n).filter(|&e| e <= limit)
            })
            .ok()
    }

    /// Persistently invalidate the snapshot before it is dropped from its
    /// origin: once the origin stops copying for it, a crash must not bring it
    /// back as a valid image of a changed origin.
    pub async fn retire<C: BlockDev>(&self, cow: &C) -> IoResult<()> {
        let why = IoError::new(libc::ECANCELED, "snapshot removal", 0, 0);
        self.invalidate(cow, &why).await?;
        if self.status.load(Ordering::SeqCst) == ST_INVALID {
            Ok(())
        } else {
            Err(IoError::new(libc::EIO, "snapshot removal", 0, 0))
        }
    }

    /// Invalidate the snapshot (dm-snapshot: COW full or failing) and persist
    /// the flag. Origin writes keep going without copying for it; if the flag
    /// cannot be persisted they fail instead (a crash would otherwise reopen a
    /// "valid" snapshot over a changed origin).
    async fn invalidate<C: BlockDev>(&self, cow: &C, why: &IoError) -> IoResult<()> {
        let mut spins = 0;
        loop {
            match self.status.compare_exchange(
                ST_VALID,
                ST_INVALIDATING,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(ST_INVALIDATING) => backoff(&mut spins).await,
                Err(ST_INVALID) => return Ok(()),
                Err(_) => return Err(IoError::new(libc::EIO, "snapshot", 0, 0)),
            }
        }
        tracing::error!(snapshot = self.snapshot_id, error = %why, "snapshot invalidated");
        let mut block = AlignedBuf::new(BLOCK as usize);
        self.header(true).encode(&mut block);
        match cow.write(0, &block, true).await {
            Ok(()) => {
                self.status.store(ST_INVALID, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                tracing::error!(snapshot = self.snapshot_id, error = %e,
                    "cannot persist snapshot invalidation; origin writes fail");
                self.status.store(ST_FAILED, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

/// The persistent exception store (format and open). The store itself lives
/// on the COW device; its in-memory image is the [`SnapshotState`].
pub struct ExceptionStore;

impl ExceptionStore {
    /// Format `cow` as an empty store for a snapshot `snapshot_id` of an origin
    /// of `origin_size` bytes with `chunk_size`-byte chunks: one header write
    /// with FUA (a fresh nonce voids any earlier metadata blocks).
    pub async fn format<C: BlockDev>(
        cow: &C,
        chunk_size: u32,
        snapshot_id: u64,
        origin_size: u64,
    ) -> Result<Arc<SnapshotState>, StoreError> {
        let geometry = Geometry::compute(cow.size(), chunk_size)?;
        let h = StoreHeader {
            snapshot_id,
            nonce: new_nonce(),
            origin_size,
            geometry,
            invalid: false,
        };
        let mut block = AlignedBuf::new(BLOCK as usize);
        h.encode(&mut block);
        cow.write(0, &block, true).await?;
        Ok(Arc::new(SnapshotState::new(&h)))
    }

    /// Open the store on `cow`: decode the header and rebuild the exception
    /// table from every valid metadata block (invalid ones, e.g. torn by a
    /// crash, are ignored: they never committed).
    pub async fn open<C: BlockDev>(cow: &C) -> Result<Arc<SnapshotState>, StoreError> {
        let mut block = AlignedBuf::new(BLOCK as usize);
        cow.read(0, &mut block).await?;
        let h = StoreHeader::decode(&block, cow.size())?;
        let st = SnapshotState::new(&h);
        let (origin_chunks, data_chunks) = (st.origin_chunks(), h.geometry.data_chunks);
        let mut next_slot = 0u64;
        let mut next_chunk = 0u64;
        let mut buf = AlignedBuf::new((SCAN_BATCH * BLOCK) as usize);
        let mut slot = 0u64;
        while slot < h.geometry.meta_slots {
            let n = SCAN_BATCH.min(h.geometry.meta_slots - slot);
            let bytes = &mut buf[..(n * BLOCK) as usize];
            cow.read(BLOCK * (1 + slot), bytes).await?;
            for (i, blk) in bytes.chunks_exact(BLOCK as usize).enumerate() {
                let s = slot + i as u64;
                if let Some(entries) = decode_meta(blk, h.nonce, s, origin_chunks, data_chunks) {
                    next_slot = s + 1;
                    for (o, c) in entries {
                        // The first commit of a chunk wins (never two by
                        // protocol).
                        if st.lookup(o).is_none() {
                            st.insert(o, c);
                        }
                        next_chunk = next_chunk.max(c + 1);
                    }
                }
            }
            slot += n;
        }
        st.next_slot.store(next_slot, Ordering::SeqCst);
        st.next_chunk.store(next_chunk, Ordering::SeqCst);
        Ok(Arc::new(st))
    }
}

/// One snapshot of an origin as seen by [`SnapshotOrigin`]: its COW device
/// (this queue's instance) and shared state.
pub struct Snapshot<C: BlockDev> {
    cow: C,
    state: Arc<SnapshotState>,
}

impl<C: BlockDev> Snapshot<C> {
    /// Pair a COW device with the snapshot's shared state.
    pub fn new(cow: C, state: Arc<SnapshotState>) -> Self {
        Snapshot { cow, state }
    }

    /// The COW device.
    pub fn cow(&self) -> &C {
        &self.cow
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<SnapshotState> {
        &self.state
    }
}

/// Make sure every chunk of `[offset, offset + len)` of the origin has an
/// exception in `snap` (copy + commit), before the origin is written there.
async fn protect<D: BlockDev, C: BlockDev>(
    origin: &D,
    snap: &Snapshot<C>,
    offset: u64,
    len: u64,
) -> IoResult<()> {
    let st = &*snap.state;
    if len == 0 || offset >= st.origin_size {
        return Ok(());
    }
    let end = offset.saturating_add(len).min(st.origin_size);
    let (first, last) = (offset >> st.chunk_shift, (end - 1) >> st.chunk_shift);
    let mut claimed: Vec<u64> = Vec::new();
    let mut spins = 0;
    let mut c = first;
    let status = loop {
        match st.status.load(Ordering::SeqCst) {
            ST_VALID => {}
            ST_INVALIDATING => {
                backoff(&mut spins).await;
                continue;
            }
            s => break s,
        }
        if c > last {
            break ST_VALID;
        }
        if st.lookup(c).is_some() {
            c += 1;
        } else if st.try_claim(c) {
            // Re-check: the chunk may have committed between the lookup and
            // the claim (its claim is released after the table insert).
            if st.lookup(c).is_some() {
                st.release(c);
            } else {
                claimed.push(c);
            }
            c += 1;
        } else {
            // Another queue is copying this chunk: wait for its commit.
            backoff(&mut spins).await;
        }
    };
    let res = match status {
        ST_VALID if !claimed.is_empty() => commit(origin, snap, &claimed).await,
        ST_FAILED => Err(IoError::new(libc::EIO, "write", offset, len)),
        _ => Ok(()),
    };
    for &c in &claimed {
        st.release(c);
    }
    res
}

/// Copy the `claimed` origin chunks to fresh COW chunks, flush, commit their
/// metadata with FUA, and publish them in the table.
async fn commit<D: BlockDev, C: BlockDev>(
    origin: &D,
    snap: &Snapshot<C>,
    claimed: &[u64],
) -> IoResult<()> {
    let (st, cow) = (&*snap.state, &snap.cow);
    let n = claimed.len() as u64;
    let groups = n.div_ceil(ENTRIES_PER_BLOCK as u64);
    let g = st.geometry;
    let nospc = IoError::new(libc::ENOSPC, "snapshot copy", 0, st.chunk_size() * n);
    let Some(first_chunk) = SnapshotState::alloc(&st.next_chunk, n, g.data_chunks) else {
        return st.invalidate(cow, &nospc).await;
    };
    let Some(first_slot) = SnapshotState::alloc(&st.next_slot, groups, g.meta_slots) else {
        return st.invalidate(cow, &nospc).await;
    };
    let mut buf = AlignedBuf::new(st.chunk_size() as usize);
    let mut entries = Vec::with_capacity(claimed.len());
    for (i, &c) in claimed.iter().enumerate() {
        let cow_chunk = first_chunk + i as u64;
        let data = &mut buf[..st.chunk_len(c) as usize];
        // An origin read error fails the host write; nothing was committed.
        origin.read(c << st.chunk_shift, data).await?;
        if let Err(e) = cow.write(st.data_offset(cow_chunk), data, false).await {
            return st.invalidate(cow, &e).await;
        }
        entries.push((c, cow_chunk));
    }
    if let Err(e) = cow.flush().await {
        return st.invalidate(cow, &e).await;
    }
    let mut block = AlignedBuf::new(BLOCK as usize);
    let nonce = st.nonce.load(Ordering::SeqCst);
    for (k, group) in entries.chunks(ENTRIES_PER_BLOCK).enumerate() {
        let slot = first_slot + k as u64;
        encode_meta(&mut block, nonce, slot, group);
        if let Err(e) = cow.write(BLOCK * (1 + slot), &block, true).await {
            return st.invalidate(cow, &e).await;
        }
    }
    for &(o, c) in &entries {
        st.insert(o, c);
    }
    st.copied.fetch_add(n, Ordering::SeqCst);
    Ok(())
}

/// The snapshots of one origin volume, shared (in an `Arc`) by every queue's
/// [`SnapshotOrigin`] and changed by the daemon while the origin is online.
///
/// Each entry is the snapshot's id (the daemon's: its volume id), a key `K`
/// (what a queue needs to build its own instance of the COW device, e.g. a
/// volume description) and the snapshot's shared state. A change bumps the
/// generation; a queue sees it at its next write and rebuilds its list (off
/// the hot path: only after a change). The daemon changes the set only while
/// the origin's [`crate::gate::Gate`] is suspended, so no write is between
/// "checked the snapshots" and "wrote the origin" when a snapshot appears:
/// that suspension is the snapshot's point in time (\[0154\]).
pub struct SnapshotSet<K> {
    generation: AtomicU64,
    entries: Mutex<Vec<SetEntry<K>>>,
}

/// One snapshot in a [`SnapshotSet`]: `(id, key, state)`.
pub type SetEntry<K> = (u64, K, Arc<SnapshotState>);

impl<K: Clone> SnapshotSet<K> {
    /// A set holding `entries`.
    pub fn new(entries: Vec<SetEntry<K>>) -> Arc<Self> {
        Arc::new(SnapshotSet {
            generation: AtomicU64::new(1),
            entries: Mutex::new(entries),
        })
    }

    /// Bumped by every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The current entries.
    pub fn entries(&self) -> Vec<SetEntry<K>> {
        lock(&self.entries).clone()
    }

    /// Add snapshot `id` (its store formatted, i.e. empty), replacing an
    /// entry with the same id.
    pub fn insert(&self, id: u64, key: K, state: Arc<SnapshotState>) {
        let mut e = lock(&self.entries);
        e.retain(|(i, _, _)| *i != id);
        e.push((id, key, state));
        drop(e);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Drop snapshot `id`; whether it was there.
    pub fn remove(&self, id: u64) -> bool {
        let mut e = lock(&self.entries);
        let before = e.len();
        e.retain(|(i, _, _)| *i != id);
        let removed = e.len() != before;
        drop(e);
        self.generation.fetch_add(1, Ordering::SeqCst);
        removed
    }

    /// The key and state of snapshot `id`.
    pub fn get(&self, id: u64) -> Option<(K, Arc<SnapshotState>)> {
        lock(&self.entries)
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, k, s)| (k.clone(), s.clone()))
    }
}

/// Builds one queue's instance of a snapshot's COW device from its key.
pub type MakeCow<K, C> = Box<dyn Fn(&K) -> Result<C, String>>;

/// The origin of one or more snapshots (\[0156\] step 1208, \[0167\]): reads pass
/// through; writes, write-zeroes and discards first copy the old data of every
/// chunk some snapshot still shares with the origin.
///
/// Its snapshot list is either fixed ([`SnapshotOrigin::new`]) or follows a
/// shared [`SnapshotSet`] that changes online ([`SnapshotOrigin::dynamic`],
/// one instance per queue). Per write the dynamic case costs one atomic load
/// (the set's generation) and one non-atomic reference count; with no
/// snapshot the origin is a pass-through.
pub struct SnapshotOrigin<D: BlockDev, C: BlockDev, K = ()> {
    origin: D,
    /// The shared set followed (dynamic) and how to build a COW device.
    set: Option<Follow<K, C>>,
    /// The set's generation the list was built from, and this queue's
    /// instances.
    local: RefCell<(u64, Rc<Vec<Snapshot<C>>>)>,
}

/// What a dynamic [`SnapshotOrigin`] follows.
struct Follow<K, C> {
    set: Arc<SnapshotSet<K>>,
    make: MakeCow<K, C>,
}

impl<D: BlockDev, C: BlockDev> SnapshotOrigin<D, C> {
    /// The origin device with a fixed list of active snapshots.
    pub fn new(origin: D, snaps: Vec<Snapshot<C>>) -> Self {
        SnapshotOrigin {
            origin,
            set: None,
            local: RefCell::new((0, Rc::new(snaps))),
        }
    }
}

impl<D: BlockDev, C: BlockDev, K: Clone> SnapshotOrigin<D, C, K> {
    /// `origin` with the snapshots of `set`, each COW device built (on this
    /// queue) by `make`.
    pub fn dynamic(origin: D, set: Arc<SnapshotSet<K>>, make: MakeCow<K, C>) -> Self {
        SnapshotOrigin {
            origin,
            set: Some(Follow { set, make }),
            local: RefCell::new((0, Rc::new(Vec::new()))),
        }
    }

    /// The origin device.
    pub fn origin(&self) -> &D {
        &self.origin
    }

    /// This queue's snapshot list, rebuilt if the shared set changed.
    pub fn snapshots(&self) -> IoResult<Rc<Vec<Snapshot<C>>>> {
        let Some(Follow { set, make }) = &self.set else {
            return Ok(self.local.borrow().1.clone());
        };
        let generation = set.generation();
        let mut local = self.local.borrow_mut();
        if local.0 != generation {
            let mut snaps = Vec::new();
            for (id, key, state) in set.entries() {
                let cow = make(&key).map_err(|e| {
                    tracing::error!(snapshot = id, error = %e,
                        "cannot build the COW device; failing the write");
                    IoError::new(libc::EIO, "snapshot COW device", 0, 0)
                })?;
                snaps.push(Snapshot::new(cow, state));
            }
            *local = (generation, Rc::new(snaps));
        }
        Ok(local.1.clone())
    }

    async fn protect_all(&self, offset: u64, len: u64) -> IoResult<()> {
        let snaps = self.snapshots()?;
        for s in snaps.iter() {
            protect(&self.origin, s, offset, len).await?;
        }
        Ok(())
    }
}

impl<D: BlockDev, C: BlockDev, K: Clone> BlockDev for SnapshotOrigin<D, C, K> {
    fn size(&self) -> u64 {
        self.origin.size()
    }

    fn limits(&self) -> Limits {
        self.origin.limits()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.origin.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    async fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> IoResult<()> {
        self.origin.read_to(offset, buf).await
    }

    /// Copy what the write would overwrite to every snapshot lacking it,
    /// then write. Served again after a refusal of `buf`
    /// ([`IoError::needs_bytes`]), the copies already made are kept.
    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        check_range("write", offset, buf.len() as u64, self.size())?;
        self.protect_all(offset, buf.len() as u64).await?;
        self.origin.write_from(offset, buf, fua).await
    }

    // The copies of old data go through buffers of their own
    // (`protect_all`): the host's data only passes through to the origin.
    fn fixed(&self) -> bool {
        self.origin.fixed()
    }

    async fn flush(&self) -> IoResult<()> {
        self.origin.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("discard", offset, len, self.size())?;
        self.protect_all(offset, len).await?;
        self.origin.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("write_zeroes", offset, len, self.size())?;
        self.protect_all(offset, len).await?;
        self.origin.write_zeroes(offset, len).await
    }
}

/// The read-only snapshot device (\[0155\], \[0157\]).
pub struct SnapshotView<D: BlockDev, C: BlockDev> {
    origin: D,
    cow: C,
    state: Arc<SnapshotState>,
}

impl<D: BlockDev, C: BlockDev> SnapshotView<D, C> {
    /// The snapshot of `origin` whose COW device is `cow`.
    pub fn new(origin: D, cow: C, state: Arc<SnapshotState>) -> Self {
        SnapshotView { origin, cow, state }
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<SnapshotState> {
        &self.state
    }

    fn usable(&self, offset: u64, len: u64) -> IoResult<()> {
        if self.state.is_invalid() {
            Err(IoError::new(libc::EIO, "read", offset, len))
        } else {
            Ok(())
        }
    }
}

impl<D: BlockDev, C: BlockDev> BlockDev for SnapshotView<D, C> {
    fn size(&self) -> u64 {
        self.state.origin_size
    }

    fn limits(&self) -> Limits {
        Limits {
            discard: false,
            write_zeroes: false,
            ..self.origin.limits()
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    /// Read chunk by chunk, each from the COW device if it was copied there,
    /// else from the origin.
    async fn read_to(&self, offset: u64, mut buf: ReadBuf<'_>) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("read", offset, len, self.size())?;
        self.usable(offset, len)?;
        let st = &*self.state;
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let chunk = pos >> st.chunk_shift;
            let within = pos & (st.chunk_size() - 1);
            let n = (st.chunk_size() - within).min(len - done);
            let mut piece = buf.part(done as usize, n as usize);
            let cow_chunk = match st.lookup(chunk) {
                Some(c) => Some(c),
                None => {
                    self.origin.read_to(pos, piece.part(0, n as usize)).await?;
                    // The chunk may have been copied and the origin
                    // overwritten while we read it: the table insert precedes
                    // the origin write, so re-checking tells.
                    st.lookup(chunk)
                }
            };
            if let Some(c) = cow_chunk {
                self.cow.read_to(st.data_offset(c) + within, piece).await?;
            }
            done += n;
        }
        // Invalidated meanwhile: the origin may have changed uncopied.
        self.usable(offset, len)
    }

    fn fixed(&self) -> bool {
        self.origin.fixed() && self.cow.fixed()
    }

    async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> IoResult<()> {
        Err(IoError::new(libc::EROFS, "write", offset, buf.len() as u64))
    }

    async fn flush(&self) -> IoResult<()> {
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        Err(IoError::new(libc::EROFS, "discard", offset, len))
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        Err(IoError::new(libc::EROFS, "write_zeroes", offset, len))
    }
}

/// Why a [`rollback`] stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    /// Cancelled at a chunk boundary. The snapshot is intact, the origin
    /// partly restored: run the rollback again (from `checkpoint`) to finish.
    #[error("rollback cancelled at checkpoint {checkpoint}")]
    Cancelled {
        /// Bytes of the merge done (a multiple of the chunk size).
        checkpoint: u64,
    },
    /// The snapshot is invalid: it cannot be restored.
    #[error("snapshot is invalid")]
    Invalid,
    /// An I/O error; the snapshot is intact, the rollback may be retried.
    #[error("rollback I/O: {0}")]
    Io(IoError),
}

impl From<IoError> for RollbackError {
    fn from(e: IoError) -> Self {
        RollbackError::Io(e)
    }
}

/// Restore the origin to the snapshot image (\[0167\]): copy every excepted
/// chunk from the COW device of `snap` back to `target`, flush `target`, then
/// empty the snapshot (reformat: new nonce, one header write with FUA). Returns
/// the number of chunks merged.
///
/// `target` is the origin as written by the daemon: the raw origin, or a
/// [`SnapshotOrigin`] over the origin's other snapshots (which then keep their
/// images; `snap` itself may be among them: its chunks being merged are all
/// excepted, so nothing is copied for it). The origin's host I/O must be
/// stopped for the duration (the daemon keeps the origin offline); views may
/// be read meanwhile (an excepted chunk comes from the COW device until the
/// store is emptied, when the origin already holds the image). Afterwards the
/// snapshot is empty (equal to the origin) and still active.
///
/// Progress is counted in bytes of chunks merged (`chunk size` per
/// exception, in origin-chunk order) through `ctl`, which also throttles and
/// checkpoints the job like a rebuild. The rollback is idempotent: after a
/// cancel, an error or a crash, run it again, from 0 or from the last
/// checkpoint `from` (the exception table does not change while the origin
/// is offline, so the order is the same).
pub async fn rollback<O: BlockDev, C: BlockDev>(
    target: &O,
    snap: &Snapshot<C>,
    ctl: &JobControl,
    from: u64,
) -> Result<u64, RollbackError> {
    let st = &*snap.state;
    if st.is_invalid() {
        return Err(RollbackError::Invalid);
    }
    let exceptions = st.exceptions();
    let chunk = st.chunk_size();
    let skip = (from / chunk).min(exceptions.len() as u64);
    let mut pacer = Pacer::new(ctl, skip * chunk);
    let mut buf = AlignedBuf::new(chunk as usize);
    for (i, &(o, c)) in exceptions.iter().enumerate().skip(skip as usize) {
        if ctl.is_cancelled() {
            let checkpoint = i as u64 * chunk;
            pacer.finish(checkpoint);
            return Err(RollbackError::Cancelled { checkpoint });
        }
        let data = &mut buf[..st.chunk_len(o) as usize];
        snap.cow.read(st.data_offset(c), data).await?;
        target.write(o << st.chunk_shift, data, false).await?;
        let pos = (i as u64 + 1) * chunk;
        if pacer.due(pos) {
            // A checkpoint is a promise that everything before it is durable.
            target.flush().await?;
        }
        pacer.advance(pos);
    }
    target.flush().await?;
    // Empty the store: a fresh nonce voids every metadata block.
    let mut h = st.header(false);
    h.nonce = new_nonce();
    let mut block = AlignedBuf::new(BLOCK as usize);
    h.encode(&mut block);
    snap.cow.write(0, &block, true).await?;
    st.nonce.store(h.nonce, Ordering::SeqCst);
    for shard in &st.table {
        lock(shard).clear();
    }
    st.exceptions.store(0, Ordering::SeqCst);
    st.next_slot.store(0, Ordering::SeqCst);
    st.next_chunk.store(0, Ordering::SeqCst);
    pacer.finish(exceptions.len() as u64 * chunk);
    Ok(exceptions.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/FORMAT.md documents the store as encoded here.
    #[test]
    fn format_doc_matches_store_layout() {
        let doc = include_str!("../../docs/FORMAT.md");
        for row in [
            format!(
                "| 0 | 8 | magic `{}` |",
                std::str::from_utf8(&HEADER_MAGIC).unwrap()
            ),
            format!(
                "| 0 | 8 | magic `{}` |",
                std::str::from_utf8(&META_MAGIC).unwrap()
            ),
            format!("| 8 | 4 | version ({VERSION}) |"),
            format!("| 24 | 4 | entry count n, 1..={ENTRIES_PER_BLOCK} |"),
            format!("| {META_HDR} | 16·n | entries: origin chunk u64, COW data chunk u64 |"),
            format!("| {CRC_OFF} | 4 | crc32c of bytes [0, {CRC_OFF}) |"),
        ] {
            assert!(doc.contains(&row), "FORMAT.md lacks {row}");
        }
        // Field offsets of an encoded header.
        let h = StoreHeader {
            snapshot_id: 0x0101,
            nonce: 0x0202,
            origin_size: 0x0303,
            geometry: Geometry {
                chunk_size: 4096,
                meta_slots: 0x0404,
                data_start: 0x0505,
                data_chunks: 0x0606,
            },
            invalid: true,
        };
        let mut b = vec![0u8; BLOCK as usize];
        h.encode(&mut b);
        let u = |o: usize| le64(&b, o);
        assert_eq!(
            (u(24), u(32), u(40), u(48), u(56), u(64)),
            (0x0101, 0x0202, 0x0303, 0x0404, 0x0505, 0x0606)
        );
        assert_eq!((le32(&b, 12), le32(&b, 16)), (FLAG_INVALID, 4096));
    }

    #[test]
    fn geometry_fits_and_is_maximal() {
        for &(size, chunk) in &[
            (1u64 << 20, 4096u32),
            (1 << 20, 65536),
            (10 << 20, 65536),
            (8192 + 4096 * 3, 4096),
        ] {
            let g = Geometry::compute(size, chunk).unwrap();
            assert!(g.fits(size), "{g:?}");
            assert_eq!(g.meta_slots, g.data_chunks);
            let c = chunk as u64;
            let bigger = (BLOCK * (g.data_chunks + 2)).div_ceil(c) * c + (g.data_chunks + 1) * c;
            assert!(bigger > size, "{g:?} not maximal for {size}");
        }
        assert_eq!(
            Geometry::compute(4096 + 4096, 4096),
            Err(StoreError::TooSmall(8192))
        );
        assert_eq!(
            Geometry::compute(1 << 20, 3000),
            Err(StoreError::BadChunk(3000))
        );
    }

    #[test]
    fn header_and_meta_roundtrip_and_reject_damage() {
        let g = Geometry::compute(1 << 20, 8192).unwrap();
        let h = StoreHeader {
            snapshot_id: 7,
            nonce: 99,
            origin_size: 1 << 19,
            geometry: g,
            invalid: false,
        };
        let mut b = vec![0u8; BLOCK as usize];
        h.encode(&mut b);
        assert_eq!(StoreHeader::decode(&b, 1 << 20), Ok(h));
        assert!(StoreHeader::decode(&b, (1 << 20) - 4096).is_err());
        b[100] ^= 1;
        assert!(StoreHeader::decode(&b, 1 << 20).is_err());

        let entries: Vec<(u64, u64)> = (0..ENTRIES_PER_BLOCK as u64).map(|i| (i, i)).collect();
        encode_meta(&mut b, 99, 3, &entries);
        let got: Vec<_> = decode_meta(&b, 99, 3, 1000, 1000).unwrap().collect();
        assert_eq!(got, entries);
        assert!(decode_meta(&b, 98, 3, 1000, 1000).is_none());
        assert!(decode_meta(&b, 99, 4, 1000, 1000).is_none());
        assert!(decode_meta(&b, 99, 3, 10, 1000).is_none());
        assert!(decode_meta(&b[..100], 99, 3, 1000, 1000).is_none());
    }
}
