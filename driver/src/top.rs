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
//! \[0171\]): the barrier at which snapshots are added and removed.

use std::sync::Arc;
use tierblk_stack::gate::{Gate, Gated};
use tierblk_stack::volume::{build_volume, Volume, VolumeDesc};
use tierblk_stack::{
    BlockDev, IoResult, Limits, Ring, SnapshotOrigin, SnapshotSet, SnapshotState, SnapshotView,
};

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

/// Build one instance of `top` over `ring`, behind this queue's handle of
/// `gate`.
pub fn build_top<R: Ring + Clone + 'static>(
    top: &TopDesc,
    ring: R,
    gate: &Arc<Gate>,
) -> Result<Gated<Top<R>>, String> {
    let t = match top {
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
    };
    Ok(Gated::new(t, gate.register()))
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
        match self {
            Top::Origin(o) => o.read(offset, buf).await,
            Top::View(v) => v.read(offset, buf).await,
        }
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        match self {
            Top::Origin(o) => o.write(offset, buf, fua).await,
            Top::View(v) => v.write(offset, buf, fua).await,
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
