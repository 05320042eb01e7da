//! Write-intent bitmaps in the daemon (MD's bitmap; spec [0169]): placing
//! each mirror leg's copy in the MDR slot the object database gave it,
//! formatting them when a volume is created, loading them when it is
//! assembled, and sweeping them lazily from a thread of their own.
//!
//! After an unclean stop the loaded bits say which regions may differ
//! between legs: a `resync` job copies only those
//! ([`tierblk_stack::resync_dirty`]). Until it is done the bitmap stays
//! *unsynced* (reads of dirty regions go to the leg the resync copies from,
//! nothing is cleared). Volumes created before bitmaps existed have none and
//! keep the full repairing scrub.

use super::*;
use crate::proto::BitmapView;
use std::sync::Mutex;
use tierblk_stack::bitmap::{IntentId, WriteIntent};
use tierblk_stack::uring::LocalRing;

/// How often idle regions are considered for clearing (two idle passes in a
/// row clear a region).
pub const SWEEP_EVERY: Duration = Duration::from_secs(4);

/// The mirrors whose bitmaps the sweeper clears: one entry per online volume.
/// The sweeper holds the lock for a whole pass, so a volume taken offline (and
/// perhaps removed, its slots reused) is never swept afterwards.
pub type SweepList = Arc<Mutex<BTreeMap<String, Vec<Arc<MirrorHealth>>>>>;

pub(super) fn ring() -> Result<LocalRing, String> {
    LocalRing::new(8).map_err(|e| format!("cannot set up io_uring: {e}"))
}

/// Sweep every listed bitmap every [`SWEEP_EVERY`], forever, on this thread's
/// own ring (never the event loop's: a copy failing a write fails its leg,
/// which waits for the event loop).
pub fn spawn_sweeper(list: SweepList) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("wi-sweep".into())
        .spawn(move || {
            let ring = match ring() {
                Ok(r) => r,
                Err(e) => return error!("write-intent sweeper: {e}"),
            };
            loop {
                std::thread::sleep(SWEEP_EVERY);
                let list = list.lock().unwrap_or_else(|e| e.into_inner());
                for (volume, mirrors) in list.iter() {
                    for h in mirrors {
                        let Some(wi) = h.write_intent() else { continue };
                        let copies = wi.copies_on(ring.clone());
                        if let Err(e) = ring.block_on(wi.sweep(h, &copies)) {
                            warn!(volume = %volume, "write-intent sweep: {e}");
                        }
                    }
                }
            }
        })
        .map(|_| ())
}

impl Daemon {
    /// Mirror `j`'s bitmap with each leg's copy placed (a leg whose ALU is
    /// gone gets the read-only stand-in: its copy is never written), or `None`
    /// for a volume without bitmaps.
    fn place_intent(&mut self, v: &VolumeDef, j: u16) -> Result<Option<WriteIntent>, String> {
        if v.wi_slots.is_empty() {
            return Ok(None);
        }
        // A copy on a peer's ALU would need a remote reference into its
        // metadata region, which `part:` exports never reach: a mirror with
        // a leg in another SP runs without a bitmap (a crash resyncs it
        // whole, see `bitmaps_cover`).
        if self.remote_leg(v, j) {
            return Ok(None);
        }
        let wi = WriteIntent::new(
            IntentId {
                volume: v.id,
                mirror: u32::from(j),
            },
            v.legs_of(usize::from(j)),
            v.layout.member_size(v.size),
        )
        .map_err(|e| format!("volume {}: write-intent bitmap: {e}", v.name))?;
        for (leg, m) in v.group_members(usize::from(j)).into_iter().enumerate() {
            let (alu, off) = v
                .wi_location(m)
                .ok_or_else(|| format!("volume {}: member {m}: no write-intent slot", v.name))?;
            // A failed leg's copy is never written: its device stays closed.
            let failed = matches!(
                v.members.get(usize::from(m)),
                Some(MemberHealth::Failed { .. })
            );
            let file = if failed {
                absent_alu()?
            } else {
                self.data_file(alu).or_else(|_| absent_alu())?
            };
            wi.set_copy(leg, file, off);
        }
        Ok(Some(wi))
    }

    /// Whether a leg of mirror `j` of `v` is on a peer's ALU.
    fn remote_leg(&self, v: &VolumeDef, j: u16) -> bool {
        v.group_members(usize::from(j)).into_iter().any(|m| {
            v.wi_location(m)
                .and_then(|(alu, _)| self.store.path_of(alu))
                .is_some_and(|p| self.peer_of(p).is_some())
        })
    }

    /// Whether `v`'s bitmaps mark every region an unclean stop may have left
    /// different between its legs, so that a resync of the dirty regions is
    /// enough: every mirror of `v` ran with a bitmap, and the master that ran
    /// it was this SP. Not so for a mirror with a leg on a peer's ALU (it runs
    /// without one: `place_intent`), nor, among peers, when this SP cannot
    /// tell that it was the master before (a takeover: the old master ran
    /// mirrors on this SP's ALUs as remote, without bitmaps; a peer that does
    /// not answer may have been the master), nor for a leg whose ALU is not
    /// present (it may have been a peer's), nor for a volume other SPs
    /// expose (their writes in flight when this one stopped are in no bitmap
    /// of its). Otherwise the whole volume is resynced.
    pub(super) fn bitmaps_cover(&self, v: &VolumeDef) -> bool {
        if v.wi_slots.is_empty() || !self.exposing_peers(v).is_empty() {
            return false;
        }
        let Some(c) = self.cluster.as_ref() else {
            return true;
        };
        let master_elsewhere = c.peers.values().any(|p| {
            p.misses >= super::cluster::MISSES || p.view.as_ref().is_none_or(|s| s.master)
        });
        if master_elsewhere {
            return false;
        }
        (0..v.mirror_count()).all(|j| {
            v.group_members(j).into_iter().all(|m| {
                v.wi_location(m)
                    .and_then(|(alu, _)| self.store.path_of(alu))
                    .is_some_and(|p| self.peer_of(p).is_none())
            })
        })
    }

    /// Write every leg's bitmap copy of a new volume, all clear (its legs
    /// hold nothing yet, as `mdadm --assume-clean`).
    pub(super) fn format_intents(&mut self, v: &VolumeDef) -> Result<(), String> {
        let ring = ring()?;
        for j in 0..v.mirror_count() as u16 {
            if let Some(wi) = self.place_intent(v, j)? {
                let wi = Arc::new(wi);
                ring.block_on(wi.format(&wi.copies_on(ring.clone())))
                    .map_err(|e| format!("volume {}: cannot format its bitmap: {e}", v.name))?;
            }
        }
        Ok(())
    }

    /// Mirror `j`'s bitmap, loaded from its copies (the union of the valid
    /// ones); in sync unless a resync job is pending for the volume.
    pub(super) fn load_intent(
        &mut self,
        v: &VolumeDef,
        j: u16,
    ) -> Result<Option<Arc<WriteIntent>>, String> {
        let Some(wi) = self.place_intent(v, j)? else {
            return Ok(None);
        };
        let wi = Arc::new(wi);
        let ring = ring()?;
        let report = ring.block_on(wi.load(&wi.copies_on(ring.clone())));
        if report.full {
            warn!(volume = %v.name, mirror = j, "no valid write-intent copy: every region is dirty");
        }
        let pending =
            self.store.jobs().iter().any(|job| {
                job.volume == v.id && job.kind == JobKind::Resync && !job.state.finished()
            });
        if !pending {
            wi.mark_synced();
        }
        info!(volume = %v.name, mirror = j, dirty = report.dirty, resync = pending, "write-intent bitmap loaded");
        Ok(Some(wi))
    }

    /// Point leg `leg` of mirror `mirror` at its new copy (a replaced
    /// member's slot on its new ALU) and write the bitmap there.
    pub(super) fn move_intent_copy(
        &mut self,
        def: &VolumeDef,
        health: &Arc<MirrorHealth>,
        member: u16,
    ) -> Result<(), String> {
        let Some(wi) = health.write_intent() else {
            return Ok(());
        };
        let (alu, off) = def
            .wi_location(member)
            .ok_or_else(|| format!("volume {}: member {member}: no write-intent slot", def.name))?;
        wi.set_copy(def.leg_of(member).1, self.data_file(alu)?, off);
        let ring = ring()?;
        ring.block_on(wi.persist(health, &wi.copies_on(ring.clone())))
            .map_err(|e| {
                format!(
                    "volume {}: cannot write the new leg's bitmap: {e}",
                    def.name
                )
            })
    }

    /// Write every mirror's bitmap to all its legs' copies (after a reshape:
    /// a new leg's slot holds nothing valid yet).
    pub(super) fn persist_intents(
        &mut self,
        def: &VolumeDef,
        health: &[Arc<MirrorHealth>],
    ) -> Result<(), String> {
        let ring = ring()?;
        for h in health {
            if let Some(wi) = h.write_intent() {
                ring.block_on(wi.persist(h, &wi.copies_on(ring.clone())))
                    .map_err(|e| format!("volume {}: cannot write its bitmap: {e}", def.name))?;
            }
        }
        Ok(())
    }

    /// Other SPs write `v` while some of its legs are failed: their writes
    /// are in no bitmap of this SP's, so every region of those mirrors is
    /// marked dirty (on disk): a re-add of the leg, even after the other SPs
    /// stopped exposing `v`, copies all of it (`WriteIntent::mark_all`).
    pub(super) fn mark_unseen_writes(&self, v: &VolumeDef) {
        if self.exposing_peers(v).is_empty() {
            return;
        }
        let Some((_, health)) = self.job_tree(&v.name) else {
            return;
        };
        let ring = match ring() {
            Ok(r) => r,
            Err(e) => return error!(volume = %v.name, "cannot mark the bitmap: {e}"),
        };
        for (j, h) in health.iter().enumerate() {
            let Some(wi) = h.write_intent().filter(|_| h.failed_mask() != 0) else {
                continue;
            };
            match ring.block_on(wi.mark_all(h, &wi.copies_on(ring.clone()))) {
                Ok(()) => {
                    info!(volume = %v.name, mirror = j, "failed leg while other SPs write: every region dirty")
                }
                Err(e) => {
                    error!(volume = %v.name, mirror = j, "cannot mark every region dirty: {e}")
                }
            }
        }
    }

    /// List (or unlist) an online volume's mirrors for the sweeper.
    pub(super) fn sweep_list_set(&self, name: &str, health: Option<&[Arc<MirrorHealth>]>) {
        let mut l = self.sweep.lock().unwrap_or_else(|e| e.into_inner());
        match health {
            Some(h) if h.iter().any(|m| m.write_intent().is_some()) => {
                l.insert(name.to_string(), h.to_vec());
            }
            _ => {
                l.remove(name);
            }
        }
    }
}

/// What `vol show` says of a volume's bitmaps (`None` without any).
pub(super) fn bitmap_view(health: &[Arc<MirrorHealth>]) -> Option<BitmapView> {
    let wis: Vec<&Arc<WriteIntent>> = health.iter().filter_map(|h| h.write_intent()).collect();
    let first = wis.first()?;
    Some(BitmapView {
        region_size: first.region_size(),
        regions: wis.iter().map(|w| w.regions() as u64).sum(),
        dirty: wis.iter().map(|w| w.dirty_regions() as u64).sum(),
        resync_pending: wis.iter().any(|w| w.unsynced()),
    })
}
