//! Changing a volume's shape while it is online (spec VI, [0109]–[0115];
//! claims 7–18 of 001_…): a mirror leg added or removed (lvconvert -m±1), a
//! member moved to another ALU or SP (pvmove), the volume grown by
//! concatenation (lvextend; a mirror's other legs then copy their new part).
//!
//! Every change runs the same sequence, Fig. 15 of section IX ([0171]):
//! 1. quiesce every SP exposing the volume (in-flight requests complete, new
//!    ones are held, jobs stop at their checkpoint) — dm's suspend;
//! 2. the master commits the new definition (the object database's
//!    two-phase commit: the old tier-1 partitions are freed only after the
//!    new definition is the committed one, and only once nothing above them
//!    runs: every tree is quiesced);
//! 3. each SP loads the new tree ([`crate::top::TopSlot`]): this SP in
//!    place, peers through a new assignment that they also load in place;
//!    a peer that cannot take it stays quiesced, never resumed on the old
//!    tree, whose extents may now be free;
//! 4. resume: held requests run on the new tree; jobs restart.
//!
//! A snapshot online here reads its origin's data through the origin's tree
//! (spec VIII): it is quiesced with the origin in step 1 and loads the
//! origin's new tree in step 3, so no snapshot read reaches an extent the new
//! definition freed.
//!
//! A move is a temporary mirror leg on the target (a `move` job copies it
//! with checkpoints persisted in the boot list, so it resumes after a crash
//! or kill -9), then a second reshape that drops the source member in the
//! same commit that marks the job done (`Store::finish_move`).

use super::*;
use crate::size::format_size;

impl Daemon {
    /// Run `op` (one object-database commit) on `name` under quiescence and
    /// load its result on every SP exposing the volume. A leg the change
    /// starts copying is rebuilding in every SP's tree (`fence`).
    fn reshape(
        &mut self,
        name: &str,
        what: &str,
        op: impl FnOnce(&mut Store) -> Result<(VolumeDef, Option<Job>), tierblk_meta::MetaError>,
    ) -> Result<(VolumeDef, Option<Job>), String> {
        let v = self.volume(name)?;
        if self.assigned.contains_key(name) {
            return Err(format!(
                "volume {name}: {what}: ask the master (this SP only exposes the volume)"
            ));
        }
        if v.snapshot.is_some() {
            return Err(format!("volume {name}: {what}: refused: it is a snapshot"));
        }
        if self.quiesced.contains_key(name) {
            return Err(format!(
                "volume {name}: {what}: refused: quiesced by an administrator (`tierblk vol resume {name}` first)"
            ));
        }
        let here = matches!(self.runtime.get(name), Some(Runtime::Online { .. }));
        // Exposed on other SPs only, its jobs running on the tree kept here.
        let remote = matches!(self.runtime.get(name), Some(Runtime::Remote { .. }));
        let peers = self.exposing_peers(&v);
        // A snapshot online here reads its origin's data through the origin's
        // tree: it is held with the origin and loads the new tree too, or it
        // would read extents the new definition may have freed.
        let views: Vec<String> = self
            .snapshots_of(v.id)
            .into_iter()
            .filter(|s| matches!(self.runtime.get(&s.name), Some(Runtime::Online { .. })))
            .map(|s| s.name)
            .collect();
        let hold = here || !peers.is_empty();
        if hold {
            self.quiesce(name)
                .map_err(|e| format!("volume {name}: {what}: {e}"))?;
        }
        let held_views = match self.hold_views(&views) {
            Ok(h) => h,
            Err(e) => {
                self.undo_hold(&v, hold, what);
                return Err(format!("volume {name}: {what}: {e}"));
            }
        };
        let (def, job) = match op(&mut self.store) {
            Ok(r) => r,
            // A write failed past the commit point (a peer's ALU gone in the
            // middle): the new definition is the committed one and the old
            // tree must not run again; load the new one as if it had worked.
            Err(e) if self.recover_store() && self.committed_elsewise(&v) => {
                warn!(volume = %name, "{what}: {e}; the disks hold the new definition");
                let def = self.volume(name)?;
                let job = self
                    .store
                    .jobs()
                    .into_iter()
                    .filter(|j| j.volume == def.id && !j.state.finished())
                    .max_by_key(|j| j.id);
                (def, job)
            }
            Err(e) => {
                self.undo_hold(&v, hold, what);
                self.release_views(&held_views);
                return Err(self.alu_paths_in(e.to_string()));
            }
        };
        if here {
            if let Err(e) = self.reload(&def) {
                // The old tree may reference freed extents: it never runs
                // again. The volume stays held until an administrator acts.
                error!(volume = %name, "{what} committed but the new tree cannot be loaded: {e}");
                self.log.emit("reshape-failed", Some(name), e.clone());
                return Err(format!(
                    "volume {name}: {what} committed, but the new tree cannot be loaded ({e}): the volume stays quiesced; `tierblk vol offline {name}` then `vol online` to rebuild it"
                ));
            }
        }
        if !here && !self.exposed_here(&def) {
            // The tree its jobs run on, of the new definition.
            self.hold_remote(&def, true);
        }
        let mut stale = Vec::new();
        for sp in &peers {
            if let Err(e) = self.assign(&def, sp) {
                // Held, never resumed on the old tree: its extents may be free.
                error!(volume = %name, %sp, "cannot load the new tree there: {e}; its I/O stays held");
                self.log
                    .emit("reshape-failed", Some(name), format!("sp {sp}: {e}"));
                stale.push(sp.clone());
            }
        }
        let stale_views = self.reload_views(&views);
        info!(volume = %name, "{what}: new tree loaded");
        self.log
            .emit("volume-reshaped", Some(name), what.to_string());
        if here || remote {
            if let Err(e) = self.resume_here(name) {
                error!(volume = %name, "cannot resume after the {what}: {e}");
            }
        }
        let resumable: Vec<String> = held_views
            .into_iter()
            .filter(|s| !stale_views.contains(s))
            .collect();
        self.release_views(&resumable);
        for sp in peers.iter().filter(|sp| !stale.contains(sp)) {
            if let Err(e) = self.hold(sp, name, false) {
                warn!(volume = %name, %sp, "cannot resume there: {e}");
            }
        }
        if !here && !remote {
            // Newly kept here by `hold_remote` (`resume_here` starts the
            // others' jobs).
            self.start_jobs_of(&def);
        }
        Ok((def, job))
    }

    /// Fig. 15 of section IX ([0171]; claims 1-8 and 17-18 of 003_...) after
    /// a failure the data path, the inventory or an administrator found,
    /// already persisted and already out of use (the failed legs are marked
    /// in every running tree, and the requests that found it have their
    /// answer): every SP exposing `name` quiesces (in-flight requests
    /// complete, new ones are held, its jobs stop), loads the tree built from
    /// the committed definition, which leaves the failed device out
    /// altogether, and resumes; the jobs start again on the new tree.
    pub(super) fn reconfigure(&mut self, name: &str, why: &str) {
        let Ok(v) = self.volume(name) else { return };
        // Only a mirror goes on without a failed part; a linear or stripe
        // volume has nothing to leave out.
        if self.assigned.contains_key(name) || v.snapshot.is_some() || v.mirror_count() == 0 {
            return;
        }
        if self.job_tree(name).is_none() && self.exposing_peers(&v).is_empty() {
            return;
        }
        if self.quiesced.contains_key(name) {
            // Its failed legs are out of use already; the tree that leaves
            // them out is loaded at its next reshape or online.
            info!(volume = %name, "{why}: quiesced by an administrator: not reconfigured now");
            return;
        }
        let what = format!("reconfiguration ({why})");
        // No commit: the failure is on disk already; `v` is the definition
        // the new tree is built from.
        if let Err(e) = self.reshape(name, &what, |_| Ok((v, None))) {
            error!(volume = %name, "{what}: {e}");
        }
    }

    /// A refused change leaves `v` as it was: every SP resumed (`hold`:
    /// they were quiesced), its jobs going on.
    fn undo_hold(&mut self, v: &VolumeDef, hold: bool, what: &str) {
        if hold {
            if let Err(r) = self.resume(&v.name) {
                error!(volume = %v.name, "cannot resume after a refused {what}: {r}");
            }
        }
    }

    /// `msg` (a store's refusal, which names ALUs by uuid) with each ALU's
    /// uuid followed by its path, as the administrator named it.
    fn alu_paths_in(&self, msg: String) -> String {
        self.store.alus().iter().fold(msg, |m, a| {
            let uuid = match &a.state {
                AluState::Owned { uuid } => uuid.to_string(),
                _ => return m,
            };
            m.replace(&uuid, &format!("{uuid} ({})", a.path))
        })
    }

    /// Whether the committed definition of `old`'s volume is no longer `old`.
    fn committed_elsewise(&self, old: &VolumeDef) -> bool {
        self.volume(&old.name)
            .is_ok_and(|now| now.definition() != old.definition())
    }

    /// Quiesce the snapshots `views` (online here) that are not already held
    /// by an administrator; returns those it quiesced. All or none.
    fn hold_views(&mut self, views: &[String]) -> Result<Vec<String>, String> {
        let free: Vec<String> = views
            .iter()
            .filter(|s| !self.quiesced.contains_key(*s))
            .cloned()
            .collect();
        let mut held = Vec::new();
        for s in &free {
            if let Err(e) = self.quiesce_here(s) {
                self.release_views(&held);
                return Err(format!("snapshot {s}: {e}"));
            }
            held.push(s.clone());
        }
        Ok(held)
    }

    fn release_views(&mut self, views: &[String]) {
        for s in views {
            if let Err(e) = self.resume_here(s) {
                error!(snapshot = %s, "cannot resume: {e}");
            }
        }
    }

    /// Point every snapshot in `views` (held) at its origin's new tree;
    /// returns those that could not be (they stay held: their old view may
    /// read freed extents).
    fn reload_views(&mut self, views: &[String]) -> Vec<String> {
        let mut stale = Vec::new();
        for s in views {
            let top = self.volume(s).and_then(|def| {
                let Some(Runtime::Online { desc, .. }) = self.runtime.get(s) else {
                    return Err(format!("snapshot {s}: not online"));
                };
                let cow = desc.clone();
                self.view_top(&def, cow)
            });
            match (top, self.runtime.get(s)) {
                (Ok(top), Some(Runtime::Online { slot, .. })) => slot.reload(top),
                (r, _) => {
                    let e = r.err().unwrap_or_else(|| "not online".into());
                    error!(snapshot = %s, "cannot load its origin's new tree: {e}; its I/O stays held");
                    self.log.emit("reshape-failed", Some(s), e);
                    stale.push(s.clone());
                }
            }
        }
        stale
    }

    /// Load `def`'s tree into the running volume in place (it is quiesced):
    /// queues build it at their next request, jobs at their restart.
    pub(super) fn reload(&mut self, def: &VolumeDef) -> Result<(), String> {
        let (desc, health) = self.assemble(def)?;
        // Every leg's bitmap copy valid before the first write (a new leg's
        // slot holds nothing yet).
        self.persist_intents(def, &health)?;
        let desc = Arc::new(desc);
        let snapshots = self.snapset(def.id);
        let Some(Runtime::Online {
            desc: d,
            health: h,
            slot,
            ..
        }) = self.runtime.get_mut(&def.name)
        else {
            return Ok(());
        };
        slot.reload(TopDesc::Origin {
            desc: desc.clone(),
            snapshots,
        });
        *d = desc;
        *h = health.clone();
        self.sweep_list_set(&def.name, Some(&health));
        self.carry_fences(&def.name);
        Ok(())
    }

    /// The owned ALU at `path`, or the owned ALU of SP `path` with the most
    /// free space that holds none of `v`'s members and fits `need` bytes.
    fn target_alu(&self, v: &VolumeDef, path: &str, need: u64) -> Result<Uuid, String> {
        let owned = self.owned_alus();
        if let Some((_, u)) = owned.iter().find(|(p, _)| p == path) {
            return Ok(*u);
        }
        let me = self.cluster.as_ref().map(|c| c.sp.name.clone());
        let is_sp = me.as_deref() == Some(path)
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.sp.peers.iter().any(|p| p.name == path));
        if !is_sp {
            return Err(format!(
                "{path}: neither an owned ALU (see `tierblk alu list`) nor a storage processor"
            ));
        }
        owned
            .iter()
            .filter(|(p, _)| self.peer_of(p).or_else(|| me.clone()).as_deref() == Some(path))
            .filter(|(_, u)| !v.segments.iter().any(|s| s.alu == *u))
            .map(|(_, u)| {
                let free: u64 = self.store.free_extents(*u).iter().map(|e| e.len).sum();
                (free, *u)
            })
            .filter(|(free, _)| *free >= need)
            .max_by_key(|(free, _)| *free)
            .map(|(_, u)| u)
            .ok_or_else(|| {
                format!(
                    "sp {path}: no owned ALU with {} MiB free that holds no piece of volume {}",
                    need.div_ceil(1 << 20),
                    v.name
                )
            })
    }

    /// The member of `v` named by `member` or by the ALU `from` holding it
    /// (a volume of one member needs neither).
    fn pick_member(
        &self,
        v: &VolumeDef,
        member: Option<u16>,
        from: Option<&str>,
    ) -> Result<u16, String> {
        let n = v.member_count();
        if let Some(m) = member {
            if usize::from(m) >= n {
                return Err(format!(
                    "volume {}: no member {m} (it has {n}; see `tierblk vol show {}`)",
                    v.name, v.name
                ));
            }
            return Ok(m);
        }
        if let Some(path) = from {
            let uuid = self
                .store
                .alus()
                .into_iter()
                .find(|a| a.path == path)
                .and_then(|a| match a.state {
                    AluState::Owned { uuid } => Some(uuid),
                    AluState::Damaged { uuid, .. } => uuid,
                    _ => None,
                })
                .ok_or_else(|| format!("alu {path}: not an ALU of this cluster"))?;
            let mut on: Vec<u16> = v
                .segments
                .iter()
                .filter(|s| s.alu == uuid)
                .map(|s| s.member)
                .collect();
            on.dedup();
            return match on.as_slice() {
                [m] => Ok(*m),
                [] => Err(format!("volume {}: no member on ALU {path}", v.name)),
                _ => Err(format!(
                    "volume {}: members {on:?} are on ALU {path}: name one with --member",
                    v.name
                )),
            };
        }
        if n == 1 {
            return Ok(0);
        }
        Err(format!(
            "volume {}: it has {n} members: name one with --member or --from",
            v.name
        ))
    }

    /// `vol add-leg NAME ALU|SP`: one more mirror leg, rebuilt online.
    pub(super) fn add_leg(&mut self, name: &str, to: &str, rate: u64) -> Result<Payload, String> {
        let v = self.volume(name)?;
        let alu = self.target_alu(&v, to, v.layout.member_size(v.size))?;
        let (_, job) = self.reshape(name, "add leg", |st| {
            let (def, mut job) = st.add_leg(name, alu)?;
            if rate > 0 {
                job.rate = rate;
                st.update_job(&job)?;
            }
            Ok((def, Some(job)))
        })?;
        let job = job.ok_or("add leg: no job")?;
        Ok(Payload::Job(self.job_view(&job)))
    }

    /// `vol remove-leg NAME --member M | --alu PATH`.
    pub(super) fn remove_leg(
        &mut self,
        name: &str,
        member: Option<u16>,
        alu: Option<&str>,
    ) -> Result<Payload, String> {
        let v = self.volume(name)?;
        if member.is_none() && alu.is_none() {
            return Err(format!(
                "volume {name}: name the leg to remove with --member or --alu"
            ));
        }
        let m = self.pick_member(&v, member, alu)?;
        let (def, _) =
            self.reshape(name, "remove leg", |st| Ok((st.remove_leg(name, m)?, None)))?;
        Ok(Payload::Volume(self.volume_view(&def)))
    }

    /// `vol move NAME --to ALU|SP`: a temporary leg on the target, copied by
    /// a `move` job; the source member is dropped when the copy is done.
    pub(super) fn move_member(
        &mut self,
        name: &str,
        to: &str,
        member: Option<u16>,
        from: Option<&str>,
        rate: u64,
    ) -> Result<Payload, String> {
        let v = self.volume(name)?;
        let m = self.pick_member(&v, member, from)?;
        let alu = self.target_alu(&v, to, v.layout.member_size(v.size))?;
        let (_, job) = self.reshape(name, "move", |st| {
            let (def, mut job) = st.move_member(name, m, alu)?;
            if rate > 0 {
                job.rate = rate;
                st.update_job(&job)?;
            }
            Ok((def, Some(job)))
        })?;
        let job = job.ok_or("move: no job")?;
        Ok(Payload::Job(self.job_view(&job)))
    }

    /// A move's copy is complete: drop the source member (the job is done
    /// in the same commit). On failure the job stays running at its end and
    /// is finished again at the next tick or start.
    pub(super) fn finish_move(&mut self, id: u64) {
        let Ok(j) = self.job(id) else { return };
        let Some(v) = self.volume_by_id(j.volume) else {
            return;
        };
        match self.reshape(&v.name, "finish move", |st| Ok((st.finish_move(id)?, None))) {
            Ok(_) => {
                info!(volume = %v.name, job = id, "move complete: source member dropped");
                self.log
                    .emit("job-ended", Some(&v.name), format!("job {id} (Move) Done"));
            }
            Err(e) => {
                warn!(volume = %v.name, job = id, "cannot finish the move yet: {e}");
                self.log.emit("move-pending", Some(&v.name), e);
            }
        }
    }

    /// Moves whose copy is complete but whose source member is still there
    /// (a crash, or a quiesce that failed, between the two): finish them.
    pub(super) fn finish_pending_moves(&mut self) {
        let pending: Vec<u64> = self
            .store
            .jobs()
            .into_iter()
            .filter(|j| {
                j.kind == JobKind::Move
                    && j.state == JobState::Running
                    && j.checkpoint == j.total
                    && !self.jobs.contains_key(&j.id)
            })
            .map(|j| j.id)
            .collect();
        for id in pending {
            self.finish_move(id);
        }
    }

    /// `vol extend NAME --size +N --alu A...`: grow by concatenation, then
    /// grow the device if the kernel can.
    pub(super) fn extend(
        &mut self,
        name: &str,
        add: u64,
        alus: &[String],
    ) -> Result<Payload, String> {
        let v = self.volume(name)?;
        let mut uuids = Vec::new();
        for p in alus {
            let owned = self.owned_alus();
            let u = owned
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, u)| *u)
                .ok_or_else(|| format!("alu {p}: not owned by this cluster"))?;
            uuids.push(u);
        }
        if uuids.len() == 1 && v.layout.members() > 1 {
            return Err(format!(
                "volume {name}: {} members: give one --alu per member",
                v.layout.members()
            ));
        }
        // A mirror's other legs copy their new part: a job, fenced against
        // the other SPs that write the volume (`fence`).
        let (def, _) = self.reshape(name, "extend", |st| {
            Ok((st.extend_volume(name, add, &uuids)?, None))
        })?;
        let copying: Vec<String> = self
            .store
            .jobs()
            .into_iter()
            .filter(|j| j.volume == def.id && !j.state.finished())
            .map(|j| j.id.to_string())
            .collect();
        let size = if copying.is_empty() {
            format_size(def.size)
        } else {
            format!(
                "{} (the mirror copies the new part of its other legs: job {})",
                format_size(def.size),
                copying.join(", ")
            )
        };
        let Some(Runtime::Online { exposed, .. }) = self.runtime.get(name) else {
            return Ok(Payload::Done(format!("volume {name}: grown to {size}")));
        };
        let dev = exposed.device();
        Ok(Payload::Done(match ublk::resize(exposed.dev_id(), def.size) {
            Ok(()) => format!("volume {name}: grown to {size}; {dev} grew online"),
            Err(e) => format!(
                "volume {name}: grown to {size}; {dev} keeps {} until the volume is brought online again (`tierblk vol offline {name}` then `vol online {name}`): {e}",
                format_size(v.size)
            ),
        }))
    }
}
