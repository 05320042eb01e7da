//! A mirror leg that can be replaced while the volume is online (the leg
//! swap behind `tierblk alu replace`, spec [0168]–[0171]).
//!
//! Every ublk queue has its own instance of a volume's tree, so a new leg
//! cannot be handed over by mutating one shared object. Instead the daemon
//! publishes the new leg's description in a shared [`LegSlot`] and bumps its
//! generation; each queue's [`SwapLeg`] notices the new generation at its
//! next I/O and builds its own instance of the new leg on its own ring. The
//! hot path pays one atomic load and one reference-count increment; the lock
//! is taken only once per queue per swap. I/O already in flight on the old
//! leg finishes on it (it holds its own `Rc`).
//!
//! The daemon swaps a leg only while the mirror treats it as failed, then
//! marks it rebuilding: writes reach the new leg from then on, and reads never
//! do until the rebuild has copied it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::volume::MemberDesc;
use crate::{build_linear, BlockDev, IoResult, Leaf, Limits, Linear, ReadBuf, Ring, WriteBuf};

/// The shared, replaceable description of one leg.
#[derive(Debug)]
pub struct LegSlot {
    generation: AtomicU64,
    size: u64,
    desc: Mutex<MemberDesc>,
}

/// Why a replacement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("replacement leg has {got} bytes, the mirror's legs have {want}")]
pub struct SizeMismatch {
    /// Size of the legs.
    pub want: u64,
    /// Size of the offered replacement.
    pub got: u64,
}

impl LegSlot {
    /// A slot holding `desc`, the leg's first description.
    pub fn new(desc: MemberDesc) -> LegSlot {
        LegSlot {
            generation: AtomicU64::new(0),
            size: desc.size(),
            desc: Mutex::new(desc),
        }
    }

    /// Publish a new description; every queue switches at its next I/O.
    pub fn replace(&self, desc: MemberDesc) -> Result<(), SizeMismatch> {
        if desc.size() != self.size {
            return Err(SizeMismatch {
                want: self.size,
                got: desc.size(),
            });
        }
        *self.desc.lock().unwrap_or_else(|p| p.into_inner()) = desc;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many times the leg was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> (u64, MemberDesc) {
        let desc = self.desc.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock: `replace` bumps after storing, so the pair is
        // never newer-generation-with-older-description.
        (self.generation.load(Ordering::SeqCst), desc.clone())
    }
}

/// One queue's instance of a replaceable leg.
pub struct SwapLeg<R: Ring + Clone> {
    slot: std::sync::Arc<LegSlot>,
    seen: Cell<u64>,
    current: RefCell<Rc<Linear<Leaf<R>>>>,
    ring: R,
}

impl<R: Ring + Clone> SwapLeg<R> {
    /// Build this queue's instance from the slot's current description.
    pub fn new(slot: std::sync::Arc<LegSlot>, ring: R) -> SwapLeg<R> {
        let (generation, desc) = slot.snapshot();
        let current = Rc::new(build_linear(&desc.pieces, ring.clone()));
        SwapLeg {
            slot,
            seen: Cell::new(generation),
            current: RefCell::new(current),
            ring,
        }
    }

    /// The leg to use for the next I/O, rebuilt if the slot moved on.
    fn dev(&self) -> Rc<Linear<Leaf<R>>> {
        if self.slot.generation.load(Ordering::SeqCst) != self.seen.get() {
            let (generation, desc) = self.slot.snapshot();
            *self.current.borrow_mut() = Rc::new(build_linear(&desc.pieces, self.ring.clone()));
            self.seen.set(generation);
        }
        self.current.borrow().clone()
    }
}

impl<R: Ring + Clone> BlockDev for SwapLeg<R> {
    fn size(&self) -> u64 {
        self.slot.size
    }

    fn limits(&self) -> Limits {
        self.current.borrow().limits()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    async fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> IoResult<()> {
        self.dev().read_to(offset, buf).await
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        self.dev().write_from(offset, buf, fua).await
    }

    fn fixed(&self) -> bool {
        self.dev().fixed()
    }

    async fn flush(&self) -> IoResult<()> {
        self.dev().flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.dev().discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.dev().write_zeroes(offset, len).await
    }
}
