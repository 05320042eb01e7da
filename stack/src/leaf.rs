//! The leaves of a volume tree: where a tier-2 object's references end.
//!
//! A member of a stripe or a mirror leg is a concatenation of pieces; each
//! piece is either a *local reference* to a partition of an ALU this process
//! owns ([`Partition`]) or a *remote reference* to a tier-1 object in a peer
//! storage processor ([`RemoteRef`]) — the LRN and RRN of spec
//! \[0109\]–\[0110\]. [`Piece`] is the shared description, [`Leaf`] one queue's
//! instance; dispatch is a `match`, so the tree above stays statically
//! dispatched and allocation-free per I/O. A remote request's future runs in
//! a frame its reference recycles ([`crate::frames`]): it is four times a
//! partition's, and would otherwise size every leaf of every tree.

use std::fs::File;
use std::sync::Arc;

use crate::remote::{RemoteDesc, RemoteRef};
use crate::{BlockDev, IoError, IoResult, Limits, Partition, ReadBuf, Ring, WriteBuf};

/// One piece of a member, shared by the queue threads.
#[derive(Clone, Debug)]
pub enum Piece {
    /// `len` bytes at `start` of a local ALU.
    Local {
        /// The ALU, opened for I/O.
        file: Arc<File>,
        /// Byte offset on the ALU.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A tier-1 object in a peer.
    Remote(Arc<RemoteDesc>),
}

impl Piece {
    /// A local piece.
    pub fn local(file: Arc<File>, start: u64, len: u64) -> Piece {
        Piece::Local { file, start, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Local { len, .. } => *len,
            Piece::Remote(d) => d.size,
        }
    }

    /// Whether the piece is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This queue's instance, submitting on `ring`.
    pub fn build<R: Ring + Clone>(&self, ring: R) -> Leaf<R> {
        match self {
            Piece::Local { file, start, len } => {
                Leaf::Local(Partition::new(file.clone(), *start, *len, ring))
            }
            Piece::Remote(d) => Leaf::Remote(RemoteRef::new(d.clone(), ring)),
        }
    }
}

impl From<(Arc<File>, u64, u64)> for Piece {
    fn from((file, start, len): (Arc<File>, u64, u64)) -> Piece {
        Piece::Local { file, start, len }
    }
}

/// One queue's instance of a [`Piece`].
pub enum Leaf<R: Ring + Clone> {
    /// Local reference.
    Local(Partition<R>),
    /// Remote reference.
    Remote(RemoteRef<R>),
}

impl<R: Ring + Clone> BlockDev for Leaf<R> {
    fn size(&self) -> u64 {
        match self {
            Leaf::Local(p) => p.size(),
            Leaf::Remote(r) => r.size(),
        }
    }

    fn limits(&self) -> Limits {
        match self {
            Leaf::Local(p) => p.limits(),
            Leaf::Remote(r) => r.limits(),
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    async fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> IoResult<()> {
        match (self, buf) {
            (Leaf::Local(p), buf) => p.read_to(offset, buf).await,
            (Leaf::Remote(r), ReadBuf::Mem(b)) => r.frames().run(r.read(offset, b)).await,
            (Leaf::Remote(_), ReadBuf::Fixed(f)) => {
                Err(IoError::needs_bytes("read", offset, f.len() as u64))
            }
        }
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        match (self, buf) {
            (Leaf::Local(p), buf) => p.write_from(offset, buf, fua).await,
            (Leaf::Remote(r), WriteBuf::Mem(b)) => r.frames().run(r.write(offset, b, fua)).await,
            (Leaf::Remote(_), WriteBuf::Fixed(f)) => {
                Err(IoError::needs_bytes("write", offset, f.len() as u64))
            }
        }
    }

    // A remote reference sends the request's bytes over a socket: it needs
    // them in memory.
    fn fixed(&self) -> bool {
        matches!(self, Leaf::Local(_))
    }

    async fn flush(&self) -> IoResult<()> {
        match self {
            Leaf::Local(p) => p.flush().await,
            Leaf::Remote(r) => r.frames().run(r.flush()).await,
        }
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        match self {
            Leaf::Local(p) => p.discard(offset, len).await,
            Leaf::Remote(r) => r.frames().run(r.discard(offset, len)).await,
        }
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        match self {
            Leaf::Local(p) => p.write_zeroes(offset, len).await,
            Leaf::Remote(r) => r.frames().run(r.write_zeroes(offset, len)).await,
        }
    }
}
