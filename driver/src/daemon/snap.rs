//! Snapshots in the daemon (spec VIII, [0153]–[0167]): create, list, remove
//! and roll back, on origins that stay online.
//!
//! A snapshot is a volume of the object database (a linear volume holding the
//! COW store, with a `SnapshotOf` record). Every origin has a snapshot set,
//! shared with the origin's queues whether it is online or not
//! ([`crate::top`]). Taking a snapshot while the origin is online suspends
//! the origin's I/O at its gate (dm's suspend: drain in-flight writes, hold
//! new ones), flushes it, adds the formatted store to the set, and resumes:
//! that instant is the snapshot's point in time ([0154]).
//!
//! Ordering rules, each against a crash at any point:
//! * create: commit the snapshot volume, format its store (one FUA header
//!   write), then add it to the origin's set. A store never formatted reads
//!   as invalid at the next start and is only good for `snap remove`.
//! * remove: with the origin's I/O suspended (no copy in flight), persist the
//!   store's invalid flag, drop it from the set, resume, then remove the
//!   volume: the origin never writes uncopied while a snapshot that could
//!   come back as valid exists, and no late copy lands in freed extents.
//! * rollback: only on an offline origin (LVM merges an open origin only at
//!   its next activation; we refuse instead), as a persisted job that
//!   resumes from its checkpoint; the origin stays offline until it is done.
//!   The snapshot stays (empty, equal to the origin), as a ZFS rollback keeps
//!   its snapshot.

use super::*;
use crate::clock::stamp;
use crate::proto::{ScheduleView, SnapView};
use tierblk_meta::{Schedule, SnapshotOf};
use tierblk_stack::snapshot::{Geometry, DEFAULT_CHUNK};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::volume::build_volume;
use tierblk_stack::{BlockDev, ExceptionStore, SnapshotState, StoreError};

/// How long taking a snapshot waits for the origin's in-flight I/O.
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a snapshot's store is not in its origin's set.
pub(super) enum SnapProblem {
    /// The store cannot be read (an ALU is missing or failing): the snapshot
    /// may be valid, so its origin must not be written.
    Unavailable(String),
    /// The store holds no valid header (never formatted: a crash during
    /// `snap create`; or damaged): the snapshot is lost, the origin is free.
    Unreadable(String),
}

/// A COW store size that can hold a copy of every origin chunk.
fn default_cow_size(origin: u64, chunk: u32) -> u64 {
    let c = u64::from(chunk);
    let chunks = origin.div_ceil(c);
    let mut size = ((chunks + 2) * (c + 4096)).div_ceil(1 << 20) << 20;
    while Geometry::compute(size, chunk).is_ok_and(|g| g.data_chunks < chunks) {
        size += 1 << 20;
    }
    size
}

fn sn_of(v: &VolumeDef) -> Result<SnapshotOf, String> {
    v.snapshot
        .ok_or_else(|| format!("volume {}: not a snapshot", v.name))
}

fn local_ring() -> Result<LocalRing, String> {
    LocalRing::new(16).map_err(|e| format!("cannot set up io_uring: {e}"))
}

impl Daemon {
    /// Hold volume `name`'s host I/O until the returned guard drops (`None`:
    /// nothing to hold, because it is offline, or already held by `vol
    /// quiesce`).
    fn drain(&self, name: &str) -> Result<Option<tierblk_stack::gate::Suspended>, String> {
        if self.quiesced.contains_key(name) {
            return Ok(None);
        }
        match self.runtime.get(name) {
            Some(Runtime::Online { gate, .. }) => gate
                .suspend(SUSPEND_TIMEOUT)
                .map(Some)
                .map_err(|e| e.to_string()),
            _ => Ok(None),
        }
    }

    /// The snapshot volumes of origin `id`.
    pub(super) fn snapshots_of(&self, origin: u64) -> Vec<VolumeDef> {
        self.image_volumes()
            .into_iter()
            .filter(|v| v.snapshot.is_some_and(|s| s.origin == origin))
            .collect()
    }

    /// Origin `id`'s snapshot set (created empty on first use).
    pub(super) fn snapset(&mut self, origin: u64) -> Arc<Snapshots> {
        self.snapsets
            .entry(origin)
            .or_insert_with(|| Snapshots::new(Vec::new()))
            .clone()
    }

    /// Open every snapshot's store (start-up): a usable one joins its
    /// origin's set, any other is remembered with the reason.
    pub(super) fn load_snapshots(&mut self) {
        for v in self.image_volumes() {
            let Some(sn) = v.snapshot else { continue };
            match self.open_store(&v) {
                Ok((desc, st)) => {
                    if st.is_invalid() {
                        warn!(snapshot = %v.name, "snapshot invalid (its COW store filled up or failed)");
                    }
                    self.snapset(sn.origin).insert(v.id, desc, st);
                }
                Err(p) => {
                    match &p {
                        SnapProblem::Unavailable(why) | SnapProblem::Unreadable(why) => {
                            error!(snapshot = %v.name, "{why}")
                        }
                    }
                    self.snap_problems.insert(v.id, p);
                }
            }
        }
    }

    fn cow_desc(&mut self, v: &VolumeDef) -> Result<Arc<VolumeDesc>, String> {
        self.assemble(v).map(|(d, _)| Arc::new(d))
    }

    fn open_store(
        &mut self,
        v: &VolumeDef,
    ) -> Result<(Arc<VolumeDesc>, Arc<SnapshotState>), SnapProblem> {
        let unavailable = |e: String| SnapProblem::Unavailable(format!("snapshot {}: {e}", v.name));
        if let Some(p) = self.problem_of(&v.name) {
            return Err(unavailable(p));
        }
        let desc = self.cow_desc(v).map_err(unavailable)?;
        let ring = local_ring().map_err(unavailable)?;
        let cow = build_volume(&desc, ring.clone()).map_err(|e| unavailable(e.to_string()))?;
        match ring.block_on(ExceptionStore::open(&cow)) {
            Ok(st)
                if v.snapshot
                    .is_some_and(|s| s.origin_size == st.origin_size()) =>
            {
                Ok((desc, st))
            }
            Ok(_) => Err(SnapProblem::Unreadable(format!(
                "snapshot {}: store size does not match its definition",
                v.name
            ))),
            Err(StoreError::Io(e)) => Err(unavailable(format!("cannot read the store: {e}"))),
            Err(e) => Err(SnapProblem::Unreadable(format!(
                "snapshot {}: store unreadable ({e}): the snapshot is lost; remove it",
                v.name
            ))),
        }
    }

    /// The unfinished rollback of a snapshot of origin `id`, if any.
    fn unfinished_rollback(&self, origin: u64) -> Option<(Job, String)> {
        let snaps = self.snapshots_of(origin);
        self.store.jobs().into_iter().find_map(|j| {
            let s = snaps.iter().find(|s| s.id == j.volume)?;
            (j.kind == JobKind::Rollback && !j.state.finished()).then(|| (j, s.name.clone()))
        })
    }

    /// Why volume `v` must stay offline because of snapshots, if it must.
    pub(super) fn held_by_snapshots(&self, v: &VolumeDef) -> Option<String> {
        let Some(sn) = v.snapshot else {
            for s in self.snapshots_of(v.id) {
                if let Some(SnapProblem::Unavailable(why)) = self.snap_problems.get(&s.id) {
                    return Some(format!(
                        "{why}: writes could not be copied for it (bring its ALU back, or `tierblk snap remove {}`)",
                        s.name
                    ));
                }
            }
            return self.unfinished_rollback(v.id).map(|(j, s)| {
                format!(
                    "rollback to snapshot {s} (job {}) is not finished (`tierblk job show {} --wait`)",
                    j.id, j.id
                )
            });
        };
        let origin = self.volume_by_id(sn.origin)?;
        if !matches!(self.runtime.get(&origin.name), Some(Runtime::Online { .. })) {
            return Some(format!("its origin {} is offline", origin.name));
        }
        match self.snap_problems.get(&v.id) {
            Some(SnapProblem::Unavailable(why) | SnapProblem::Unreadable(why)) => {
                return Some(why.clone())
            }
            None => {}
        }
        let invalid = self
            .snapsets
            .get(&sn.origin)
            .and_then(|s| s.get(v.id))
            .is_none_or(|(_, st)| st.is_invalid());
        invalid.then(|| "snapshot invalid (its COW store filled up or failed): remove it".into())
    }

    /// A snapshot view over its online origin's tree.
    pub(super) fn view_top(
        &mut self,
        v: &VolumeDef,
        cow: Arc<VolumeDesc>,
    ) -> Result<TopDesc, String> {
        let sn = sn_of(v)?;
        let origin = self
            .volume_by_id(sn.origin)
            .ok_or_else(|| format!("snapshot {}: origin missing", v.name))?;
        let Some(Runtime::Online { desc, .. }) = self.runtime.get(&origin.name) else {
            return Err(format!(
                "snapshot {}: its origin {} is offline",
                v.name, origin.name
            ));
        };
        let origin_desc = desc.clone();
        let (_, state) = self
            .snapset(sn.origin)
            .get(v.id)
            .ok_or_else(|| format!("snapshot {}: store not open", v.name))?;
        Ok(TopDesc::View {
            origin: origin_desc,
            cow,
            state,
        })
    }

    /// Bring the snapshots of origin `v` online with it (as LVM activates a
    /// snapshot with its origin).
    pub(super) fn views_follow(&mut self, v: &VolumeDef) {
        if v.snapshot.is_some() {
            return;
        }
        for s in self.snapshots_of(v.id) {
            if let Err(e) = self.online(&s.name) {
                warn!("{e}");
            }
        }
    }

    /// Take the snapshot views of origin `name` offline (they read through
    /// it); refused while one is in use.
    pub(super) fn views_offline(&mut self, name: &str) -> Result<(), String> {
        let Ok(v) = self.volume(name) else {
            return Ok(());
        };
        if v.snapshot.is_some() {
            return Ok(());
        }
        for s in self.snapshots_of(v.id) {
            self.offline(&s.name)
                .map_err(|e| format!("volume {name}: its snapshot is busy: {e}"))?;
        }
        Ok(())
    }

    pub(super) fn snap_create(
        &mut self,
        volume: &str,
        name: &str,
        size: Option<u64>,
        chunk: Option<u32>,
    ) -> Result<Payload, String> {
        let o = self.volume(volume)?;
        if o.snapshot.is_some() {
            return Err(format!(
                "snapshot {name}: {volume} is itself a snapshot (snapshots of snapshots are not supported)"
            ));
        }
        if self.image_volumes().iter().any(|v| v.name == name) {
            return Err(format!("snapshot {name}: name already taken"));
        }
        if let Some((j, s)) = self.unfinished_rollback(o.id) {
            return Err(format!(
                "snapshot {name}: volume {volume} is being rolled back to {s} (job {})",
                j.id
            ));
        }
        let peers = self.exposing_peers(&o);
        if !peers.is_empty() {
            // Copy-on-write runs in the origin's tree on this SP only: a
            // peer's writes would change the snapshot's image.
            return Err(format!(
                "snapshot {name}: volume {volume} is also exposed on {}: a snapshot is kept only where it lives (`tierblk vol unexpose {volume} --on SP` first)",
                peers.join(", ")
            ));
        }
        let chunk = chunk.unwrap_or(DEFAULT_CHUNK);
        let cow_size = match size {
            Some(s) => s.div_ceil(1 << 20) << 20,
            None => default_cow_size(o.size, chunk),
        };
        Geometry::compute(cow_size, chunk).map_err(|e| format!("snapshot {name}: {e}"))?;
        let candidates = self.candidates(&[])?;
        let plan = planner::plan_linear(cow_size, &candidates).map_err(|e| {
            format!(
                "snapshot {name}: COW store of {}: {e}",
                format_size(cow_size)
            )
        })?;
        let def = self
            .store
            .create_snapshot(name, volume, cow_size, chunk, &plan)
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.activate_snapshot(&o, &def, chunk) {
            if let Err(e2) = self.store.remove_volume(name) {
                error!(snapshot = %name, "cannot undo the snapshot's creation: {e2}");
            }
            return Err(e);
        }
        info!(snapshot = %name, origin = %volume, cow = %format_size(cow_size), "snapshot taken");
        self.log
            .emit("snapshot-created", Some(volume), format!("snapshot {name}"));
        self.runtime
            .insert(name.to_string(), Runtime::Offline { reason: None });
        if matches!(self.runtime.get(volume), Some(Runtime::Online { .. })) {
            if let Err(e) = self.online(name) {
                warn!("{e}");
            }
        }
        let def = self.volume(name)?;
        Ok(Payload::Snapshot(self.snap_view(&def, sn_of(&def)?)))
    }

    /// Format the new snapshot's store and add it to its origin's set at a
    /// drained, flushed instant of the origin.
    fn activate_snapshot(
        &mut self,
        o: &VolumeDef,
        def: &VolumeDef,
        chunk: u32,
    ) -> Result<(), String> {
        let desc = self.cow_desc(def)?;
        let ring = local_ring()?;
        let cow = build_volume(&desc, ring.clone()).map_err(|e| e.to_string())?;
        let state = ring
            .block_on(ExceptionStore::format(&cow, chunk, def.id, o.size))
            .map_err(|e| format!("snapshot {}: cannot format its store: {e}", def.name))?;
        let set = self.snapset(o.id);
        let Some(Runtime::Online { desc: odesc, .. }) = self.runtime.get(&o.name) else {
            set.insert(def.id, desc, state);
            return Ok(());
        };
        let odesc = odesc.clone();
        let held = self.drain(&o.name).map_err(|e| {
            format!(
                "volume {}: cannot suspend its I/O for the snapshot: {e}",
                o.name
            )
        })?;
        // Acknowledged writes reach the ALUs before the point in time.
        let origin = build_volume(&odesc, ring.clone()).map_err(|e| e.to_string())?;
        ring.block_on(origin.flush())
            .map_err(|e| format!("volume {}: flush before the snapshot failed: {e}", o.name))?;
        set.insert(def.id, desc, state);
        drop(held);
        Ok(())
    }

    pub(super) fn snap_view(&self, v: &VolumeDef, sn: SnapshotOf) -> SnapView {
        let entry = self.snapsets.get(&sn.origin).and_then(|s| s.get(v.id));
        let rolling = self
            .store
            .jobs()
            .into_iter()
            .any(|j| j.volume == v.id && j.kind == JobKind::Rollback && !j.state.finished());
        let (state, problem) = match (&entry, self.snap_problems.get(&v.id)) {
            (_, Some(SnapProblem::Unavailable(w))) => ("unavailable", Some(w.clone())),
            (_, Some(SnapProblem::Unreadable(w))) => ("invalid", Some(w.clone())),
            (Some((_, st)), None) if st.is_invalid() => ("invalid", None),
            _ if rolling => ("rolling-back", None),
            (Some(_), None) => ("valid", None),
            (None, None) => ("unavailable", Some("store not open".into())),
        };
        let (used, capacity) = entry
            .map(|(_, st)| {
                let g = st.geometry();
                (
                    st.exception_count() * st.chunk_size(),
                    g.data_chunks * st.chunk_size(),
                )
            })
            .unwrap_or((0, 0));
        let device = match self.runtime.get(&v.name) {
            Some(Runtime::Online { exposed, .. }) => Some(exposed.device()),
            _ => None,
        };
        let problem = problem.or_else(|| match self.runtime.get(&v.name) {
            Some(Runtime::Offline { reason }) => reason.clone(),
            _ => None,
        });
        SnapView {
            name: v.name.clone(),
            origin: self
                .volume_by_id(sn.origin)
                .map(|o| o.name)
                .unwrap_or_else(|| format!("#{}", sn.origin)),
            size: sn.origin_size,
            cow_size: v.size,
            chunk: sn.chunk,
            used,
            capacity,
            state: state.into(),
            device,
            problem,
        }
    }

    pub(super) fn snap_list(&self, volume: Option<&str>) -> Result<Payload, String> {
        let origin = volume.map(|n| self.volume(n)).transpose()?;
        Ok(Payload::Snapshots(
            self.image_volumes()
                .iter()
                .filter_map(|v| Some((v, v.snapshot?)))
                .filter(|(_, sn)| origin.as_ref().is_none_or(|o| sn.origin == o.id))
                .map(|(v, sn)| self.snap_view(v, sn))
                .collect(),
        ))
    }

    fn snapshot_def(&self, name: &str) -> Result<(VolumeDef, SnapshotOf), String> {
        let v = self.volume(name)?;
        let sn = sn_of(&v)?;
        Ok((v, sn))
    }

    pub(super) fn snap_remove(&mut self, name: &str) -> Result<Payload, String> {
        let (v, sn) = self.snapshot_def(name)?;
        if let Some(j) = self
            .store
            .jobs()
            .into_iter()
            .find(|j| j.volume == v.id && !j.state.finished())
        {
            return Err(format!(
                "snapshot {name}: job {} ({:?}) is not finished; wait for it first",
                j.id, j.kind
            ));
        }
        self.offline(name)?;
        // Drained origin: no copy for this snapshot is in flight once it is
        // retired, so its store's extents are free for good when released.
        let origin = self.volume_by_id(sn.origin).map(|o| o.name);
        let held = match origin {
            Some(o) => self.drain(&o),
            None => Ok(None),
        }
        .map_err(|e| {
            format!("snapshot {name}: cannot suspend its origin's I/O: {e}; not removed")
        })?;
        let set = self.snapset(sn.origin);
        if let Some((desc, st)) = set.get(v.id) {
            if !st.is_invalid() {
                let ring = local_ring()?;
                let cow = build_volume(&desc, ring.clone()).map_err(|e| e.to_string())?;
                ring.block_on(st.retire(&cow)).map_err(|e| {
                    format!("snapshot {name}: cannot mark its store invalid: {e}; not removed")
                })?;
            }
            set.remove(v.id);
        }
        drop(held);
        self.store.remove_volume(name).map_err(|e| e.to_string())?;
        self.snap_problems.remove(&v.id);
        self.runtime.remove(name);
        info!(snapshot = %name, "removed");
        self.log
            .emit("snapshot-removed", None, format!("snapshot {name}"));
        Ok(Payload::Done(format!("snapshot {name}: removed")))
    }

    pub(super) fn snap_rollback(&mut self, name: &str, rate: u64) -> Result<Payload, String> {
        let (v, sn) = self.snapshot_def(name)?;
        let origin = self
            .volume_by_id(sn.origin)
            .ok_or_else(|| format!("snapshot {name}: origin missing"))?;
        if matches!(self.runtime.get(&origin.name), Some(Runtime::Online { .. })) {
            return Err(format!(
                "volume {o}: online: a rollback rewrites it under its users; take it offline first (`tierblk vol offline {o}`)",
                o = origin.name
            ));
        }
        if let Some((j, s)) = self.unfinished_rollback(origin.id) {
            return Err(format!(
                "volume {}: rollback to {s} (job {}) is not finished",
                origin.name, j.id
            ));
        }
        if let Some(SnapProblem::Unavailable(w) | SnapProblem::Unreadable(w)) =
            self.snap_problems.get(&v.id)
        {
            return Err(w.clone());
        }
        let (_, st) = self
            .snapset(sn.origin)
            .get(v.id)
            .ok_or_else(|| format!("snapshot {name}: store not open"))?;
        if st.is_invalid() {
            return Err(format!(
                "snapshot {name}: invalid (its COW store filled up or failed): it cannot be rolled back to"
            ));
        }
        let job = self
            .store
            .add_job(Job {
                rate,
                message: format!("roll {} back to {name}", origin.name),
                ..Job::whole(
                    JobKind::Rollback,
                    v.id,
                    st.exception_count() * st.chunk_size(),
                )
            })
            .map_err(|e| e.to_string())?;
        info!(snapshot = %name, origin = %origin.name, job = job.id, "rollback started");
        self.start_rollback(&job)?;
        Ok(Payload::Job(self.job_view(&job)))
    }

    /// Run rollback job `j` on a job thread, from its checkpoint.
    pub(super) fn start_rollback(&mut self, j: &Job) -> Result<(), String> {
        if self.jobs.contains_key(&j.id) {
            return Ok(());
        }
        let v = self
            .volume_by_id(j.volume)
            .ok_or_else(|| format!("job {}: snapshot gone", j.id))?;
        let sn = sn_of(&v).map_err(|e| format!("job {}: {e}", j.id))?;
        let origin = self
            .volume_by_id(sn.origin)
            .ok_or_else(|| format!("job {}: origin gone", j.id))?;
        if matches!(self.runtime.get(&origin.name), Some(Runtime::Online { .. })) {
            return Err(format!(
                "job {}: volume {} is online: take it offline to roll it back",
                j.id, origin.name
            ));
        }
        let set = self.snapset(sn.origin);
        let (cow, state) = set
            .get(v.id)
            .ok_or_else(|| format!("job {}: snapshot {} store not open", j.id, v.name))?;
        let others = set
            .entries()
            .into_iter()
            .filter(|(id, _, _)| *id != v.id)
            .collect();
        let (odesc, _) = self.assemble(&origin)?;
        let spec = jobs::Spec {
            id: j.id,
            volume: v.name.clone(),
            desc: Arc::new(odesc),
            work: Work::Rollback(Arc::new(jobs::RollbackWork { cow, state, others })),
            start: j.checkpoint,
            mismatches: 0,
            repaired: 0,
            rate: j.rate,
            leg_size: 0,
            // The origin is offline: exposed nowhere.
            fence: None,
        };
        let r = jobs::spawn(spec, self.events.clone())
            .map_err(|e| format!("job {}: cannot start its thread: {e}", j.id))?;
        info!(job = j.id, snapshot = %v.name, from = j.checkpoint, "rollback running");
        self.jobs.insert(j.id, r);
        Ok(())
    }

    /// Restart the rollbacks a stop interrupted (start-up).
    pub(super) fn resume_rollbacks(&mut self) {
        for j in self.store.jobs() {
            if j.kind == JobKind::Rollback && j.state == JobState::Running {
                if let Err(e) = self.start_rollback(&j) {
                    error!("{e}");
                }
            }
        }
    }
}

/// The prefix of the snapshots a schedule of `volume` takes.
fn auto_prefix(volume: &str) -> String {
    format!("{volume}.auto-")
}

impl Daemon {
    pub(super) fn snap_schedule(
        &mut self,
        volume: &str,
        every: u64,
        keep: u32,
        size: Option<u64>,
    ) -> Result<Payload, String> {
        let v = self.volume(volume)?;
        if v.snapshot.is_some() {
            return Err(format!("volume {volume}: a snapshot: schedule its origin"));
        }
        let name = auto_prefix(volume) + &stamp(0);
        if name.len() > 63 {
            return Err(format!(
                "volume {volume}: name too long for scheduled snapshot names ({name})"
            ));
        }
        let size = size.map(|s| s.div_ceil(1 << 20) << 20).unwrap_or(0);
        if size > 0 {
            Geometry::compute(size, DEFAULT_CHUNK)
                .map_err(|e| format!("volume {volume}: schedule: {e}"))?;
        }
        let last = self
            .store
            .schedules()
            .iter()
            .find(|s| s.volume == v.id)
            .map_or(0, |s| s.last);
        self.store
            .set_schedule(Schedule {
                volume: v.id,
                every,
                size,
                last,
                keep,
            })
            .map_err(|e| format!("volume {volume}: {e}"))?;
        info!(volume = %volume, every, keep, "snapshot schedule set");
        Ok(Payload::Schedules(
            self.schedule_views()
                .into_iter()
                .filter(|s| s.volume == volume)
                .collect(),
        ))
    }

    pub(super) fn snap_unschedule(&mut self, volume: &str) -> Result<Payload, String> {
        let v = self.volume(volume)?;
        if !self
            .store
            .remove_schedule(v.id)
            .map_err(|e| e.to_string())?
        {
            return Err(format!("volume {volume}: no snapshot schedule"));
        }
        info!(volume = %volume, "snapshot schedule removed");
        Ok(Payload::Done(format!(
            "volume {volume}: schedule removed (its snapshots stay)"
        )))
    }

    /// The scheduled snapshots of `volume` that exist, oldest first.
    fn scheduled_snapshots(&self, volume: &VolumeDef) -> Vec<String> {
        let prefix = auto_prefix(&volume.name);
        let mut names: Vec<String> = self
            .snapshots_of(volume.id)
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with(&prefix))
            .collect();
        names.sort();
        names
    }

    pub(super) fn schedule_views(&self) -> Vec<ScheduleView> {
        self.store
            .schedules()
            .into_iter()
            .filter_map(|s| {
                let v = self.volume_by_id(s.volume)?;
                Some(ScheduleView {
                    snapshots: self.scheduled_snapshots(&v),
                    volume: v.name,
                    every: s.every,
                    keep: s.keep,
                    size: s.size,
                    last: s.last,
                    next: if s.last == 0 { 0 } else { s.last + s.every },
                })
            })
            .collect()
    }

    /// Take the snapshots that are due and drop the oldest beyond `keep`
    /// (spec [0167]). A failure is logged and retried at the next interval;
    /// a scheduled snapshot in use is kept until it is not.
    pub(super) fn run_schedules(&mut self, now: u64) {
        for mut s in self.store.schedules() {
            if now < s.last.saturating_add(s.every) {
                continue;
            }
            let Some(v) = self.volume_by_id(s.volume) else {
                continue;
            };
            let name = auto_prefix(&v.name) + &stamp(now);
            let size = (s.size > 0).then_some(s.size);
            match self.snap_create(&v.name, &name, size, None) {
                Ok(_) => info!(volume = %v.name, snapshot = %name, "scheduled snapshot taken"),
                Err(e) => warn!(volume = %v.name, "scheduled snapshot failed: {e}"),
            }
            s.last = now;
            if let Err(e) = self.store.set_schedule(s) {
                error!(volume = %v.name, "cannot record the schedule's run: {e}");
            }
            let names = self.scheduled_snapshots(&v);
            let excess = names.len().saturating_sub(s.keep as usize);
            for old in names.into_iter().take(excess) {
                match self.snap_remove(&old) {
                    Ok(_) => info!(snapshot = %old, "expired by the schedule"),
                    Err(e) => warn!(snapshot = %old, "cannot expire: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cow_size_holds_every_chunk() {
        for (origin, chunk) in [
            (1u64 << 20, 4096u32),
            (100 << 20, 65536),
            (1 << 30, 65536),
            (3 << 20, 16 << 20),
        ] {
            let size = default_cow_size(origin, chunk);
            assert_eq!(size % (1 << 20), 0);
            let g = Geometry::compute(size, chunk).unwrap();
            assert!(
                g.data_chunks >= origin.div_ceil(u64::from(chunk)),
                "{origin} {chunk}: {g:?}"
            );
            // Not wasteful: a data chunk and a metadata block per origin
            // chunk, plus a few chunks and a MiB of rounding.
            let c = u64::from(chunk);
            assert!(size <= origin.div_ceil(c) * (c + 4096) + 3 * (c + 4096) + (1 << 20));
        }
    }
}
