//! The runtime volume tree (spec [074]–[076]): the second-tier objects
//! (striping, mirroring, striping over mirroring) stacked over first-tier
//! partitions, built per queue thread from a [`VolumeDesc`].
//!
//! Every supported layout is one variant of the [`Volume`] enum, so the daemon
//! handles any layout with one concrete type and I/O dispatch is a `match`
//! (no boxing, no dynamic dispatch per I/O):
//!
//! | layout  | tree                                   |
//! |---------|----------------------------------------|
//! | linear  | `Linear<Partition>` (spec [061])        |
//! | stripe  | `Stripe<Linear<Partition>>`             |
//! | mirror  | `Mirror<Linear<Partition>>`             |
//! | raid10  | `Stripe<Mirror<Linear<Partition>>>` (Fig. 6: one striping object over mirroring objects over partitions) |
//! | stripe/raid10 during a move | `Stripe<Mirror<Linear<Partition>>>`: every column a mirror (of 1 leg for a stripe), the moving column's with the copy target as an extra leg ([`VolumeDesc::moving`]) |
//!
//! Each member (stripe column or mirror leg) is itself a concatenation of
//! partitions, so members can be assembled from free extents of several ALUs.
//!
//! Mirror health ([`MirrorHealth`]) is created once per volume by the daemon
//! and shared by every queue's tree: a leg failed on one queue is skipped by
//! all, and the failure is reported (persisted) once. A mirror whose health
//! carries a write-intent bitmap ([`crate::bitmap`]) gets, in every tree, its
//! own devices for the legs' bitmap copies ([`IntentCopy`], on the tree's
//! ring, at the locations set with [`WriteIntent::set_copy`](crate::bitmap::WriteIntent::set_copy)).

use std::fs::File;
use std::sync::Arc;

use crate::bitmap::IntentCopy;
use crate::mirror::{Mirror, MirrorHealth, MirrorState, MAX_LEGS};
use crate::stripe::Stripe;
use crate::swap::{LegSlot, SwapLeg};
use crate::{
    build_linear, BlockDev, IoResult, Leaf, Limits, Linear, Piece, ReadBuf, Ring, WriteBuf,
};

/// Volume layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Concatenation of the pieces of one member.
    Linear,
    /// RAID0 over N members.
    Stripe {
        /// Chunk size in bytes (power of two, >= 4096).
        chunk: u32,
    },
    /// RAID1 over `copies` legs.
    Mirror,
    /// RAID0 over N mirrors of `copies` legs each.
    Raid10 {
        /// Chunk size in bytes (power of two, >= 4096).
        chunk: u32,
    },
}

/// One member: a concatenation of pieces, local or remote.
#[derive(Clone, Debug)]
pub struct MemberDesc {
    /// Pieces in member order.
    pub pieces: Vec<Piece>,
}

impl MemberDesc {
    /// A member of local ALU pieces `(alu, start, len)`.
    pub fn local(pieces: Vec<(Arc<File>, u64, u64)>) -> MemberDesc {
        MemberDesc {
            pieces: pieces.into_iter().map(Piece::from).collect(),
        }
    }

    /// Size in bytes (sum of the piece lengths).
    pub fn size(&self) -> u64 {
        self.pieces
            .iter()
            .fold(0u64, |a, p| a.saturating_add(p.len()))
    }
}

/// Description of a volume, shared by the queue threads.
#[derive(Clone, Debug)]
pub struct VolumeDesc {
    /// Layout.
    pub layout: Layout,
    /// Legs per mirror (1 for linear and stripe).
    pub copies: usize,
    /// Members. Linear: 1; stripe: N; mirror: `copies`; raid10: `N * copies`,
    /// member `m` being leg `m % copies` of stripe column `m / copies`. During
    /// a move one more: the target, last.
    pub members: Vec<MemberDesc>,
    /// One per mirror: 1 for mirror, N for raid10 and for a stripe during a
    /// move, none otherwise. Created once per volume and shared by every queue.
    pub health: Vec<Arc<MirrorHealth>>,
    /// A move in progress (stripe and raid10 only): `Some(g)` when `members`
    /// holds one member more than the layout, the last one, an extra leg of
    /// group `g` (stripe column `g`, or mirror `g` of a raid10) that a move
    /// copies onto. `None` otherwise.
    pub moving: Option<usize>,
}

/// Why a volume description was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Wrong number of members for the layout.
    #[error("{layout}: expected {expected} members, got {got}")]
    MemberCount {
        /// Layout name.
        layout: &'static str,
        /// What was expected.
        expected: String,
        /// What was given.
        got: usize,
    },
    /// Wrong `copies` for the layout.
    #[error("{layout}: invalid copies {copies} (expected {expected})")]
    Copies {
        /// Layout name.
        layout: &'static str,
        /// What was given.
        copies: usize,
        /// What was expected.
        expected: String,
    },
    /// Wrong number of mirror health objects.
    #[error("{layout}: expected {expected} mirror health objects, got {got}")]
    HealthCount {
        /// Layout name.
        layout: &'static str,
        /// One per mirror.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// A mirror's health describes a different number of legs.
    #[error("mirror {mirror}: health describes {health_legs} legs, the mirror has {legs}")]
    HealthLegs {
        /// Mirror index.
        mirror: usize,
        /// Legs in the health object.
        health_legs: usize,
        /// Legs of the mirror.
        legs: usize,
    },
    /// Chunk size not a power of two or below 4096.
    #[error("chunk size {0} must be a power of two of at least 4096 bytes")]
    Chunk(u32),
    /// Chunk size not a multiple of the members' logical block.
    #[error("chunk size {chunk} is not a multiple of the logical block size {logical_block}")]
    ChunkBlock {
        /// Chunk size.
        chunk: u32,
        /// Members' logical block size.
        logical_block: u32,
    },
    /// Members of different sizes.
    #[error(
        "member {member} is {size} bytes but member 0 is {expected}; members must be of equal size"
    )]
    UnequalMembers {
        /// Offending member.
        member: usize,
        /// Its size.
        size: u64,
        /// Size of member 0.
        expected: u64,
    },
    /// Members smaller than one chunk (or empty).
    #[error("members are {size} bytes, need at least {min}")]
    MemberTooSmall {
        /// Member size.
        size: u64,
        /// Minimum.
        min: u64,
    },
    /// A mirror's write-intent bitmap cannot be used (copies missing or of
    /// the wrong geometry).
    #[error("write-intent bitmap: {0}")]
    WriteIntent(String),
    /// A move's extra leg on a layout without stripe columns.
    #[error("{layout}: a move's extra leg needs a stripe or raid10 layout")]
    Moving {
        /// Layout name.
        layout: &'static str,
    },
    /// A move's extra leg for a column the volume does not have.
    #[error("move onto column {group}, the volume has {groups} columns")]
    MovingGroup {
        /// The column given.
        group: usize,
        /// Columns of the volume.
        groups: usize,
    },
}

/// A volume tree for one queue thread.
pub enum Volume<R: Ring + Clone> {
    /// Concatenation.
    Linear(Linear<Leaf<R>>),
    /// RAID0.
    Stripe(Stripe<Linear<Leaf<R>>>),
    /// RAID1; its legs can be replaced online ([`SwapLeg`]).
    Mirror(Mirror<SwapLeg<R>, IntentCopy<R>>),
    /// RAID10: striping over mirroring. Also a stripe or raid10 during a
    /// move ([`VolumeDesc::moving`]).
    Raid10(Stripe<Mirror<SwapLeg<R>, IntentCopy<R>>>),
}

impl<R: Ring + Clone> Volume<R> {
    /// Whether any mirror of the volume has a failed leg (it still serves I/O
    /// unless a mirror has no leg left, see [`Volume::failed`]).
    pub fn degraded(&self) -> bool {
        self.mirror_states().any(|s| s != MirrorState::Optimal)
    }

    /// Whether some mirror has no healthy leg left (part of the volume is
    /// unreadable).
    pub fn failed(&self) -> bool {
        self.mirror_states().any(|s| s == MirrorState::Failed)
    }

    /// State of every mirror, in stripe order (empty for linear and stripe).
    pub fn mirror_states(&self) -> impl Iterator<Item = MirrorState> + '_ {
        self.mirrors().iter().map(|m| m.state())
    }

    /// Every mirror of the volume, in stripe order: one for a mirror, one per
    /// stripe column for RAID10 and for a stripe during a move, none for
    /// linear and stripe otherwise. Mirror `i` uses
    /// `VolumeDesc::health[i]`; the resync jobs ([`crate::resync`]) run per
    /// mirror.
    pub fn mirrors(&self) -> &[Mirror<SwapLeg<R>, IntentCopy<R>>] {
        match self {
            Volume::Linear(_) | Volume::Stripe(_) => &[],
            Volume::Mirror(m) => std::slice::from_ref(m),
            Volume::Raid10(s) => s.members(),
        }
    }
}

fn check_chunk(chunk: u32) -> Result<(), BuildError> {
    if chunk.is_power_of_two() && chunk >= crate::stripe::MIN_CHUNK {
        Ok(())
    } else {
        Err(BuildError::Chunk(chunk))
    }
}

fn check_copies(layout: &'static str, copies: usize, mirrored: bool) -> Result<(), BuildError> {
    let ok = if mirrored {
        (2..=MAX_LEGS).contains(&copies)
    } else {
        copies == 1
    };
    if ok {
        Ok(())
    } else {
        Err(BuildError::Copies {
            layout,
            copies,
            expected: if mirrored {
                format!("2 to {MAX_LEGS}")
            } else {
                "1".into()
            },
        })
    }
}

/// Mirror `i` has `copies` legs, one more if it is `moving`.
fn check_health(
    layout: &'static str,
    health: &[Arc<MirrorHealth>],
    mirrors: usize,
    copies: usize,
    moving: Option<usize>,
) -> Result<(), BuildError> {
    if health.len() != mirrors {
        return Err(BuildError::HealthCount {
            layout,
            expected: mirrors,
            got: health.len(),
        });
    }
    let legs = |i| copies + usize::from(moving == Some(i));
    if let Some((i, h)) = health
        .iter()
        .enumerate()
        .find(|&(i, h)| h.legs() != legs(i))
    {
        return Err(BuildError::HealthLegs {
            mirror: i,
            health_legs: h.legs(),
            legs: legs(i),
        });
    }
    Ok(())
}

/// Refuse members of different sizes (rather than silently using the
/// smallest: a mismatch means the description is wrong) and empty members.
fn check_equal(members: &[MemberDesc]) -> Result<(), BuildError> {
    let expected = members[0].size();
    if let Some((i, m)) = members
        .iter()
        .enumerate()
        .find(|(_, m)| m.size() != expected)
    {
        return Err(BuildError::UnequalMembers {
            member: i,
            size: m.size(),
            expected,
        });
    }
    if expected == 0 {
        return Err(BuildError::MemberTooSmall { size: 0, min: 1 });
    }
    Ok(())
}

fn member_count(layout: &'static str, expected: String, got: usize) -> BuildError {
    BuildError::MemberCount {
        layout,
        expected,
        got,
    }
}

/// Build the volume tree of `desc` for one queue thread, with every partition
/// submitting on `ring`. Validates the description first (counts, copies,
/// health objects, equal member sizes, chunk size); nothing is opened here.
pub fn build_volume<R: Ring + Clone>(desc: &VolumeDesc, ring: R) -> Result<Volume<R>, BuildError> {
    if let Some(g) = desc.moving {
        return build_moving(desc, g, ring);
    }
    let n = desc.members.len();
    let member = |m: &MemberDesc| build_linear(&m.pieces, ring.clone());
    match desc.layout {
        Layout::Linear => {
            check_copies("linear", desc.copies, false)?;
            if n != 1 {
                return Err(member_count("linear", "exactly 1".into(), n));
            }
            check_health("linear", &desc.health, 0, 1, None)?;
            Ok(Volume::Linear(member(&desc.members[0])))
        }
        Layout::Stripe { chunk } => {
            check_copies("stripe", desc.copies, false)?;
            if n < 2 {
                return Err(member_count("stripe", "at least 2".into(), n));
            }
            check_health("stripe", &desc.health, 0, 1, None)?;
            check_chunk(chunk)?;
            check_equal(&desc.members)?;
            let members = desc.members.iter().map(member).collect();
            Ok(Volume::Stripe(Stripe::new(members, chunk)?))
        }
        Layout::Mirror => {
            check_copies("mirror", desc.copies, true)?;
            if n != desc.copies {
                return Err(member_count(
                    "mirror",
                    format!("copies = {}", desc.copies),
                    n,
                ));
            }
            check_health("mirror", &desc.health, 1, desc.copies, None)?;
            check_equal(&desc.members)?;
            let legs = swap_legs(&desc.members, &desc.health[0], &ring);
            let copies = intent_copies(0, &desc.health[0], &ring)?;
            Ok(Volume::Mirror(Mirror::with_copies(
                legs,
                copies,
                desc.health[0].clone(),
            )?))
        }
        Layout::Raid10 { chunk } => {
            let copies = desc.copies;
            check_copies("raid10", copies, true)?;
            if n < 2 * copies || !n.is_multiple_of(copies) {
                return Err(member_count(
                    "raid10",
                    format!("a multiple of copies = {copies}, at least 2 stripes"),
                    n,
                ));
            }
            let stripes = n / copies;
            check_health("raid10", &desc.health, stripes, copies, None)?;
            check_chunk(chunk)?;
            check_equal(&desc.members)?;
            let mirrors = desc
                .members
                .chunks(copies)
                .zip(&desc.health)
                .enumerate()
                .map(|(i, (legs, h))| column(i, legs, h, &ring))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Volume::Raid10(Stripe::new(mirrors, chunk)?))
        }
    }
}

/// A stripe or raid10 whose column `g` has the move's target (the last
/// member) as an extra leg: every column is a mirror, so the tree has one
/// type whichever column moves.
fn build_moving<R: Ring + Clone>(
    desc: &VolumeDesc,
    g: usize,
    ring: R,
) -> Result<Volume<R>, BuildError> {
    let (layout, chunk, mirrored) = match desc.layout {
        Layout::Linear => return Err(BuildError::Moving { layout: "linear" }),
        Layout::Mirror => return Err(BuildError::Moving { layout: "mirror" }),
        Layout::Stripe { chunk } => ("stripe", chunk, false),
        Layout::Raid10 { chunk } => ("raid10", chunk, true),
    };
    let copies = desc.copies;
    check_copies(layout, copies, mirrored)?;
    if copies + 1 > MAX_LEGS {
        return Err(BuildError::Copies {
            layout,
            copies,
            expected: format!("2 to {} during a move", MAX_LEGS - 1),
        });
    }
    let n = desc.members.len();
    let stripes = n.saturating_sub(1) / copies;
    if n == 0 || !(n - 1).is_multiple_of(copies) || stripes < 2 {
        return Err(member_count(
            layout,
            format!("{copies} per column, at least 2 columns, plus the move's target"),
            n,
        ));
    }
    if g >= stripes {
        return Err(BuildError::MovingGroup {
            group: g,
            groups: stripes,
        });
    }
    check_health(layout, &desc.health, stripes, copies, Some(g))?;
    check_chunk(chunk)?;
    check_equal(&desc.members)?;
    let (columns, target) = desc.members.split_at(stripes * copies);
    let mirrors = columns
        .chunks(copies)
        .zip(&desc.health)
        .enumerate()
        .map(|(i, (legs, h))| {
            if i == g {
                column(i, &[legs, target].concat(), h, &ring)
            } else {
                column(i, legs, h, &ring)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Volume::Raid10(Stripe::new(mirrors, chunk)?))
}

/// Mirror `i` of a striped tree, over `legs`.
fn column<R: Ring + Clone>(
    i: usize,
    legs: &[MemberDesc],
    health: &Arc<MirrorHealth>,
    ring: &R,
) -> Result<Mirror<SwapLeg<R>, IntentCopy<R>>, BuildError> {
    Mirror::with_copies(
        swap_legs(legs, health, ring),
        intent_copies(i, health, ring)?,
        health.clone(),
    )
}

/// This tree's devices for mirror `mirror`'s write-intent copies (none without
/// a bitmap); every leg's location must be set.
fn intent_copies<R: Ring + Clone>(
    mirror: usize,
    health: &Arc<MirrorHealth>,
    ring: &R,
) -> Result<Vec<IntentCopy<R>>, BuildError> {
    let Some(wi) = health.write_intent() else {
        return Ok(Vec::new());
    };
    let copies = wi.copies_on(ring.clone());
    if let Some(leg) = copies.iter().position(|c| !c.is_placed()) {
        return Err(BuildError::WriteIntent(format!(
            "mirror {mirror}: no location set for the copy of leg {leg}"
        )));
    }
    Ok(copies)
}

/// This queue's instances of a mirror's legs, over slots shared through the
/// mirror's health record (created by the first tree built over it).
fn swap_legs<R: Ring + Clone>(
    members: &[MemberDesc],
    health: &Arc<MirrorHealth>,
    ring: &R,
) -> Vec<SwapLeg<R>> {
    let slots = health.slots_or_init(|| {
        members
            .iter()
            .map(|m| Arc::new(LegSlot::new(m.clone())))
            .collect()
    });
    slots
        .iter()
        .map(|slot| SwapLeg::new(slot.clone(), ring.clone()))
        .collect()
}

impl<R: Ring + Clone> BlockDev for Volume<R> {
    fn size(&self) -> u64 {
        match self {
            Volume::Linear(v) => v.size(),
            Volume::Stripe(v) => v.size(),
            Volume::Mirror(v) => v.size(),
            Volume::Raid10(v) => v.size(),
        }
    }

    fn limits(&self) -> Limits {
        match self {
            Volume::Linear(v) => v.limits(),
            Volume::Stripe(v) => v.limits(),
            Volume::Mirror(v) => v.limits(),
            Volume::Raid10(v) => v.limits(),
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
            Volume::Linear(v) => v.read_to(offset, buf).await,
            Volume::Stripe(v) => v.read_to(offset, buf).await,
            Volume::Mirror(v) => v.read_to(offset, buf).await,
            Volume::Raid10(v) => v.read_to(offset, buf).await,
        }
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        match self {
            Volume::Linear(v) => v.write_from(offset, buf, fua).await,
            Volume::Stripe(v) => v.write_from(offset, buf, fua).await,
            Volume::Mirror(v) => v.write_from(offset, buf, fua).await,
            Volume::Raid10(v) => v.write_from(offset, buf, fua).await,
        }
    }

    fn fixed(&self) -> bool {
        match self {
            Volume::Linear(v) => v.fixed(),
            Volume::Stripe(v) => v.fixed(),
            Volume::Mirror(v) => v.fixed(),
            Volume::Raid10(v) => v.fixed(),
        }
    }

    async fn flush(&self) -> IoResult<()> {
        match self {
            Volume::Linear(v) => v.flush().await,
            Volume::Stripe(v) => v.flush().await,
            Volume::Mirror(v) => v.flush().await,
            Volume::Raid10(v) => v.flush().await,
        }
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        match self {
            Volume::Linear(v) => v.discard(offset, len).await,
            Volume::Stripe(v) => v.discard(offset, len).await,
            Volume::Mirror(v) => v.discard(offset, len).await,
            Volume::Raid10(v) => v.discard(offset, len).await,
        }
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        match self {
            Volume::Linear(v) => v.write_zeroes(offset, len).await,
            Volume::Stripe(v) => v.write_zeroes(offset, len).await,
            Volume::Mirror(v) => v.write_zeroes(offset, len).await,
            Volume::Raid10(v) => v.write_zeroes(offset, len).await,
        }
    }
}
