//! Write-intent bitmap for mirrors (MD's write-intent bitmap; the failure
//! handling of spec [0169]: a mirrored pair whose leg failed is managed "without
//! disruption of the volume or the loss of data", and the leg that comes back
//! is brought up to date).
//!
//! Without a bitmap, a mirror whose legs may differ — after a crash with writes
//! in flight, or when a failed leg returns — must be compared or copied in
//! full. The bitmap divides each leg into *regions* (1 MiB or more, see
//! [`region_size_for`]) and keeps one bit per region, persisted in one 4 KiB
//! block per leg (a *copy*, in the write-intent area of the metadata region of
//! the leg's ALU, `docs/FORMAT.md` "Write-intent area"):
//!
//! * **Set before writing.** A host write, write-zeroes or discard through
//!   [`Mirror`](crate::Mirror) makes every touched region's bit set *and
//!   durable* before any leg sees it (after the sync window, see
//!   [`MirrorHealth`]): a region whose bit is already on disk costs two atomic
//!   loads per region and nothing else (no lock, no allocation); otherwise the
//!   bits are set in memory and the block is written, with FUA, to every
//!   working leg's copy. One writer persists at a time (a flag, not a lock:
//!   waiters back off asynchronously); the others wait until a write that
//!   captured their generation is durable, so concurrent first writes share
//!   one block write (group commit). When every copy fails the host write fails
//!   with `EIO` — the legs are never written unmarked; a copy that fails fails
//!   its leg (as MD fails a device whose superblock or bitmap write fails).
//! * **Cleared lazily.** [`WriteIntent::sweep`], called periodically by the
//!   daemon off the queue threads, clears the bits of regions that stayed idle
//!   over two consecutive sweeps (MD's two-pass bitmap daemon) and persists
//!   them. Never while a leg is failed or rebuilding (the returning leg needs
//!   the bits) and never while a crash resync is pending.
//! * **Resync only what is set.** [`WriteIntent::load`] takes the union of the
//!   valid copies (a torn, stale, foreign or missing copy only lacks bits another
//!   copy has; none valid means every region is dirty). After a crash
//!   [`crate::resync::resync_dirty`] copies the set regions from the first
//!   healthy leg to the others (reads of set regions go to that leg meanwhile,
//!   as MD reads from the first disk during resync, so a host never sees a block
//!   change under it); after a failed leg's return it copies them onto the
//!   returning leg only.
//!
//! Why the lazy clear cannot lose a bit (all accesses SeqCst):
//!
//! * A writer, in this order: increments the in-flight counters of its
//!   regions (the sync window's, [`MirrorHealth`]), loads `ondisk` (bits known
//!   to be on disk), and only if a bit is missing sets it in `bits`, bumps
//!   `dirty_gen` and waits for a block write that captured that generation.
//! * A clear, in this order: clears the region in `ondisk`, then in `bits`,
//!   then loads the region's in-flight counters and the legs' health; if a
//!   write is in flight (or a leg is not healthy) it sets the bit back.
//! * Dekker: if the writer's `ondisk` load came before the clear, its counter
//!   increment did too, so the clear's counter load sees it and restores the
//!   bit; otherwise the writer sees the bit missing and persists it itself
//!   before any leg I/O. A write that failed a leg marks the leg failed before
//!   its counter drops, so a clear that sees the counter at zero sees the
//!   failure too.
//! * The clearing pass holds the persist flag from its first clear until its
//!   own block write completed, so no other block write can snapshot a bit in
//!   the instant between a clear and its restoration.
//! * A block write loads `dirty_gen` *before* snapshotting `bits`, and a writer
//!   bumps `dirty_gen` *after* setting its bits, so a write that captured a
//!   writer's generation carries its bits.
//!
//! The bitmap is shared (in an `Arc`) by every queue of a mirror through its
//! [`MirrorHealth`] ([`MirrorHealth::with_write_intent`]); each queue's
//! [`Mirror`](crate::Mirror) holds its own devices for the copies (built on its
//! own ring: [`IntentCopy`] over the locations the daemon sets with
//! [`WriteIntent::set_copy`], which follow a leg replacement).
//!
//! Block format (little endian; `docs/FORMAT.md` is the reference):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TBWIBMAP` |
//! | 8 | 4 | version 1 |
//! | 12 | 4 | flags, 0 |
//! | 16 | 8 | volume id |
//! | 24 | 4 | mirror index |
//! | 28 | 4 | region count n |
//! | 32 | 8 | region size |
//! | 40 | 8 | leg size |
//! | 48 | 8 | sequence |
//! | 56 | 8 | reserved, 0 |
//! | 64 | 4028 | bits: region r = bit r % 8 of byte 64 + r / 8 |
//! | 4092 | 4 | crc32c of bytes 0..4092 |

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::join::join_bounded;
use crate::mirror::{backoff, MirrorHealth, MAX_LEGS};
use crate::{AlignedBuf, BlockDev, IoError, IoResult, Limits, Partition, Ring};

/// Size of one bitmap copy: one 4 KiB block.
pub const BLOCK_SIZE: usize = 4096;
/// Magic at offset 0 of a bitmap block.
pub const MAGIC: [u8; 8] = *b"TBWIBMAP";
/// Block format version.
pub const VERSION: u32 = 1;
/// Bytes before the bits.
pub const HEADER_LEN: usize = 64;
/// Offset of the crc32c (over bytes `0..CRC_OFFSET`).
pub const CRC_OFFSET: usize = BLOCK_SIZE - 4;
/// Regions one block can describe: 4028 bytes of bits.
pub const MAX_REGIONS: u64 = ((CRC_OFFSET - HEADER_LEN) * 8) as u64;
/// Smallest region: 1 MiB (as the sync window's).
pub const MIN_REGION_SIZE: u64 = 1 << 20;

/// Words of 64 region bits needed for [`MAX_REGIONS`].
const WORDS: usize = (MAX_REGIONS as usize).div_ceil(64);

/// Region size for legs of `leg_size` bytes: the smallest power of two of at
/// least [`MIN_REGION_SIZE`] such that the regions fit in one block
/// (`max(1 MiB, next_pow2(ceil(leg_size / MAX_REGIONS)))`).
pub fn region_size_for(leg_size: u64) -> u64 {
    leg_size
        .div_ceil(MAX_REGIONS)
        .checked_next_power_of_two()
        .unwrap_or(1 << 63)
        .max(MIN_REGION_SIZE)
}

/// Which mirror a bitmap belongs to: a copy naming another mirror (a slot
/// reused after a volume removal, a stale slot) is rejected at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IntentId {
    /// The volume's object id.
    pub volume: u64,
    /// The mirror's stripe index in a raid10 volume; 0 for a mirror volume.
    pub mirror: u32,
}

impl fmt::Display for IntentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "volume {} mirror {}", self.volume, self.mirror)
    }
}

/// One decoded bitmap block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentBlock {
    /// Owner.
    pub id: IntentId,
    /// Bytes per leg.
    pub leg_size: u64,
    /// Bytes per region ([`region_size_for`] of the leg size).
    pub region_size: u64,
    /// Number of regions (`ceil(leg_size / region_size)`).
    pub regions: u32,
    /// Incremented by every write of the bitmap.
    pub sequence: u64,
    /// Region bits, 64 per word: region `r` is bit `r % 64` of word `r / 64`.
    pub bits: Vec<u64>,
}

/// Why a bitmap copy was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Fewer than [`BLOCK_SIZE`] bytes.
    #[error("short block ({0} bytes)")]
    Short(usize),
    /// All zeroes: never written.
    #[error("blank (never written)")]
    Blank,
    /// Not a bitmap block.
    #[error("bad magic")]
    BadMagic,
    /// Torn or corrupted.
    #[error("bad checksum")]
    BadChecksum,
    /// Unknown version.
    #[error("unsupported version {0}")]
    Version(u32),
    /// A field out of its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The bitmap of another mirror.
    #[error("bitmap of {0}")]
    Foreign(IntentId),
    /// Same mirror, other leg size.
    #[error("bitmap for legs of {found} bytes, expected {expected}")]
    LegSize {
        /// In the block.
        found: u64,
        /// Expected.
        expected: u64,
    },
    /// The copy could not be read.
    #[error("read failed: {0}")]
    Io(IoError),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Word `w` of the bits area of `block` (the last word is half outside it).
fn get_word(block: &[u8], w: usize) -> u64 {
    let at = HEADER_LEN + 8 * w;
    let end = (at + 8).min(CRC_OFFSET);
    let mut b = [0u8; 8];
    if at < end {
        b[..end - at].copy_from_slice(&block[at..end]);
    }
    u64::from_le_bytes(b)
}

fn put_word(block: &mut [u8], w: usize, v: u64) {
    let at = HEADER_LEN + 8 * w;
    let end = (at + 8).min(CRC_OFFSET);
    if at < end {
        block[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
    }
}

/// Header fields of a block.
struct Header {
    id: IntentId,
    regions: u32,
    region_size: u64,
    leg_size: u64,
    sequence: u64,
}

/// Write the header at the start of `block` (the bits are written by the caller,
/// then [`seal`]).
fn put_header(block: &mut [u8], h: &Header) {
    block[..HEADER_LEN].fill(0);
    block[0..8].copy_from_slice(&MAGIC);
    block[8..12].copy_from_slice(&VERSION.to_le_bytes());
    block[16..24].copy_from_slice(&h.id.volume.to_le_bytes());
    block[24..28].copy_from_slice(&h.id.mirror.to_le_bytes());
    block[28..32].copy_from_slice(&h.regions.to_le_bytes());
    block[32..40].copy_from_slice(&h.region_size.to_le_bytes());
    block[40..48].copy_from_slice(&h.leg_size.to_le_bytes());
    block[48..56].copy_from_slice(&h.sequence.to_le_bytes());
}

/// Write the checksum.
fn seal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..CRC_OFFSET]);
    block[CRC_OFFSET..BLOCK_SIZE].copy_from_slice(&crc.to_le_bytes());
}

impl IntentBlock {
    /// Encode into the first [`BLOCK_SIZE`] bytes of `block` (which must be that
    /// long). Bits at or past `regions` are written as zero.
    pub fn encode_into(&self, block: &mut [u8]) {
        let block = &mut block[..BLOCK_SIZE];
        put_header(
            block,
            &Header {
                id: self.id,
                regions: self.regions,
                region_size: self.region_size,
                leg_size: self.leg_size,
                sequence: self.sequence,
            },
        );
        let n = self.regions as usize;
        for w in 0..WORDS {
            let mut v = self.bits.get(w).copied().unwrap_or(0);
            if w * 64 + 64 > n {
                v &= low_bits(n.saturating_sub(w * 64));
            }
            put_word(block, w, v);
        }
        seal(block);
    }

    /// Encode into a new block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0; BLOCK_SIZE];
        self.encode_into(&mut b);
        b
    }

    /// Decode a block. Checks everything the block says about itself (magic,
    /// checksum, version, zero flags and reserved bytes, a region size that is
    /// the one [`region_size_for`] gives for the leg size, the matching region
    /// count, no bit past it); never panics, whatever the bytes.
    pub fn decode(block: &[u8]) -> Result<IntentBlock, BlockError> {
        let b = block
            .get(..BLOCK_SIZE)
            .ok_or(BlockError::Short(block.len()))?;
        if b.iter().all(|&x| x == 0) {
            return Err(BlockError::Blank);
        }
        if b[0..8] != MAGIC {
            return Err(BlockError::BadMagic);
        }
        if crc32c::crc32c(&b[..CRC_OFFSET]) != le32(b, CRC_OFFSET) {
            return Err(BlockError::BadChecksum);
        }
        let version = le32(b, 8);
        if version != VERSION {
            return Err(BlockError::Version(version));
        }
        if le32(b, 12) != 0 {
            return Err(BlockError::Invalid("flags"));
        }
        if le64(b, 56) != 0 {
            return Err(BlockError::Invalid("reserved bytes"));
        }
        let id = IntentId {
            volume: le64(b, 16),
            mirror: le32(b, 24),
        };
        let regions = le32(b, 28);
        let region_size = le64(b, 32);
        let leg_size = le64(b, 40);
        if leg_size == 0 {
            return Err(BlockError::Invalid("leg size"));
        }
        if region_size != region_size_for(leg_size) {
            return Err(BlockError::Invalid("region size"));
        }
        if u64::from(regions) != leg_size.div_ceil(region_size) {
            return Err(BlockError::Invalid("region count"));
        }
        let n = regions as usize;
        let mut bits = vec![0u64; n.div_ceil(64)];
        for w in 0..WORDS {
            let v = get_word(b, w);
            let valid = if w * 64 >= n { 0 } else { low_bits(n - w * 64) };
            if v & !valid != 0 {
                return Err(BlockError::Invalid("bits past the region count"));
            }
            if let Some(x) = bits.get_mut(w) {
                *x = v;
            }
        }
        Ok(IntentBlock {
            id,
            leg_size,
            region_size,
            regions,
            sequence: le64(b, 48),
            bits,
        })
    }

    /// Whether bit `r` is set.
    pub fn is_set(&self, r: usize) -> bool {
        self.bits
            .get(r / 64)
            .is_some_and(|w| w >> (r % 64) & 1 != 0)
    }
}

/// The `n` low bits set (all 64 for `n >= 64`).
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// `(word, mask)` for every word covering the regions of `r`.
fn word_masks(r: Range<usize>) -> impl Iterator<Item = (usize, u64)> {
    let (first, last) = if r.is_empty() {
        (1, 0)
    } else {
        (r.start / 64, (r.end - 1) / 64)
    };
    (first..last + 1).map(move |w| {
        let lo = if w == first { r.start % 64 } else { 0 };
        let hi = if w == last { (r.end - 1) % 64 } else { 63 };
        (w, (u64::MAX >> (63 - hi)) & (u64::MAX << lo))
    })
}

/// Why a bitmap operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    /// Leg count out of range.
    #[error("a write-intent bitmap covers 2 to {MAX_LEGS} legs, got {0}")]
    Legs(usize),
    /// Legs of no bytes.
    #[error("a write-intent bitmap needs legs of at least one byte")]
    EmptyLegs,
    /// The health record describes other legs, or has no sync window (built
    /// with [`MirrorHealth::new`]): the bitmap needs its in-flight counters.
    #[error(
        "health describes {health_legs} legs of {health_size} bytes (0: no sync window), \
         the bitmap {legs} legs of {size} bytes"
    )]
    Mismatch {
        /// Legs of the health record.
        health_legs: usize,
        /// Sync-window size of the health record.
        health_size: u64,
        /// Legs of the bitmap.
        legs: usize,
        /// Leg size of the bitmap.
        size: u64,
    },
    /// [`WriteIntent::sweep`] or [`WriteIntent::persist`] with a health
    /// record that does not carry this bitmap.
    #[error("this mirror health does not carry this write-intent bitmap")]
    NotAttached,
    /// Not one copy device per leg.
    #[error("expected one bitmap copy per leg ({expected}), got {got}")]
    Copies {
        /// Legs.
        expected: usize,
        /// Copies given.
        got: usize,
    },
    /// Writing the bitmap failed (on every copy, or, for
    /// [`WriteIntent::format`], on one).
    #[error("writing the write-intent bitmap failed: {0}")]
    Io(IoError),
}

/// Why [`WriteIntent::sweep`] cleared nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// A leg is failed or rebuilding: its return needs the bits.
    LegsNotHealthy,
    /// Bits loaded after a crash wait for [`crate::resync::resync_dirty`].
    ResyncPending,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Regions cleared (idle over two sweeps, every leg healthy).
    pub cleared: usize,
    /// Dirty regions seen idle for the first time (cleared by the next sweep
    /// unless written meanwhile).
    pub aging: usize,
    /// Dirty regions with writes in flight (or touched since the last sweep).
    pub busy: usize,
    /// Dirty regions left.
    pub dirty: usize,
    /// The bitmap was written (something was cleared).
    pub persisted: bool,
    /// Why nothing could be cleared, if so.
    pub held: Option<Held>,
}

/// What [`WriteIntent::load`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// Per copy (in the order given): its sequence number, or why it was
    /// ignored.
    pub copies: Vec<Result<u64, BlockError>>,
    /// Dirty regions after the load.
    pub dirty: usize,
    /// No copy was valid: every region is dirty (full resync).
    pub full: bool,
}

/// Location of one leg's copy, for the daemon-built trees ([`IntentCopy`]).
#[derive(Default)]
struct Placement {
    generation: AtomicU64,
    at: Mutex<Option<(Arc<File>, u64)>>,
}

/// Exclusive right to write the bitmap; released on drop.
struct PersistLock<'a>(&'a AtomicBool);

impl Drop for PersistLock<'_> {
    fn drop(&mut self) {
        self.0.store(false, SeqCst);
    }
}

/// The write-intent bitmap of one mirror, shared by all its queues (see the
/// module documentation).
pub struct WriteIntent {
    id: IntentId,
    legs: usize,
    leg_size: u64,
    region_shift: u32,
    regions: usize,
    /// In-memory bits: set = writes may be in flight, legs may differ.
    bits: Box<[AtomicU64]>,
    /// Bits known to be set on disk (a subset of `bits`, except transiently
    /// inside a clear): a write whose regions are all here needs no I/O.
    ondisk: Box<[AtomicU64]>,
    /// Region seen idle by the previous sweep, with no write started since.
    idle: Box<[AtomicBool]>,
    /// Bumped by every writer that set bits (after setting them).
    dirty_gen: AtomicU64,
    /// Highest `dirty_gen` value a completed bitmap write captured.
    durable_gen: AtomicU64,
    /// One bitmap writer at a time (persist, sweep, load, format).
    persisting: AtomicBool,
    /// Sequence number of the last block written (or the highest loaded).
    sequence: AtomicU64,
    /// Bits loaded after a crash are not resynchronised yet.
    unsynced: AtomicBool,
    /// Number of block writes (bitmap persists), for tests and statistics.
    persists: AtomicU64,
    placement: [Placement; MAX_LEGS],
}

impl fmt::Debug for WriteIntent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteIntent")
            .field("id", &self.id)
            .field("legs", &self.legs)
            .field("region_size", &self.region_size())
            .field("regions", &self.regions)
            .field("dirty", &self.dirty_regions())
            .field("unsynced", &self.unsynced())
            .finish()
    }
}

impl WriteIntent {
    /// An all-clear bitmap for mirror `id` of `legs` legs of `leg_size` bytes.
    /// Load it ([`WriteIntent::load`]) or format its copies
    /// ([`WriteIntent::format`], for a new mirror) before the mirror serves I/O.
    pub fn new(id: IntentId, legs: usize, leg_size: u64) -> Result<WriteIntent, IntentError> {
        if !(2..=MAX_LEGS).contains(&legs) {
            return Err(IntentError::Legs(legs));
        }
        if leg_size == 0 {
            return Err(IntentError::EmptyLegs);
        }
        let region_size = region_size_for(leg_size);
        let regions = leg_size.div_ceil(region_size) as usize;
        let words = regions.div_ceil(64);
        Ok(WriteIntent {
            id,
            legs,
            leg_size,
            region_shift: region_size.trailing_zeros(),
            regions,
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            ondisk: (0..words).map(|_| AtomicU64::new(0)).collect(),
            idle: (0..regions).map(|_| AtomicBool::new(false)).collect(),
            dirty_gen: AtomicU64::new(0),
            durable_gen: AtomicU64::new(0),
            persisting: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            persists: AtomicU64::new(0),
            placement: Default::default(),
        })
    }

    /// The mirror it belongs to.
    pub fn id(&self) -> IntentId {
        self.id
    }

    /// Number of legs (and copies).
    pub fn legs(&self) -> usize {
        self.legs
    }

    /// Bytes per leg.
    pub fn leg_size(&self) -> u64 {
        self.leg_size
    }

    /// Bytes per region.
    pub fn region_size(&self) -> u64 {
        1 << self.region_shift
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.regions
    }

    /// The region holding leg offset `offset`.
    pub fn region_of(&self, offset: u64) -> usize {
        (offset.min(self.leg_size.saturating_sub(1)) >> self.region_shift) as usize
    }

    /// Leg byte range of region `r` (clamped to the leg).
    pub fn region_range(&self, r: usize) -> Range<u64> {
        let start = (r as u64) << self.region_shift;
        start.min(self.leg_size)..(start + self.region_size()).min(self.leg_size)
    }

    /// Whether region `r` is dirty (its bit set in memory).
    pub fn is_dirty(&self, r: usize) -> bool {
        r < self.regions && self.bits[r / 64].load(SeqCst) >> (r % 64) & 1 != 0
    }

    /// Number of dirty regions.
    pub fn dirty_regions(&self) -> usize {
        self.bits
            .iter()
            .map(|w| w.load(SeqCst).count_ones() as usize)
            .sum()
    }

    /// Number of bitmap block writes so far (each writes every working copy).
    pub fn persists(&self) -> u64 {
        self.persists.load(SeqCst)
    }

    /// Whether bits loaded after a crash still wait for
    /// [`crate::resync::resync_dirty`]: reads of dirty regions go to the first
    /// healthy leg and sweeps clear nothing until then.
    pub fn unsynced(&self) -> bool {
        self.unsynced.load(SeqCst)
    }

    /// Declare the legs in sync where they are healthy (the crash resync is
    /// done, or the daemon knows the mirror was shut down cleanly): reads are
    /// balanced again and sweeps may clear idle regions. Dirty bits stay (a
    /// failed leg still needs them).
    pub fn mark_synced(&self) {
        self.unsynced.store(false, SeqCst);
    }

    /// Where leg `leg`'s copy lives on its ALU: the daemon sets it for every
    /// leg before building the volume trees ([`crate::build_volume`]) and again,
    /// *before* publishing the new leg, when a leg is replaced (every queue's
    /// [`IntentCopy`] follows at its next bitmap write).
    pub fn set_copy(&self, leg: usize, file: Arc<File>, offset: u64) {
        if let Some(p) = self.placement.get(leg) {
            *p.at.lock().unwrap_or_else(|e| e.into_inner()) = Some((file, offset));
            p.generation.fetch_add(1, SeqCst);
        }
    }

    /// The location set for leg `leg`, if any.
    pub fn copy_location(&self, leg: usize) -> Option<(Arc<File>, u64)> {
        let p = self.placement.get(leg)?;
        p.at.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One queue's (or job's, or sweeper's) devices for the copies, submitting
    /// on `ring`, over the locations set with [`WriteIntent::set_copy`].
    pub fn copies_on<R: Ring + Clone>(self: &Arc<Self>, ring: R) -> Vec<IntentCopy<R>> {
        (0..self.legs)
            .map(|leg| IntentCopy {
                intent: self.clone(),
                leg,
                ring: ring.clone(),
                seen: Cell::new(u64::MAX),
                current: RefCell::new(None),
            })
            .collect()
    }

    /// Regions touched by `[off, off + len)` (clamped to the leg).
    fn regions_of(&self, off: u64, len: u64) -> Range<usize> {
        if len == 0 || off >= self.leg_size {
            return 0..0;
        }
        let last = (off.saturating_add(len) - 1).min(self.leg_size - 1);
        (off >> self.region_shift) as usize..(last >> self.region_shift) as usize + 1
    }

    /// Whether a read of `[off, off + len)` must go to the first healthy leg:
    /// a crash resync is pending and the range touches a dirty region. One
    /// atomic load when no resync is pending.
    pub(crate) fn unsynced_in(&self, off: u64, len: u64) -> bool {
        self.unsynced.load(SeqCst)
            && word_masks(self.regions_of(off, len))
                .any(|(w, m)| self.bits[w].load(SeqCst) & m != 0)
    }

    fn try_lock(&self) -> Option<PersistLock<'_>> {
        self.persisting
            .compare_exchange(false, true, SeqCst, SeqCst)
            .ok()
            .map(|_| PersistLock(&self.persisting))
    }

    async fn lock(&self) -> PersistLock<'_> {
        let mut spins = 0;
        loop {
            if let Some(l) = self.try_lock() {
                return l;
            }
            backoff(&mut spins).await;
        }
    }

    fn check_attached(&self, health: &MirrorHealth) -> Result<(), IntentError> {
        match health.write_intent() {
            Some(w) if std::ptr::eq(&**w, self) => Ok(()),
            _ => Err(IntentError::NotAttached),
        }
    }

    fn check_copies(&self, got: usize) -> Result<(), IntentError> {
        if got == self.legs {
            Ok(())
        } else {
            Err(IntentError::Copies {
                expected: self.legs,
                got,
            })
        }
    }

    /// Host side, for a write/write-zeroes/discard of `[off, off + len)` whose
    /// regions are already counted in flight by [`MirrorHealth`]'s sync window
    /// (`enter_write`): return once every touched region's bit is durable.
    /// `scratch` is the caller's (per queue) block buffer, used when this
    /// writer persists.
    ///
    /// Ordering with [`WriteIntent::sweep`] (all SeqCst): the writer increments
    /// the region's in-flight counter (in `enter_write`) *before* it looks at
    /// `ondisk`; the sweep clears `ondisk` and the bit *before* it looks at the
    /// counter. So either the writer sees the bit cleared (and sets and persists
    /// it again before touching a leg), or the sweep sees the writer in flight
    /// (and puts the bit back before its block is written): a region is never
    /// clear on disk while a write to it is in flight.
    pub(crate) async fn mark<C: BlockDev>(
        &self,
        off: u64,
        len: u64,
        health: &MirrorHealth,
        copies: &[C],
        scratch: &Cell<Option<AlignedBuf>>,
    ) -> IoResult<()> {
        let regions = self.regions_of(off, len);
        for r in regions.clone() {
            // Two-phase clearing: a write started since the last sweep makes the
            // region "not idle". A load only, unless the sweep marked it.
            if self.idle[r].load(SeqCst) {
                self.idle[r].store(false, SeqCst);
            }
        }
        let mut need = false;
        for (w, m) in word_masks(regions) {
            if self.ondisk[w].load(SeqCst) & m != m {
                self.bits[w].fetch_or(m, SeqCst);
                need = true;
            }
        }
        if !need {
            return Ok(());
        }
        // Bits first, then the generation: a persist that loads a generation at
        // or past ours snapshots the bits after it, so it carries ours.
        let gen = self.dirty_gen.fetch_add(1, SeqCst) + 1;
        let mut spins = 0;
        loop {
            if self.durable_gen.load(SeqCst) >= gen {
                return Ok(());
            }
            if let Some(lock) = self.try_lock() {
                if self.durable_gen.load(SeqCst) >= gen {
                    return Ok(());
                }
                let mut buf = scratch
                    .take()
                    .unwrap_or_else(|| AlignedBuf::new(BLOCK_SIZE));
                // Boxed: the slow path (once per newly dirtied region) must not
                // grow every write's future by the copies' write futures.
                let r = Box::pin(self.persist_locked(Some(health), copies, &mut buf)).await;
                scratch.set(Some(buf));
                drop(lock);
                // Never write the legs unmarked: fail the request.
                r.map_err(|e| IoError::new(e.errno(), "write-intent", off, len))?;
                continue;
            }
            backoff(&mut spins).await;
        }
    }

    /// Write the current bits to every copy whose leg is not failed, with the
    /// persist lock held. Succeeds if one copy was written; a copy that fails
    /// fails its leg. Afterwards the written bits count as on disk and every
    /// generation set before the snapshot is durable.
    async fn persist_locked<C: BlockDev>(
        &self,
        health: Option<&MirrorHealth>,
        copies: &[C],
        buf: &mut [u8],
    ) -> IoResult<()> {
        let gen = self.dirty_gen.load(SeqCst);
        let sequence = self.sequence.fetch_add(1, SeqCst) + 1;
        self.encode_current(buf, sequence);
        let failed = health.map_or(0, |h| h.failed_mask());
        let block: &[u8] = &buf[..BLOCK_SIZE];
        let writes = copies
            .iter()
            .enumerate()
            .filter(|(leg, _)| failed & (1 << leg) == 0)
            .map(|(leg, c)| async move { (leg, c.write(0, block, true).await) });
        let mut ok = 0;
        let mut err = None;
        join_bounded::<MAX_LEGS, _, _, _>(writes, |_, (leg, r)| match r {
            Ok(()) => ok += 1,
            Err(e) => {
                tracing::error!(id = %self.id, leg, error = %e, "write-intent bitmap write failed");
                if let Some(h) = health {
                    h.fail(leg, e.errno());
                }
                err.get_or_insert(e);
            }
        })
        .await;
        if ok == 0 {
            return Err(err.unwrap_or_else(|| IoError::new(libc::EIO, "write-intent", 0, 0)));
        }
        for (w, d) in self.ondisk.iter().enumerate() {
            d.fetch_or(get_word(block, w), SeqCst);
        }
        self.durable_gen.fetch_max(gen, SeqCst);
        self.persists.fetch_add(1, SeqCst);
        Ok(())
    }

    /// Encode the current bits (a snapshot, each word loaded once) into `buf`.
    fn encode_current(&self, buf: &mut [u8], sequence: u64) {
        let block = &mut buf[..BLOCK_SIZE];
        put_header(
            block,
            &Header {
                id: self.id,
                regions: self.regions as u32,
                region_size: self.region_size(),
                leg_size: self.leg_size,
                sequence,
            },
        );
        for w in 0..WORDS {
            put_word(block, w, self.bits.get(w).map_or(0, |b| b.load(SeqCst)));
        }
        seal(block);
    }

    /// Write the current bitmap to every copy whose leg is not failed, now (e.g.
    /// after a load, so every copy holds the union, or after a leg replacement,
    /// so the new leg's copy is valid). `copies`: one per leg, on the caller's
    /// ring. Fails only if no copy could be written.
    pub async fn persist<C: BlockDev>(
        &self,
        health: &MirrorHealth,
        copies: &[C],
    ) -> Result<(), IntentError> {
        self.check_attached(health)?;
        self.check_copies(copies.len())?;
        let _lock = self.lock().await;
        let mut buf = AlignedBuf::new(BLOCK_SIZE);
        self.persist_locked(Some(health), copies, &mut buf)
            .await
            .map_err(IntentError::Io)
    }

    /// Mark every region dirty and write the bitmap to every copy whose leg
    /// is not failed (FUA). For writes this bitmap never saw: another storage
    /// processor's, made while a leg was out; they may be anywhere, so the
    /// leg's return copies all of it. The bits stay set while a leg is not
    /// healthy (the sweep clears nothing then), and no crash resync is
    /// implied ([`WriteIntent::unsynced`] is unchanged). Fails only if no
    /// copy could be written.
    pub async fn mark_all<C: BlockDev>(
        &self,
        health: &MirrorHealth,
        copies: &[C],
    ) -> Result<(), IntentError> {
        self.check_attached(health)?;
        for (w, m) in word_masks(0..self.regions) {
            self.bits[w].fetch_or(m, SeqCst);
        }
        for i in self.idle.iter() {
            i.store(false, SeqCst);
        }
        self.persist(health, copies).await
    }

    /// Start a new mirror's bitmap: every bit clear, and a clean block written
    /// (FUA) to every copy. Fails if any copy cannot be written. Call before the
    /// mirror serves I/O.
    pub async fn format<C: BlockDev>(&self, copies: &[C]) -> Result<(), IntentError> {
        self.check_copies(copies.len())?;
        let _lock = self.lock().await;
        for w in self.bits.iter().chain(self.ondisk.iter()) {
            w.store(0, SeqCst);
        }
        for i in self.idle.iter() {
            i.store(false, SeqCst);
        }
        self.unsynced.store(false, SeqCst);
        let mut buf = AlignedBuf::new(BLOCK_SIZE);
        let sequence = self.sequence.fetch_add(1, SeqCst) + 1;
        self.encode_current(&mut buf, sequence);
        let block: &[u8] = &buf;
        let mut err = None;
        join_bounded::<MAX_LEGS, _, _, _>(
            copies.iter().map(|c| c.write(0, block, true)),
            |_, r| {
                if let Err(e) = r {
                    err.get_or_insert(e);
                }
            },
        )
        .await;
        match err {
            Some(e) => Err(IntentError::Io(e)),
            None => {
                self.persists.fetch_add(1, SeqCst);
                Ok(())
            }
        }
    }

    /// Load the bitmap from `copies` (any number, usually one per leg, on the
    /// caller's ring): the union of every valid copy's bits, added to the bits
    /// in memory. A torn, blank, foreign or unreadable copy is ignored and
    /// reported; when no copy is valid every region is marked dirty (full
    /// resync) and [`LoadReport::full`] says so. If any region is dirty
    /// afterwards, a crash resync is assumed pending ([`WriteIntent::unsynced`]):
    /// run [`crate::resync::resync_dirty`] (or call
    /// [`WriteIntent::mark_synced`] when the mirror was shut down cleanly).
    ///
    /// Call before the mirror serves I/O. Nothing counts as on disk after a
    /// load: the first write to each dirty region writes the bitmap again, so
    /// the union reaches every working copy.
    pub async fn load<C: BlockDev>(&self, copies: &[C]) -> LoadReport {
        let _lock = self.lock().await;
        let mut buf = AlignedBuf::new(BLOCK_SIZE);
        let mut report = Vec::with_capacity(copies.len());
        let mut valid = 0;
        for c in copies {
            let got = match c.read(0, &mut buf).await {
                Err(e) => Err(BlockError::Io(e)),
                Ok(()) => IntentBlock::decode(&buf).and_then(|b| {
                    if b.id != self.id {
                        Err(BlockError::Foreign(b.id))
                    } else if b.leg_size > self.leg_size {
                        Err(BlockError::LegSize {
                            found: b.leg_size,
                            expected: self.leg_size,
                        })
                    } else {
                        Ok(b)
                    }
                }),
            };
            report.push(match got {
                Ok(b) => {
                    valid += 1;
                    self.merge(&b);
                    self.sequence.fetch_max(b.sequence, SeqCst);
                    Ok(b.sequence)
                }
                Err(e) => {
                    tracing::warn!(id = %self.id, error = %e, "write-intent copy ignored");
                    Err(e)
                }
            });
        }
        let full = valid == 0;
        if full {
            for (w, b) in self.bits.iter().enumerate() {
                b.store(low_bits(self.regions.saturating_sub(w * 64)), SeqCst);
            }
        }
        for w in self.ondisk.iter() {
            w.store(0, SeqCst);
        }
        let dirty = self.dirty_regions();
        self.unsynced.store(dirty > 0, SeqCst);
        tracing::info!(id = %self.id, dirty, full, "write-intent bitmap loaded");
        LoadReport {
            copies: report,
            dirty,
            full,
        }
    }

    /// Add the bits of `b`, a copy of this mirror's bitmap for legs of at most
    /// this size. Smaller legs are the bitmap from before the mirror was
    /// extended (the commit of the new size precedes the first rewrite of the
    /// copies): its regions keep their offsets, so each set bit marks the
    /// region(s) of this geometry covering the same bytes. The grown part has
    /// no bit to carry; it is being copied by a rebuild (`Store::extend_volume`).
    fn merge(&self, b: &IntentBlock) {
        if b.region_size == self.region_size() {
            for (w, v) in b.bits.iter().enumerate() {
                self.bits[w].fetch_or(*v, SeqCst);
            }
            return;
        }
        // Region sizes are powers of two and grow with the leg size: one region
        // here covers several of the old ones.
        for r in (0..b.regions as usize).filter(|&r| b.is_set(r)) {
            let n = self.region_of((r as u64) * b.region_size);
            self.bits[n / 64].fetch_or(1 << (n % 64), SeqCst);
        }
    }

    /// Why nothing may be cleared now, if so.
    fn held(&self, health: &MirrorHealth, resync: bool) -> Option<Held> {
        if health.failed_mask() != 0 || health.rebuilding_mask() != 0 {
            Some(Held::LegsNotHealthy)
        } else if !resync && self.unsynced.load(SeqCst) {
            Some(Held::ResyncPending)
        } else {
            None
        }
    }

    /// Try to clear region `r` (lock held). With `two_phase`, a region is only
    /// cleared if the previous pass already saw it idle and no write started
    /// since; otherwise it is only remembered as idle now.
    fn try_clear(&self, r: usize, health: &MirrorHealth, two_phase: bool, resync: bool) -> Clear {
        let range = self.region_range(r);
        let busy = || health.busy(range.start, range.end - range.start);
        if two_phase && !self.idle[r].load(SeqCst) {
            // First sighting. Mark before checking: a write that increments its
            // counter after our check sees the mark and resets it.
            self.idle[r].store(true, SeqCst);
            if busy() {
                self.idle[r].store(false, SeqCst);
                return Clear::Busy;
            }
            return Clear::Aging;
        }
        if busy() {
            self.idle[r].store(false, SeqCst);
            return Clear::Busy;
        }
        // Dekker with `mark`: clear the fast-path bit and the bit, *then* look
        // at the in-flight counter (and at the legs' health, which a failing
        // write updates before its counter drops). A writer that got past its
        // check before our clear is still counted here, so the bit is put
        // back; one arriving after it sees the bit clear and persists it again
        // (after this pass's block write: we hold the lock).
        // Tests widen the race window between the check above and the clear.
        #[cfg(test)]
        std::thread::yield_now();
        let (w, m) = (r / 64, 1u64 << (r % 64));
        let was_on_disk = self.ondisk[w].fetch_and(!m, SeqCst) & m != 0;
        self.bits[w].fetch_and(!m, SeqCst);
        self.idle[r].store(false, SeqCst);
        if busy() || self.held(health, resync).is_some() {
            self.bits[w].fetch_or(m, SeqCst);
            if was_on_disk {
                // Still set on disk: no block was written since (we hold the
                // lock), so the fast path may use it again.
                self.ondisk[w].fetch_or(m, SeqCst);
            }
            return Clear::Busy;
        }
        Clear::Cleared
    }

    /// Clear what may be cleared among the dirty regions of `range` (lock held)
    /// and persist if anything was; `resync`: called by the resync job, which
    /// synced these regions itself (ignores a pending crash resync).
    async fn clear_pass<C: BlockDev>(
        &self,
        health: &MirrorHealth,
        copies: &[C],
        range: Range<usize>,
        two_phase: bool,
        resync: bool,
    ) -> Result<SweepReport, IntentError> {
        let mut report = SweepReport::default();
        if let Some(h) = self.held(health, resync) {
            report.held = Some(h);
            report.dirty = self.dirty_regions();
            return Ok(report);
        }
        let range = range.start..range.end.min(self.regions);
        for (w, m) in word_masks(range) {
            let mut word = self.bits[w].load(SeqCst) & m;
            while word != 0 {
                let r = w * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                match self.try_clear(r, health, two_phase, resync) {
                    Clear::Cleared => report.cleared += 1,
                    Clear::Aging => report.aging += 1,
                    Clear::Busy => report.busy += 1,
                }
            }
        }
        if report.cleared > 0 {
            let mut buf = AlignedBuf::new(BLOCK_SIZE);
            // On failure the cleared bits stay set on disk: more resync, never less.
            self.persist_locked(Some(health), copies, &mut buf)
                .await
                .map_err(IntentError::Io)?;
            report.persisted = true;
        }
        report.dirty = self.dirty_regions();
        Ok(report)
    }

    /// One pass of the lazy clear (MD's bitmap daemon), for the daemon to call
    /// periodically (e.g. every few seconds) from a thread of its own with its
    /// own copy devices (`copies_on` over a `LocalRing`, one per leg): clears
    /// the bits of regions that were idle at the previous pass and still are,
    /// with no write started in between, then persists the bitmap if anything
    /// was cleared. Clears nothing while a leg is failed or rebuilding or a
    /// crash resync is pending ([`SweepReport::held`]).
    ///
    /// Race-free against concurrent writers (see `mark`): the pass holds the
    /// persist lock from its first clear to the end of its block write, so no
    /// other bitmap write can capture a bit it clears and puts back.
    pub async fn sweep<C: BlockDev>(
        &self,
        health: &MirrorHealth,
        copies: &[C],
    ) -> Result<SweepReport, IntentError> {
        self.check_attached(health)?;
        self.check_copies(copies.len())?;
        let _lock = self.lock().await;
        let report = self
            .clear_pass(health, copies, 0..self.regions, true, false)
            .await?;
        tracing::debug!(id = %self.id, ?report, "write-intent sweep");
        Ok(report)
    }

    /// Clear, at once, the idle dirty regions of `range` that the resync job
    /// just made identical on every leg (no two-phase wait), and persist.
    pub(crate) async fn clear_synced<C: BlockDev>(
        &self,
        health: &MirrorHealth,
        copies: &[C],
        range: Range<usize>,
    ) -> Result<SweepReport, IntentError> {
        self.check_copies(copies.len())?;
        let _lock = self.lock().await;
        self.clear_pass(health, copies, range, false, true).await
    }
}

/// Outcome of one region in a clear pass.
enum Clear {
    Cleared,
    Aging,
    Busy,
}

/// One queue's device for one leg's bitmap copy: a [`Partition`] of one block
/// at the location set with [`WriteIntent::set_copy`], rebuilt on this
/// queue's ring when the location changes (a leg replacement). Fails with
/// `ENXIO` while no location is set.
pub struct IntentCopy<R: Ring + Clone> {
    intent: Arc<WriteIntent>,
    leg: usize,
    ring: R,
    seen: Cell<u64>,
    current: RefCell<Option<Rc<Partition<R>>>>,
}

impl<R: Ring + Clone> IntentCopy<R> {
    fn dev(&self, op: &'static str) -> IoResult<Rc<Partition<R>>> {
        let p = &self.intent.placement[self.leg];
        let generation = p.generation.load(SeqCst);
        if generation != self.seen.get() {
            let at = p.at.lock().unwrap_or_else(|e| e.into_inner()).clone();
            *self.current.borrow_mut() = at.map(|(file, offset)| {
                Rc::new(Partition::new(
                    file,
                    offset,
                    BLOCK_SIZE as u64,
                    self.ring.clone(),
                ))
            });
            self.seen.set(generation);
        }
        self.current
            .borrow()
            .clone()
            .ok_or_else(|| IoError::new(libc::ENXIO, op, 0, BLOCK_SIZE as u64))
    }

    /// Whether a location is set for this leg.
    pub fn is_placed(&self) -> bool {
        self.intent.copy_location(self.leg).is_some()
    }
}

impl<R: Ring + Clone> BlockDev for IntentCopy<R> {
    fn size(&self) -> u64 {
        BLOCK_SIZE as u64
    }

    fn limits(&self) -> Limits {
        crate::partition::DEFAULT_LIMITS
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.dev("read")?.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.dev("write")?.write(offset, buf, fua).await
    }

    async fn flush(&self) -> IoResult<()> {
        self.dev("flush")?.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.dev("discard")?.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.dev("write_zeroes")?.write_zeroes(offset, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Waker};

    /// Deterministic xorshift64*.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A block of `id`'s bitmap for legs of `leg_size` bytes with `set` dirty.
    fn block(id: IntentId, leg_size: u64, set: &[usize], sequence: u64) -> IntentBlock {
        let region_size = region_size_for(leg_size);
        let regions = leg_size.div_ceil(region_size) as u32;
        let mut bits = vec![0u64; (regions as usize).div_ceil(64)];
        for &r in set {
            bits[r / 64] |= 1 << (r % 64);
        }
        IntentBlock {
            id,
            leg_size,
            region_size,
            regions,
            sequence,
            bits,
        }
    }

    fn sample(regions_set: &[usize]) -> IntentBlock {
        let id = IntentId {
            volume: 7,
            mirror: 2,
        };
        block(id, 40 << 30, regions_set, 99)
    }

    #[test]
    fn region_size_grows_so_the_bits_fit_one_block() {
        assert_eq!(MAX_REGIONS, 32224);
        assert_eq!(region_size_for(1), MIN_REGION_SIZE);
        assert_eq!(region_size_for(MAX_REGIONS << 20), MIN_REGION_SIZE);
        assert_eq!(region_size_for((MAX_REGIONS << 20) + 1), 2 << 20);
        assert_eq!(region_size_for(40 << 30), 2 << 20);
        assert_eq!(region_size_for(u64::MAX), 1 << 50);
        for size in [1u64, 1 << 20, 3 << 30, 1 << 40, 1 << 50, u64::MAX] {
            let r = region_size_for(size);
            assert!(r.is_power_of_two() && r >= MIN_REGION_SIZE);
            assert!(size.div_ceil(r) <= MAX_REGIONS, "{size}");
        }
    }

    #[test]
    fn block_round_trips_and_is_checked() {
        let b = sample(&[0, 5, 63, 64, 20479]);
        let enc = b.encode();
        assert_eq!(enc.len(), BLOCK_SIZE);
        assert_eq!(&enc[..8], b"TBWIBMAP");
        assert_eq!(IntentBlock::decode(&enc), Ok(b.clone()));
        assert!(b.is_set(20479) && !b.is_set(20478) && !b.is_set(1 << 20));
        // The fields sit where FORMAT.md says.
        assert_eq!(le32(&enc, 8), VERSION);
        assert_eq!(le64(&enc, 16), 7);
        assert_eq!(le32(&enc, 24), 2);
        assert_eq!(le32(&enc, 28), 20480);
        assert_eq!(le64(&enc, 32), 2 << 20);
        assert_eq!(le64(&enc, 40), 40 << 30);
        assert_eq!(le64(&enc, 48), 99);
        assert_eq!(enc[64], 0b10_0001);
        assert_eq!(enc[64 + 20479 / 8], 0x80);
        assert_eq!(le32(&enc, 4092), crc32c::crc32c(&enc[..4092]));
        // Bits past the region count are not encoded.
        let mut extra = b.clone();
        extra.bits[319] |= 1 << 63;
        extra.bits.push(1);
        assert_eq!(IntentBlock::decode(&extra.encode()), Ok(b.clone()));
        let reseal = |f: &dyn Fn(&mut [u8])| {
            let mut x = enc.clone();
            f(&mut x);
            seal(&mut x);
            IntentBlock::decode(&x)
        };
        assert_eq!(
            IntentBlock::decode(&[0; BLOCK_SIZE]),
            Err(BlockError::Blank)
        );
        assert_eq!(
            IntentBlock::decode(&enc[..100]),
            Err(BlockError::Short(100))
        );
        let mut torn = enc.clone();
        torn[2000..].fill(0);
        assert_eq!(IntentBlock::decode(&torn), Err(BlockError::BadChecksum));
        assert_eq!(reseal(&|x| x[0] = b'X'), Err(BlockError::BadMagic));
        assert_eq!(reseal(&|x| x[8] = 2), Err(BlockError::Version(2)));
        assert!(reseal(&|x| x[12] = 1).is_err(), "flags");
        assert!(reseal(&|x| x[60] = 1).is_err(), "reserved");
        assert!(reseal(&|x| x[33] ^= 0x40).is_err(), "region size");
        assert!(reseal(&|x| x[28] ^= 1).is_err(), "region count");
        assert!(reseal(&|x| x[40..48].fill(0)).is_err(), "leg size");
        assert!(
            reseal(&|x| x[64 + 20480 / 8] = 1).is_err(),
            "bit past the end"
        );
    }

    #[test]
    fn decode_never_panics_on_random_bytes() {
        let mut rng = Rng(0x5eed);
        let valid = sample(&[1, 2, 3, 1000]).encode();
        let mut buf = vec![0u8; BLOCK_SIZE + 16];
        for i in 0..20_000 {
            let len = match i % 4 {
                0 => rng.below(BLOCK_SIZE as u64 + 16) as usize,
                _ => BLOCK_SIZE,
            };
            let b = &mut buf[..len];
            if i % 2 == 0 {
                b.iter_mut().for_each(|x| *x = rng.next() as u8);
            } else {
                // Mutations of a valid block, mostly resealed so they get past
                // the checksum and reach the field checks.
                b.copy_from_slice(&valid[..len.min(BLOCK_SIZE)]);
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(len.max(1) as u64) as usize;
                    if let Some(x) = b.get_mut(at) {
                        *x = rng.next() as u8;
                    }
                }
                if i % 3 != 0 && len >= BLOCK_SIZE {
                    b[..8].copy_from_slice(&MAGIC);
                    seal(b);
                }
            }
            if let Ok(d) = IntentBlock::decode(b) {
                // Whatever decodes is consistent and re-encodes to itself.
                assert!(u64::from(d.regions) <= MAX_REGIONS);
                assert_eq!(IntentBlock::decode(&d.encode()), Ok(d));
            }
        }
    }

    /// docs/FORMAT.md must describe the block the code writes.
    #[test]
    fn format_doc_matches_the_block() {
        let doc = include_str!("../../docs/FORMAT.md");
        for row in [
            "| 0 | 8 | magic | `TBWIBMAP` |".to_string(),
            format!("| 8 | 4 | version | {VERSION} |"),
            format!("1 ≤ n ≤ {MAX_REGIONS}"),
            format!("next power of two ≥ ⌈leg size / {MAX_REGIONS}⌉"),
            format!("| {HEADER_LEN} | {} | bits |", CRC_OFFSET - HEADER_LEN),
            format!("| {CRC_OFFSET} | 4 | crc | crc32c of bytes 0..{CRC_OFFSET} |"),
        ] {
            assert!(doc.contains(&row), "FORMAT.md lacks {row:?}");
        }
        assert_eq!(MIN_REGION_SIZE, 1 << 20, "FORMAT.md says max(1 MiB, ...)");
    }

    #[test]
    fn word_masks_cover_exactly_the_range() {
        for (start, end) in [
            (0, 0),
            (0, 1),
            (3, 64),
            (63, 65),
            (0, 200),
            (64, 128),
            (70, 71),
        ] {
            let mut bits = [0u64; 4];
            for (w, m) in word_masks(start..end) {
                bits[w] |= m;
            }
            for r in 0..256 {
                assert_eq!(bits[r / 64] >> (r % 64) & 1 == 1, (start..end).contains(&r));
            }
        }
    }

    // ------------------------------------------------ concurrency: sweep vs writers

    /// Run a future to completion on this thread, polling it in a loop.
    fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }

    /// Pending once.
    async fn yield_now() {
        let mut done = false;
        std::future::poll_fn(|cx| {
            if done {
                Poll::Ready(())
            } else {
                done = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await
    }

    const LEG: u64 = 16 << 20;
    const REGION: u64 = 1 << 20;

    /// What the test's "disks" hold: the bitmap copies and, per region, the
    /// leg writes in flight. Every change is checked against the invariant: a
    /// region with a leg write in flight is set in what a load would see
    /// (the union of the valid copies).
    #[derive(Default)]
    struct Disks {
        copies: [Vec<u8>; 2],
        leg_inflight: Vec<usize>,
        violations: usize,
        leg_writes: usize,
    }

    impl Disks {
        fn union_has(&self, r: usize) -> bool {
            let valid: Vec<IntentBlock> = self
                .copies
                .iter()
                .filter_map(|c| IntentBlock::decode(c).ok())
                .collect();
            valid.is_empty() || valid.iter().any(|b| b.is_set(r))
        }
    }

    /// A leg or a bitmap copy over the shared `Disks`; `Send`, so every thread
    /// builds its own mirror over the same storage.
    #[derive(Clone)]
    struct Dev {
        disks: Arc<Mutex<Disks>>,
        /// `Some(i)`: bitmap copy `i`; `None`: a leg.
        copy: Option<usize>,
    }

    impl BlockDev for Dev {
        fn size(&self) -> u64 {
            if self.copy.is_some() {
                BLOCK_SIZE as u64
            } else {
                LEG
            }
        }
        fn limits(&self) -> Limits {
            crate::partition::DEFAULT_LIMITS
        }
        async fn read(&self, _offset: u64, buf: &mut [u8]) -> IoResult<()> {
            yield_now().await;
            if let Some(i) = self.copy {
                buf.copy_from_slice(&self.disks.lock().unwrap().copies[i]);
            }
            Ok(())
        }
        async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> IoResult<()> {
            yield_now().await;
            let regions =
                (offset / REGION) as usize..(offset + buf.len() as u64).div_ceil(REGION) as usize;
            match self.copy {
                Some(i) => {
                    let mut d = self.disks.lock().unwrap();
                    d.copies[i].copy_from_slice(buf);
                    for r in 0..d.leg_inflight.len() {
                        if d.leg_inflight[r] > 0 && !d.union_has(r) {
                            d.violations += 1;
                        }
                    }
                }
                None => {
                    {
                        let mut d = self.disks.lock().unwrap();
                        d.leg_writes += 1;
                        for r in regions.clone() {
                            if !d.union_has(r) {
                                d.violations += 1;
                            }
                            d.leg_inflight[r] += 1;
                        }
                    }
                    // The leg write takes a while: sweeps run meanwhile.
                    for _ in 0..3 {
                        yield_now().await;
                    }
                    let mut d = self.disks.lock().unwrap();
                    for r in regions {
                        d.leg_inflight[r] -= 1;
                    }
                }
            }
            Ok(())
        }
        async fn flush(&self) -> IoResult<()> {
            Ok(())
        }
        async fn discard(&self, _offset: u64, _len: u64) -> IoResult<()> {
            Ok(())
        }
        async fn write_zeroes(&self, _offset: u64, _len: u64) -> IoResult<()> {
            Ok(())
        }
    }

    #[test]
    fn a_sweep_racing_writers_never_leaves_an_in_flight_region_clear_on_disk() {
        let disks = Arc::new(Mutex::new(Disks {
            copies: [vec![0; BLOCK_SIZE], vec![0; BLOCK_SIZE]],
            leg_inflight: vec![0; (LEG / REGION) as usize],
            ..Default::default()
        }));
        let dev = |copy| Dev {
            disks: disks.clone(),
            copy,
        };
        let id = IntentId {
            volume: 1,
            mirror: 0,
        };
        let wi = Arc::new(WriteIntent::new(id, 2, LEG).unwrap());
        assert_eq!(wi.region_size(), REGION);
        let health = Arc::new(
            MirrorHealth::new_with_rebuild(2, 0, &[], LEG, Box::new(|_, _| {}))
                .with_write_intent(wi.clone())
                .unwrap(),
        );
        block_on(wi.format(&[dev(Some(0)), dev(Some(1))])).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let cleared = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..3u64)
            .map(|t| {
                let (health, stop) = (health.clone(), stop.clone());
                let (legs, copies) = (vec![dev(None), dev(None)], vec![dev(Some(0)), dev(Some(1))]);
                std::thread::spawn(move || {
                    let m = crate::Mirror::with_copies(legs, copies, health).unwrap();
                    let m = &m;
                    let stop = &stop;
                    let writer = |seed: u64| async move {
                        let mut rng = Rng(seed);
                        let data = vec![0u8; 8192];
                        let mut n = 0;
                        while !stop.load(SeqCst) || n < 50 {
                            // A few hot regions, so writes and sweeps collide.
                            let r = rng.below(4) * 3;
                            let off = r * REGION + 4096 * rng.below(REGION / 4096 - 2);
                            let len = 4096 * (1 + rng.below(2));
                            m.write(off, &data[..len as usize], false).await.unwrap();
                            n += 1;
                            for _ in 0..rng.below(3) {
                                yield_now().await;
                            }
                        }
                    };
                    block_on(crate::uring::join_all(
                        (0..4).map(|k| writer(t * 100 + k + 1)).collect(),
                    ));
                })
            })
            .collect();
        let sweeper = {
            let (health, wi, stop, cleared) =
                (health.clone(), wi.clone(), stop.clone(), cleared.clone());
            let copies = vec![dev(Some(0)), dev(Some(1))];
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let r = block_on(wi.sweep(&health, &copies)).unwrap();
                    cleared.fetch_add(r.cleared, SeqCst);
                    std::thread::yield_now();
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stop.store(true, SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        sweeper.join().unwrap();
        let d = disks.lock().unwrap();
        assert_eq!(
            d.violations, 0,
            "a region was clear on disk with a write in flight"
        );
        assert!(d.leg_writes > 100, "{} leg writes", d.leg_writes);
        // The race was exercised: regions were cleared and set again.
        assert!(cleared.load(SeqCst) > 5, "cleared {}", cleared.load(SeqCst));
        assert!(wi.persists() > 5, "persists {}", wi.persists());
    }

    /// An encoded copy of `id`'s bitmap for legs of `leg_size` bytes.
    fn block_for(id: IntentId, leg_size: u64, set: &[usize]) -> Vec<u8> {
        block(id, leg_size, set, 5).encode()
    }

    /// Load `block` into a fresh bitmap for legs of `leg_size`: its dirty regions.
    fn load_into(id: IntentId, leg_size: u64, block: Vec<u8>) -> (Vec<usize>, bool) {
        let disks = Arc::new(Mutex::new(Disks {
            copies: [block, vec![0; BLOCK_SIZE]],
            ..Default::default()
        }));
        let wi = WriteIntent::new(id, 2, leg_size).unwrap();
        let copy = Dev {
            disks,
            copy: Some(0),
        };
        let report = block_on(wi.load(&[copy]));
        let dirty = (0..wi.regions()).filter(|&r| wi.is_dirty(r)).collect();
        (dirty, report.full)
    }

    #[test]
    fn a_bitmap_written_before_the_legs_grew_keeps_its_bits() {
        let id = IntentId {
            volume: 3,
            mirror: 0,
        };
        // Same region size: the bits carry over; the grown part is clean.
        let (dirty, full) = load_into(id, 16 << 20, block_for(id, 8 << 20, &[2, 5, 7]));
        assert!(!full);
        assert_eq!(dirty, vec![2, 5, 7]);
        // Crossing MAX_REGIONS doubles the region size: old regions 0 and 1
        // are new region 0, old 3 is new 1.
        let old = MAX_REGIONS << 20;
        let last = MAX_REGIONS as usize - 1;
        let (dirty, full) = load_into(id, 2 * old, block_for(id, old, &[0, 1, 3, last]));
        assert!(!full);
        assert_eq!(dirty, vec![0, 1, last / 2]);
        // A copy for larger legs than these is not this bitmap: every region
        // is dirty.
        let (dirty, full) = load_into(id, 8 << 20, block_for(id, 16 << 20, &[1]));
        assert!(full);
        assert_eq!(dirty.len(), 8);
    }
}
