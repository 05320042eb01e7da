//! The exposure map ("volume location structure"): which SPs expose which
//! volume to their host, and the assignments that carry a volume's tier-2
//! tree to them (spec [080]–[093]: tier-2 objects go to the SPs in the
//! volume's exposure map, which build their stacks with local references to
//! the ALUs they own and remote references to the rest; claims 7–13 of
//! 001_…: adding and removing a tier-2 instance).
//!
//! The map is in the boot list (`Store::exposures`). A volume with no entry
//! is exposed by the master, as a lone daemon does. The master sends each
//! other SP in the map an [`ControlRequest::Assign`] over the control
//! channel (`OPT_TIERBLK_CONTROL`), with the volume's definition and which SP
//! owns each ALU under it; the SP builds and exposes the tree and reports leg
//! failures back ([`ControlRequest::LegFailed`]), since only the master
//! writes the object database. `vol unexpose` first stops host I/O on that
//! SP ([`ControlRequest::Withdraw`], which refuses while the device is open),
//! then drops the entry ([0115]).
//!
//! An exposing peer runs its mirrors without write-intent bitmaps and
//! without resync jobs: those belong to the master.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierblk_meta::Segment;

use super::cluster::Role;
use super::*;

/// How long the master waits for an SP to apply an assignment.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// One request of the control protocol (JSON in `OPT_TIERBLK_CONTROL`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Any SP -> any SP: the heartbeat; the reply is the SP's `SpView`.
    State,
    /// Master -> SP: expose this volume.
    Assign {
        master: String,
        generation: u64,
        volume: Assignment,
    },
    /// Master -> SP: stop exposing `volume`.
    Withdraw {
        master: String,
        generation: u64,
        volume: String,
    },
    /// Master -> SP: hold `volume`'s host I/O (quiescence, spec IX).
    Quiesce {
        master: String,
        generation: u64,
        volume: String,
    },
    /// Master -> SP: let it go on.
    Resume {
        master: String,
        generation: u64,
        volume: String,
    },
    /// Master -> SP: hold host writes to `[start, start + len)` of mirror
    /// `mirror`'s legs of `volume` for `lease_ms`, and answer once none is in
    /// flight there: a job on the master copies or repairs that span
    /// (md-cluster's resync range; see `daemon::fence`).
    Fence {
        master: String,
        generation: u64,
        volume: String,
        mirror: u16,
        start: u64,
        len: u64,
        lease_ms: u64,
    },
    /// Master -> SP: the job no longer works on `volume`'s mirror `mirror`.
    Unfence {
        master: String,
        generation: u64,
        volume: String,
        mirror: u16,
    },
    /// SP -> master: a mirror leg of `volume` failed on the SP's data path.
    LegFailed {
        sp: String,
        volume: String,
        member: u16,
        errno: i32,
    },
}

/// A volume's tree as an exposing SP needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub name: String,
    pub id: u64,
    pub wwn: String,
    pub size: u64,
    /// linear, stripe, mirror, raid10
    pub layout: String,
    pub stripes: u16,
    pub copies: u16,
    pub chunk: u32,
    /// (member, ALU uuid, start, len) in volume order.
    pub segments: Vec<(u16, String, u64, u64)>,
    /// Members not to use (failed or unavailable).
    pub degraded: Vec<u16>,
    /// (ALU uuid, owning SP) for every ALU under the volume.
    pub owners: Vec<(String, String)>,
    /// A stripe or raid10 member move in progress: its source (the target is
    /// member `stripes * copies`; see `VolumeDef::moving`).
    #[serde(default)]
    pub moving: Option<u16>,
    /// Members being copied onto (also in `degraded`, for an SP that does
    /// not know this field: it leaves them out altogether): written at every
    /// offset, never read (see `fence`).
    #[serde(default)]
    pub rebuilding: Vec<u16>,
}

/// A volume this SP exposes for the master.
#[derive(Clone, Debug)]
pub struct Assigned {
    pub def: VolumeDef,
    pub degraded: Vec<u16>,
    pub generation: u64,
}

fn kind_of(s: &str) -> Option<LayoutKind> {
    Some(match s {
        "linear" => LayoutKind::Linear,
        "stripe" => LayoutKind::Stripe,
        "mirror" => LayoutKind::Mirror,
        "raid10" => LayoutKind::Raid10,
        _ => return None,
    })
}

impl Assignment {
    /// Back to a definition, checked: a malformed assignment is refused,
    /// never trusted.
    fn to_def(&self) -> Result<(VolumeDef, Vec<(Uuid, String)>), String> {
        let bad = |what: &str| format!("assignment of {}: {what}", self.name);
        let kind = kind_of(&self.layout).ok_or_else(|| bad("unknown layout"))?;
        let layout = Layout {
            kind,
            stripes: self.stripes,
            copies: self.copies,
            chunk: self.chunk,
        };
        let members = layout.members();
        if members == 0 || members > 64 {
            return Err(bad("member count"));
        }
        if let Some(src) = self.moving {
            if !matches!(kind, LayoutKind::Stripe | LayoutKind::Raid10)
                || usize::from(src) >= members
                || usize::from(self.copies) >= usize::from(tierblk_meta::types::MAX_COPIES)
            {
                return Err(bad("move source"));
            }
        }
        let members = members + usize::from(self.moving.is_some());
        let mut segments = Vec::new();
        for (member, alu, start, len) in &self.segments {
            if usize::from(*member) >= members || *len == 0 {
                return Err(bad("segment"));
            }
            segments.push(Segment {
                partition_id: 0,
                member: *member,
                alu: alu.parse().map_err(|_| bad("ALU uuid"))?,
                start: *start,
                len: *len,
            });
        }
        let owners = self
            .owners
            .iter()
            .map(|(u, sp)| Ok((u.parse().map_err(|_| bad("ALU uuid"))?, sp.clone())))
            .collect::<Result<Vec<_>, String>>()?;
        let mut wwn = [0u8; 16];
        if self.wwn.len() != 32 {
            return Err(bad("wwn"));
        }
        for (i, b) in wwn.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.wwn[2 * i..2 * i + 2], 16).map_err(|_| bad("wwn"))?;
        }
        let mut health = vec![MemberHealth::Ok; members];
        for &m in &self.rebuilding {
            *health
                .get_mut(usize::from(m))
                .ok_or_else(|| bad("rebuilding member"))? =
                MemberHealth::Rebuilding { checkpoint: 0 };
        }
        let def = VolumeDef {
            id: self.id,
            name: self.name.clone(),
            size: self.size,
            wwn,
            segments,
            members: health,
            layout,
            snapshot: None,
            // No bitmap on an exposing peer (module docs).
            wi_slots: Vec::new(),
            moving: self.moving,
        };
        Ok((def, owners))
    }
}

/// One control request (`body`, JSON) to `sp` over the first of its `paths`
/// that answers; a refusal is final (every path reaches the same daemon).
pub(super) fn send_control(
    sp: &str,
    paths: &[tierblk_stack::nbd::NbdAddr],
    secret: Option<&tierblk_stack::nbd::auth::Secret>,
    body: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let mut why = Vec::new();
    for p in paths {
        match tierblk_stack::nbd::control(p, secret, body, timeout) {
            Ok(_) => return Ok(()),
            Err(tierblk_stack::nbd::ClientError::Refused { message, .. }) => {
                return Err(format!("sp {sp}: {message}"))
            }
            Err(e) => why.push(format!("{p}: {e}")),
        }
    }
    Err(format!("sp {sp}: unreachable: {}", why.join("; ")))
}

impl Daemon {
    /// The SPs that expose `v` (empty: the master).
    pub(super) fn exposed_on(&self, v: &VolumeDef) -> Vec<String> {
        self.store
            .exposures()
            .into_iter()
            .filter(|e| e.volume == v.id)
            .map(|e| e.sp)
            .collect()
    }

    /// Whether this SP (the master) exposes `v` itself.
    pub(super) fn exposed_here(&self, v: &VolumeDef) -> bool {
        let on = self.exposed_on(v);
        match self.cluster.as_ref() {
            Some(c) => on.is_empty() || on.contains(&c.sp.name),
            None => true,
        }
    }

    pub(super) fn me(&self) -> Result<(String, u64), String> {
        match self.cluster.as_ref().map(|c| (&c.sp.name, &c.role)) {
            Some((me, Role::Master { generation })) => Ok((me.clone(), *generation)),
            _ => Err("exposing on other SPs needs tierblkd --sp (this SP the master)".into()),
        }
    }

    /// `vol expose NAME --on SP`.
    pub(super) fn expose(&mut self, name: &str, sp: &str) -> Result<Payload, String> {
        let (me, _) = self.me()?;
        let v = self.volume(name)?;
        if v.snapshot.is_some() {
            return Err(format!(
                "volume {name}: a snapshot follows its origin's exposure"
            ));
        }
        let snaps: Vec<String> = self
            .snapshots_of(v.id)
            .into_iter()
            .map(|s| s.name)
            .collect();
        if sp != me && !snaps.is_empty() {
            // Copy-on-write runs in the origin's tree here only: the other
            // SP's writes would change the snapshots' images.
            return Err(format!(
                "volume {name}: has snapshots ({}), kept only on this SP: remove them before exposing it on sp {sp}",
                snaps.join(", ")
            ));
        }
        if sp != me && self.cluster.as_ref().and_then(|c| c.paths_of(sp)).is_none() {
            return Err(format!("sp {sp}: not a configured peer"));
        }
        let on = self.exposed_on(&v);
        if on.iter().any(|s| s == sp) || (on.is_empty() && sp == me) {
            return Err(format!("volume {name}: already exposed on sp {sp}"));
        }
        // A job writing the legs holds off only the SPs that wrote when it
        // started (`fence`): stopped before the new SP writes, started again
        // over every writer once the map names it.
        let job = self.leg_writer(&v).filter(|_| sp != me);
        if job.is_some() {
            self.stop_jobs_of(name);
        }
        let added = self.add_exposure(name, &v, sp, &me, on.is_empty());
        if job.is_some() {
            self.start_jobs_of(&v);
        }
        added?;
        self.mark_unseen_writes(&v);
        self.log.emit("volume-exposed", Some(name), sp.to_string());
        Ok(Payload::Volume(self.volume_view(&self.volume(name)?)))
    }

    /// `sp` exposes `v`, then the map says so (the master too when the
    /// volume had no entry, `first`: it keeps exposing it).
    fn add_exposure(
        &mut self,
        name: &str,
        v: &VolumeDef,
        sp: &str,
        me: &str,
        first: bool,
    ) -> Result<(), String> {
        if sp == me {
            self.online(name)?;
        } else {
            self.assign(v, sp)?;
        }
        if first && sp != me {
            self.store
                .set_exposure(name, me, true)
                .map_err(|e| e.to_string())?;
        }
        self.store
            .set_exposure(name, sp, true)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// `vol unexpose NAME --on SP`: host I/O stops there first, then the
    /// entry goes ([0115]).
    pub(super) fn unexpose(&mut self, name: &str, sp: &str) -> Result<Payload, String> {
        let (me, generation) = self.me()?;
        let v = self.volume(name)?;
        let mut on = self.exposed_on(&v);
        if on.is_empty() {
            on.push(me.clone());
        }
        if !on.iter().any(|s| s == sp) {
            return Err(format!("volume {name}: not exposed on sp {sp}"));
        }
        if on.len() == 1 {
            return Err(format!(
                "volume {name}: sp {sp} is its only exposure (take it offline, or expose it elsewhere first)"
            ));
        }
        if sp == me {
            self.offline(name)?;
        } else {
            self.send(
                sp,
                &ControlRequest::Withdraw {
                    master: me.clone(),
                    generation,
                    volume: name.to_string(),
                },
            )?;
        }
        self.store
            .set_exposure(name, sp, false)
            .map_err(|e| e.to_string())?;
        self.log
            .emit("volume-unexposed", Some(name), sp.to_string());
        let v = self.volume(name)?;
        if sp == me {
            // Its jobs still run here, on a tree without a device.
            self.hold_remote(&v, false);
        }
        self.start_jobs_of(&v);
        Ok(Payload::Volume(self.volume_view(&self.volume(name)?)))
    }

    /// Send `v`'s tree to `sp`.
    pub(super) fn assign(&mut self, v: &VolumeDef, sp: &str) -> Result<(), String> {
        let (me, generation) = self.me()?;
        let mut owners = Vec::new();
        for s in &v.segments {
            let owner = self
                .store
                .path_of(s.alu)
                .map(|p| self.peer_of(p).unwrap_or_else(|| me.clone()))
                .ok_or_else(|| format!("volume {}: alu {} not present", v.name, s.alu))?;
            if !owners.iter().any(|(u, _)| *u == s.alu.to_string()) {
                owners.push((s.alu.to_string(), owner));
            }
        }
        let degraded = self
            .store
            .degraded_members(&v.name)
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        let a = Assignment {
            name: v.name.clone(),
            id: v.id,
            wwn: hex(&v.wwn),
            size: v.size,
            layout: layout_name(&v.layout).to_string(),
            stripes: v.layout.stripes,
            copies: v.layout.copies,
            chunk: v.layout.chunk,
            segments: v
                .segments
                .iter()
                .map(|s| (s.member, s.alu.to_string(), s.start, s.len))
                .collect(),
            degraded,
            owners,
            moving: v.moving,
            rebuilding: v
                .members
                .iter()
                .enumerate()
                .filter(|(_, h)| matches!(h, MemberHealth::Rebuilding { .. }))
                .map(|(m, _)| m as u16)
                .collect(),
        };
        self.send(
            sp,
            &ControlRequest::Assign {
                master: me,
                generation,
                volume: a,
            },
        )
    }

    /// One control request to `sp`; its reply or its refusal.
    fn send(&self, sp: &str, req: &ControlRequest) -> Result<(), String> {
        let c = self.cluster.as_ref().ok_or("no peers")?;
        let paths = c
            .paths_of(sp)
            .ok_or_else(|| format!("sp {sp}: not a configured peer"))?;
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        send_control(sp, paths, c.sp.secret.as_deref(), &body, ASSIGN_TIMEOUT)
    }

    /// Send every volume's assignment to the SPs of its map (after taking
    /// office, or to `only` when it answers again).
    pub(super) fn push_assignments(&mut self, only: Option<&str>) {
        let Ok((me, _)) = self.me() else {
            return;
        };
        let mut failed = BTreeSet::new();
        for v in self.image_volumes() {
            for sp in self.exposed_on(&v) {
                if sp == me || only.is_some_and(|o| o != sp) {
                    continue;
                }
                // A job writing the legs holds only the SPs that wrote when it
                // started: stopped while this one gets the tree, started
                // again over every writer.
                let job = self.leg_writer(&v);
                if let Some(j) = &job {
                    debug!(volume = %v.name, %sp, job = j.id, "job stopped while the SP gets the volume");
                    self.stop_jobs_of(&v.name);
                }
                match self.assign(&v, &sp) {
                    Ok(()) => info!(volume = %v.name, %sp, "assigned"),
                    Err(e) => {
                        warn!(volume = %v.name, %sp, "cannot assign: {e}");
                        failed.insert(sp);
                    }
                }
                if job.is_some() {
                    self.start_jobs_of(&v);
                }
            }
        }
        // Tried again at the next heartbeat (e.g. a peer that does not
        // follow this master yet: it refuses until it does).
        if let Some(c) = self.cluster.as_mut() {
            match only {
                Some(o) => {
                    c.unassigned.remove(o);
                }
                None => c.unassigned.clear(),
            }
            c.unassigned.extend(failed);
        }
    }

    /// A control request from a peer (on the fabric server's connection
    /// thread, through the event loop).
    pub(super) fn on_control(&mut self, req: ControlRequest) -> Result<String, String> {
        match req {
            ControlRequest::Assign {
                master,
                generation,
                volume,
            } => {
                self.check_master(&master, generation)?;
                let (def, owners) = volume.to_def()?;
                let name = def.name.clone();
                if let Some(Runtime::Online { .. }) = self.runtime.get(&name) {
                    return self.reassign(def, owners, volume.degraded, generation);
                }
                for (u, sp) in owners {
                    self.owners.insert(u, sp);
                }
                self.assigned.insert(
                    name.clone(),
                    Assigned {
                        def,
                        degraded: volume.degraded,
                        generation,
                    },
                );
                self.runtime
                    .entry(name.clone())
                    .or_insert(Runtime::Offline { reason: None });
                if let Err(e) = self.online(&name) {
                    // Nothing half-done: the master keeps no entry either.
                    self.assigned.remove(&name);
                    self.runtime.remove(&name);
                    return Err(e);
                }
                Ok(format!("volume {name}: exposed"))
            }
            ControlRequest::Withdraw {
                master,
                generation,
                volume,
            } => {
                self.check_master(&master, generation)?;
                if self.assigned.contains_key(&volume) {
                    self.offline(&volume)?;
                    self.assigned.remove(&volume);
                    self.runtime.remove(&volume);
                    self.carry_fences(&volume);
                }
                Ok(format!("volume {volume}: withdrawn"))
            }
            ControlRequest::Quiesce {
                master,
                generation,
                volume,
            } => {
                self.check_master(&master, generation)?;
                self.quiesce_here(&volume)?;
                Ok(format!("volume {volume}: quiesced"))
            }
            ControlRequest::Resume {
                master,
                generation,
                volume,
            } => {
                self.check_master(&master, generation)?;
                self.resume_here(&volume)?;
                Ok(format!("volume {volume}: resumed"))
            }
            // Answered by the catalog itself (cluster.rs), never queued.
            ControlRequest::State => Err("state is answered by the fabric server".into()),
            // Answered from a thread of its own (`fence_here`).
            ControlRequest::Fence { .. } => Err("fence requests are answered apart".into()),
            ControlRequest::Unfence {
                master,
                generation,
                volume,
                mirror,
            } => self.unfence_here(&master, generation, &volume, mirror),
            ControlRequest::LegFailed {
                sp,
                volume,
                member,
                errno,
            } => {
                self.me()?;
                warn!(%sp, volume = %volume, member, errno, "a peer reports a failed leg");
                let (done, _wait) = mpsc::channel();
                self.on_event(Event::LegFailed {
                    volume,
                    member,
                    errno,
                    from: Some(sp),
                    done,
                });
                Ok("persisted".into())
            }
        }
    }

    /// A new assignment of a volume online here: the same tree under a new
    /// master's generation (a takeover), or a new tree (a reshape, which
    /// the master quiesced first; or a takeover whose definition differs
    /// from the old master's). Either way the device stays: the remote
    /// references to the tree's pieces are re-admitted under the new
    /// generation (requests waiting on a fenced connection go on), and a
    /// new tree is loaded in place, under quiescence.
    fn reassign(
        &mut self,
        def: VolumeDef,
        owners: Vec<(Uuid, String)>,
        degraded: Vec<u16>,
        generation: u64,
    ) -> Result<String, String> {
        let name = def.name.clone();
        let pieces = def
            .segments
            .iter()
            .map(|s| (s.alu, s.start, s.len))
            .collect();
        if let Some(c) = self.cluster.as_mut() {
            c.readmit(generation, &pieces, false);
        }
        for (u, sp) in owners {
            self.owners.insert(u, sp);
        }
        let same = self.assigned.get(&name).is_some_and(|a| a.def == def);
        let new = Assigned {
            def: def.clone(),
            degraded,
            generation,
        };
        if same {
            // Legs the master failed since (another SP found the failure):
            // out of this tree at once, no quiescence needed.
            let before = self.assigned.get(&name).map(|a| a.degraded.clone());
            let newly: Vec<u16> = new
                .degraded
                .iter()
                .filter(|m| !before.as_ref().is_some_and(|b| b.contains(m)))
                .copied()
                .collect();
            self.assigned.insert(name.clone(), new);
            if newly.is_empty() {
                return Ok(format!("volume {name}: already exposed"));
            }
            self.fail_members_here(&name, &newly);
            warn!(volume = %name, members = ?newly, "the master failed legs: no longer used here");
            self.log.emit(
                "member-failed",
                Some(&name),
                format!("members {newly:?}: failed by the master"),
            );
            return Ok(format!("volume {name}: members {newly:?} failed"));
        }
        let held = self.quiesced.contains_key(&name);
        if !held {
            self.quiesce_here(&name)?;
        }
        let old = self.assigned.insert(name.clone(), new);
        if let Err(e) = self.reload(&def) {
            if let Some(old) = old {
                self.assigned.insert(name.clone(), old);
            }
            // Not a reshape (the master did not hold it): the tree that ran
            // goes on. A reshape's stays held: its extents may be free now.
            if !held {
                if let Err(r) = self.resume_here(&name) {
                    error!(volume = %name, "cannot resume: {r}");
                }
            }
            return Err(format!("volume {name}: cannot load the new tree: {e}"));
        }
        if !held {
            self.resume_here(&name)?;
        }
        Ok(format!("volume {name}: new tree loaded"))
    }

    /// `vol quiesce`: every SP exposing the volume holds its host I/O and
    /// says so before this returns (spec IX, Fig. 15: quiesce, acknowledge
    /// to the master); if one cannot, those already held are let go and
    /// nothing stays quiesced.
    pub(super) fn quiesce(&mut self, name: &str) -> Result<Payload, String> {
        let v = self.volume(name)?;
        let others = self.exposing_peers(&v);
        // (The tree kept here for the jobs of a volume only others expose
        // quiesces too: its jobs stop.)
        let kept = matches!(self.runtime.get(name), Some(Runtime::Remote { .. }));
        if self.exposed_here(&v) || kept {
            self.quiesce_here(name)?;
        }
        let mut held = Vec::new();
        for sp in others {
            match self.hold(&sp, name, true) {
                Ok(()) => held.push(sp),
                Err(e) => {
                    for sp in held {
                        let _ = self.hold(&sp, name, false);
                    }
                    if self.quiesced.contains_key(name) {
                        let _ = self.resume_here(name);
                    }
                    return Err(format!("volume {name}: cannot quiesce: {e}"));
                }
            }
        }
        Ok(Payload::Volume(self.volume_view(&v)))
    }

    /// `vol resume`: every SP exposing the volume lets its held I/O go on.
    pub(super) fn resume(&mut self, name: &str) -> Result<Payload, String> {
        let v = self.volume(name)?;
        let mut errors = Vec::new();
        let kept = matches!(self.runtime.get(name), Some(Runtime::Remote { .. }));
        if self.exposed_here(&v) || kept {
            if let Err(e) = self.resume_here(name) {
                errors.push(e);
            }
        }
        for sp in self.exposing_peers(&v) {
            if let Err(e) = self.hold(&sp, name, false) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(Payload::Volume(self.volume_view(&v)))
        } else {
            Err(errors.join("; "))
        }
    }

    /// Tell `sp` to quiesce (`true`) or resume `volume`.
    pub(super) fn hold(&self, sp: &str, volume: &str, quiesce: bool) -> Result<(), String> {
        let (master, generation) = self.me()?;
        let volume = volume.to_string();
        let req = if quiesce {
            ControlRequest::Quiesce {
                master,
                generation,
                volume,
            }
        } else {
            ControlRequest::Resume {
                master,
                generation,
                volume,
            }
        };
        self.send(sp, &req)
    }

    /// The other SPs exposing `v` that answer now: a peer given up on holds
    /// no session under this master's generation, so it writes nothing.
    pub(super) fn writing_peers(&self, v: &VolumeDef) -> Vec<String> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        let up = c.reachable();
        self.exposing_peers(v)
            .into_iter()
            .filter(|sp| up.iter().any(|p| &p.name == sp))
            .collect()
    }

    /// A job of `v` running here that writes its legs, if any.
    pub(super) fn leg_writer(&self, v: &VolumeDef) -> Option<Job> {
        self.store
            .jobs()
            .into_iter()
            .find(|j| j.volume == v.id && self.jobs.contains_key(&j.id) && jobs::writes_legs(j))
    }

    /// The other SPs exposing `v` (none without `--sp`).
    pub(super) fn exposing_peers(&self, v: &VolumeDef) -> Vec<String> {
        let me = self.cluster.as_ref().map(|c| c.sp.name.clone());
        self.exposed_on(v)
            .into_iter()
            .filter(|sp| Some(sp) != me.as_ref())
            .collect()
    }

    pub(super) fn check_master(&self, master: &str, generation: u64) -> Result<(), String> {
        let c = self.cluster.as_ref().ok_or("no peers")?;
        let seen = c.catalog.generation();
        if generation < seen {
            return Err(format!(
                "stale master generation {generation} (this SP has seen {seen})"
            ));
        }
        match &c.role {
            Role::Peer { master: m } if m == master => Ok(()),
            r => Err(format!(
                "sp {}: does not follow {master} (role {r:?})",
                c.sp.name
            )),
        }
    }

    /// The volumes assigned to this peer, as definitions.
    pub(super) fn assigned_volumes(&self) -> Vec<VolumeDef> {
        self.assigned.values().map(|a| a.def.clone()).collect()
    }

    /// A leg failed under a volume this peer exposes: the master persists it.
    pub(super) fn forward_leg_failure(&self, volume: &str, member: u16, errno: i32) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let Role::Peer { master } = &c.role else {
            return;
        };
        let req = ControlRequest::LegFailed {
            sp: c.sp.name.clone(),
            volume: volume.to_string(),
            member,
            errno,
        };
        match self.send(master, &req) {
            Ok(()) => info!(volume, member, "leg failure reported to the master"),
            Err(e) => error!(volume, member, "cannot report the leg failure: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Assignment {
        Assignment {
            name: "r10".into(),
            id: 3,
            wwn: "00112233445566778899aabbccddeeff".into(),
            size: 64 << 20,
            layout: "mirror".into(),
            stripes: 1,
            copies: 2,
            chunk: 0,
            segments: vec![
                (
                    0,
                    "00112233-4455-6677-8899-aabbccddeeff".into(),
                    8 << 20,
                    64 << 20,
                ),
                (
                    1,
                    "00112233-4455-6677-8899-aabbccddeef0".into(),
                    8 << 20,
                    64 << 20,
                ),
            ],
            degraded: vec![],
            owners: vec![("00112233-4455-6677-8899-aabbccddeeff".into(), "sp2".into())],
            moving: None,
            rebuilding: vec![],
        }
    }

    /// A peer's control request is checked, never trusted: garbage bytes and
    /// malformed assignments are refused with an error, never a panic.
    #[test]
    fn malformed_control_requests_are_refused() {
        let (def, owners) = sample().to_def().unwrap();
        assert_eq!(def.layout.members(), 2);
        assert_eq!(def.wwn[1], 0x11);
        assert_eq!(owners.len(), 1);
        let mut bad = Vec::new();
        for f in [
            |a: &mut Assignment| a.layout = "raid5".into(),
            |a: &mut Assignment| a.wwn = "xyz".into(),
            |a: &mut Assignment| a.wwn = "zz112233445566778899aabbccddeeff".into(),
            |a: &mut Assignment| a.segments[0].0 = 7,
            |a: &mut Assignment| a.segments[0].1 = "not-a-uuid".into(),
            |a: &mut Assignment| a.segments[0].3 = 0,
            |a: &mut Assignment| a.owners[0].0 = "nope".into(),
            |a: &mut Assignment| (a.stripes, a.copies) = (u16::MAX, u16::MAX),
            |a: &mut Assignment| (a.stripes, a.copies) = (0, 2),
            // a move's extra leg is for stripes and raid10 only
            |a: &mut Assignment| a.moving = Some(0),
            |a: &mut Assignment| a.rebuilding = vec![2],
        ] {
            let mut a = sample();
            f(&mut a);
            bad.push(a.to_def().is_err());
        }
        assert!(bad.iter().all(|b| *b), "{bad:?}");
        // Random bytes and mutated JSON: parse errors, no panic.
        let good = serde_json::to_vec(&ControlRequest::Assign {
            master: "sp1".into(),
            generation: 1,
            volume: sample(),
        })
        .unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..5000 {
            let mut b = good.clone();
            for _ in 0..1 + i % 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % b.len();
                b[at] = (x >> 32) as u8;
            }
            if let Ok(ControlRequest::Assign { volume, .. }) =
                serde_json::from_slice::<ControlRequest>(&b)
            {
                let _ = volume.to_def();
            }
        }
    }

    /// A leg being copied reaches an exposing SP rebuilding (its writes go
    /// there, its reads do not); an SP that predates the field reads the
    /// assignment too, and finds the leg among the degraded ones.
    #[test]
    fn a_leg_being_copied_is_rebuilding_in_the_peer_tree() {
        let mut a = sample();
        (a.degraded, a.rebuilding) = (vec![1], vec![1]);
        let (def, _) = a.to_def().unwrap();
        assert_eq!(def.members[0], MemberHealth::Ok);
        assert_eq!(def.members[1], MemberHealth::Rebuilding { checkpoint: 0 });
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["rebuilding"], serde_json::json!([1]));
        assert_eq!(json["degraded"], serde_json::json!([1]));
        // Without the field (an older master): no leg rebuilding.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("rebuilding");
        let a: Assignment = serde_json::from_value(old).unwrap();
        assert!(a.rebuilding.is_empty());
        assert_eq!(a.to_def().unwrap().0.members[1], MemberHealth::Ok);
    }

    /// Fence requests keep their wire form (`"op":"fence"`); one missing
    /// its fields is refused.
    #[test]
    fn fence_requests_round_trip() {
        let f = ControlRequest::Fence {
            master: "sp1".into(),
            generation: 4,
            volume: "m1".into(),
            mirror: 1,
            start: 4 << 20,
            len: 4 << 20,
            lease_ms: 10_000,
        };
        let b = serde_json::to_vec(&f).unwrap();
        assert!(String::from_utf8_lossy(&b).contains(r#""op":"fence""#));
        assert_eq!(serde_json::from_slice::<ControlRequest>(&b).unwrap(), f);
        let u = ControlRequest::Unfence {
            master: "sp1".into(),
            generation: 4,
            volume: "m1".into(),
            mirror: 1,
        };
        let b = serde_json::to_vec(&u).unwrap();
        assert_eq!(serde_json::from_slice::<ControlRequest>(&b).unwrap(), u);
        assert!(
            serde_json::from_slice::<ControlRequest>(br#"{"op":"fence","volume":"m1"}"#).is_err()
        );
    }
}
