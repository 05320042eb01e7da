//! The top of an exposed volume's tree: what a ublk queue (or a job) serves.
//!
//! Every exposed volume is either
//! * an *origin*: the volume's tree under a [`SnapshotOrigin`] that follows
//!   the volume's [`SnapshotSet`] (empty for a volume without snapshots, when
//!   the origin is a pass-through), so a snapshot can be taken while the
//!   volume is online (spec VIII, \[0156\]); or
//! * a *view*: a read-only snapshot device ([`SnapshotView`], \[0157\]) over
//!   the origin's tree and the snapshot's COW volume.
//!
//! Either sits behind the volume's suspend/resume [`Gate`] (spec IX,
//! \[0171\]): the barrier at which snapshots are added and removed, and at
//! which the whole tree is replaced ([`TopSlot`], dm's table reload: a leg
//! added or removed, a member moved, the volume grown; spec VI, \[0109\]–
//! \[0115\]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tierblk_stack::gate::{Gate, Gated};
use tierblk_stack::volume::{build_volume, Volume, VolumeDesc};
use tierblk_stack::{
    BlockDev, IoError, IoResult, Limits, ReadBuf, Ring, SnapshotOrigin, SnapshotSet, SnapshotState,
    SnapshotView, WriteBuf,
};
use tracing::error;

/// The snapshots of one origin: each keyed by its COW volume's description.
pub type Snapshots = SnapshotSet<Arc<VolumeDesc>>;

/// What every queue of an exposed volume builds its own instance from.
#[derive(Clone)]
pub enum TopDesc {
    /// A writable volume and its (possibly empty) snapshot set.
    Origin {
        desc: Arc<VolumeDesc>,
        snapshots: Arc<Snapshots>,
    },
    /// A read-only snapshot of `origin`.
    View {
        origin: Arc<VolumeDesc>,
        cow: Arc<VolumeDesc>,
        state: Arc<SnapshotState>,
    },
}

impl TopDesc {
    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        matches!(self, TopDesc::View { .. })
    }
}

/// One queue's instance of a [`TopDesc`].
pub enum Top<R: Ring + Clone> {
    Origin(SnapshotOrigin<Volume<R>, Volume<R>, Arc<VolumeDesc>>),
    View(SnapshotView<Volume<R>, Volume<R>>),
}

/// The replaceable tree of one exposed volume, shared by its queues.
///
/// Each ublk queue holds its own instance of the tree, so a new tree cannot
/// be handed over by mutating a shared object: the daemon publishes the new
/// description here and bumps the generation, and each queue builds its own
/// instance at its next request ([`Reloading`]). The daemon reloads only
/// while the volume's gate holds it suspended (nothing in flight), so no
/// request ever straddles two trees, and the first request after the resume
/// already runs on the new one (dm: suspend, load the new table, resume).
pub struct TopSlot {
    generation: AtomicU64,
    desc: Mutex<TopDesc>,
}

impl TopSlot {
    /// A slot holding `desc`, the volume's first tree.
    pub fn new(desc: TopDesc) -> Arc<TopSlot> {
        Arc::new(TopSlot {
            generation: AtomicU64::new(0),
            desc: Mutex::new(desc),
        })
    }

    /// Publish a new tree; every queue switches at its next request.
    pub fn reload(&self, desc: TopDesc) {
        *self.desc.lock().unwrap_or_else(|p| p.into_inner()) = desc;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the tree was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The current tree and its generation (read under the lock: `reload`
    /// bumps after storing, so the pair is never newer-generation-with-
    /// older-tree).
    pub fn current(&self) -> (u64, TopDesc) {
        let d = self.desc.lock().unwrap_or_else(|p| p.into_inner());
        (self.generation(), d.clone())
    }
}

/// Build one instance of `top` over `ring` (no gate, no reload: the
/// frontend's size probe and tests).
pub fn build_once<R: Ring + Clone + 'static>(top: &TopDesc, ring: R) -> Result<Top<R>, String> {
    Ok(match top {
        TopDesc::Origin { desc, snapshots } => {
            let vol = build_volume(desc, ring.clone()).map_err(|e| e.to_string())?;
            let make = Box::new(move |cow: &Arc<VolumeDesc>| {
                build_volume(cow, ring.clone()).map_err(|e| e.to_string())
            });
            Top::Origin(SnapshotOrigin::dynamic(vol, snapshots.clone(), make))
        }
        TopDesc::View { origin, cow, state } => {
            let o = build_volume(origin, ring.clone()).map_err(|e| e.to_string())?;
            let c = build_volume(cow, ring).map_err(|e| e.to_string())?;
            Top::View(SnapshotView::new(o, c, state.clone()))
        }
    })
}

/// Build one queue's instance of the tree in `slot` over `ring`, behind this
/// queue's handle of `gate`, following the slot's reloads.
pub fn build_top<R: Ring + Clone + 'static>(
    slot: &Arc<TopSlot>,
    ring: R,
    gate: &Arc<Gate>,
) -> Result<Gated<Reloading<R>>, String> {
    let (generation, desc) = slot.current();
    let top = build_once(&desc, ring.clone())?;
    Ok(Gated::new(
        Reloading {
            slot: slot.clone(),
            ring,
            current: RefCell::new((generation, Rc::new(top))),
        },
        gate.register(),
    ))
}

/// One queue's instance of a [`TopSlot`]'s tree, rebuilt when the slot's
/// generation moves. The hot path pays one atomic load and one reference
/// count increment.
pub struct Reloading<R: Ring + Clone> {
    slot: Arc<TopSlot>,
    ring: R,
    current: RefCell<(u64, Rc<Top<R>>)>,
}

impl<R: Ring + Clone + 'static> Reloading<R> {
    /// The tree to serve this request on. A tree that cannot be built fails
    /// the request (EIO) rather than serving the old one: the old tree may
    /// reference extents the new configuration has freed.
    fn top(&self, op: &'static str, offset: u64) -> IoResult<Rc<Top<R>>> {
        let generation = self.slot.generation();
        {
            let cur = self.current.borrow();
            if cur.0 == generation {
                return Ok(cur.1.clone());
            }
        }
        let (generation, desc) = self.slot.current();
        match build_once(&desc, self.ring.clone()) {
            Ok(t) => {
                let t = Rc::new(t);
                *self.current.borrow_mut() = (generation, t.clone());
                Ok(t)
            }
            Err(e) => {
                error!(generation, "cannot build the reloaded volume tree: {e}");
                Err(IoError::new(libc::EIO, op, offset, 0))
            }
        }
    }
}

impl<R: Ring + Clone + 'static> BlockDev for Reloading<R> {
    fn size(&self) -> u64 {
        self.current.borrow().1.size()
    }

    fn limits(&self) -> Limits {
        self.current.borrow().1.limits()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    async fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> IoResult<()> {
        self.top("read", offset)?.read_to(offset, buf).await
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        self.top("write", offset)?
            .write_from(offset, buf, fua)
            .await
    }

    // The tree in place as of the last request: a request that meets a
    // newer one is refused cleanly if that one cannot take the buffer.
    fn fixed(&self) -> bool {
        self.current.borrow().1.fixed()
    }

    async fn flush(&self) -> IoResult<()> {
        self.top("flush", 0)?.flush().await
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.top("discard", offset)?.discard(offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.top("write_zeroes", offset)?
            .write_zeroes(offset, len)
            .await
    }
}

impl<R: Ring + Clone> BlockDev for Top<R> {
    fn size(&self) -> u64 {
        match self {
            Top::Origin(o) => o.size(),
            Top::View(v) => v.size(),
        }
    }

    fn limits(&self) -> Limits {
        match self {
            Top::Origin(o) => o.limits(),
            Top::View(v) => v.limits(),
        }
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    async fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> IoResult<()> {
        match self {
            Top::Origin(o) => o.read_to(offset, buf).await,
            Top::View(v) => v.read_to(offset, buf).await,
        }
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        match self {
            Top::Origin(o) => o.write_from(offset, buf, fua).await,
            Top::View(v) => v.write_from(offset, buf, fua).await,
        }
    }

    fn fixed(&self) -> bool {
        match self {
            Top::Origin(o) => o.fixed(),
            Top::View(v) => v.fixed(),
        }
    }

    async fn flush(&self) -> IoResult<()> {
        match self {
            Top::Origin(o) => o.flush().await,
            Top::View(v) => v.flush().await,
        }
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        match self {
            Top::Origin(o) => o.discard(offset, len).await,
            Top::View(v) => v.discard(offset, len).await,
        }
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        match self {
            Top::Origin(o) => o.write_zeroes(offset, len).await,
            Top::View(v) => v.write_zeroes(offset, len).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use tierblk_stack::uring::LocalRing;
    use tierblk_stack::volume::{Layout, MemberDesc};

    const LEN: u64 = 64 << 10;

    /// An unlinked file of LEN bytes of `byte`.
    fn file_of(byte: u8) -> Arc<File> {
        let path = std::env::temp_dir().join(format!("tierblk-top-{}-{byte}", std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&vec![byte; LEN as usize]).unwrap();
        std::fs::remove_file(&path).unwrap();
        Arc::new(f)
    }

    fn linear(file: &Arc<File>, len: u64) -> TopDesc {
        TopDesc::Origin {
            desc: Arc::new(VolumeDesc {
                layout: Layout::Linear,
                copies: 1,
                members: vec![MemberDesc::local(vec![(file.clone(), 0, len)])],
                health: Vec::new(),
                moving: None,
            }),
            snapshots: SnapshotSet::new(Vec::new()),
        }
    }

    #[test]
    fn a_reload_reaches_every_queue_at_its_next_request() {
        let (a, b) = (file_of(0xaa), file_of(0xbb));
        let slot = TopSlot::new(linear(&a, LEN));
        let gate = Gate::new();
        let ring = LocalRing::new(8).unwrap();
        // Two queues, each its own instance.
        let q1 = build_top(&slot, ring.clone(), &gate).unwrap();
        let q2 = build_top(&slot, ring.clone(), &gate).unwrap();
        let mut buf = vec![0u8; 4096];
        ring.block_on(q1.read(0, &mut buf)).unwrap();
        assert!(buf.iter().all(|&x| x == 0xaa));

        // Reloaded under suspension (as the daemon does), with a larger tree.
        let held = gate.suspend(std::time::Duration::from_secs(1)).unwrap();
        slot.reload(linear(&b, LEN / 2));
        assert_eq!(slot.generation(), 1);
        drop(held);
        for q in [&q1, &q2] {
            ring.block_on(q.read(4096, &mut buf)).unwrap();
            assert!(buf.iter().all(|&x| x == 0xbb), "a queue kept the old tree");
            assert_eq!(q.size(), LEN / 2);
        }
        // Writes go to the new tree only.
        ring.block_on(q2.write(0, &[0x11; 4096], false)).unwrap();
        ring.block_on(q1.read(0, &mut buf)).unwrap();
        assert!(buf.iter().all(|&x| x == 0x11));
        let mut old = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&*a, &mut old, 0).unwrap();
        assert!(old.iter().all(|&x| x == 0xaa), "the old tree was written");
    }

    #[test]
    fn a_tree_that_cannot_be_built_fails_requests_instead_of_serving_the_old_one() {
        let a = file_of(0xcc);
        let slot = TopSlot::new(linear(&a, LEN));
        let gate = Gate::new();
        let ring = LocalRing::new(8).unwrap();
        let q = build_top(&slot, ring.clone(), &gate).unwrap();
        // A mirror description without its health record: refused by the builder.
        slot.reload(TopDesc::Origin {
            desc: Arc::new(VolumeDesc {
                layout: Layout::Mirror,
                copies: 2,
                members: vec![
                    MemberDesc::local(vec![(a.clone(), 0, LEN)]),
                    MemberDesc::local(vec![(a.clone(), 0, LEN)]),
                ],
                health: Vec::new(),
                moving: None,
            }),
            snapshots: SnapshotSet::new(Vec::new()),
        });
        let mut buf = vec![0u8; 4096];
        let e = ring.block_on(q.read(0, &mut buf)).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        assert!(ring.block_on(q.write(0, &buf, false)).is_err());
    }
}
