//! The embedded default: one process that is storage processor, master and
//! coordinator at once (spec section IV, [066]–[095]).
//!
//! Start-up follows the spec's order: scan the ALUs ([066]); ALUs without our
//! signature go to the not-owned pool and are never written ([067]); load the
//! object database and build the system image ([072]–[073]); build each
//! volume's stack offline ([092]); bring the volumes that are complete online
//! and leave the others offline with the reason ([094]–[095]).

use crate::planner::{self, Candidate};
use crate::proto::{
    AluView, LayoutSpec, MemberView, PartitionView, Payload, Request, SegmentView, VolumeView,
};
use crate::size::format_size;
use crate::ublk::{self, Exposed, VolumeSpec};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tierblk_meta::{
    AluState, ClusterImage, Layout, LayoutKind, MemberHealth, MetaError, Store, Uuid, VolumeDef,
};
use tierblk_meta::{Disk, FileDisk};
use tierblk_stack::mirror::MirrorHealth;
use tierblk_stack::volume::{Layout as StackLayout, MemberDesc, VolumeDesc};
use tracing::{error, info, warn};

/// Something a volume's data path tells the daemon, off the hot path.
pub enum Event {
    /// A mirror leg failed with `errno`; `done` is answered once the failure
    /// is persisted, so the write that found it completes only afterwards
    /// (a leg that missed a write must never be trusted at reassembly).
    LegFailed {
        volume: String,
        member: u16,
        errno: i32,
        done: mpsc::Sender<()>,
    },
}

/// How long a queue thread waits for a leg failure to be persisted before it
/// completes the write anyway (the failure stays in memory).
const PERSIST_WAIT: Duration = Duration::from_secs(10);

/// What the daemon was told on its command line and in its config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: String,
    pub alus: Vec<PathBuf>,
    pub socket: PathBuf,
    pub queues: u16,
    pub depth: u16,
}

/// A volume's runtime state (the driver state machine's top level).
enum Runtime {
    /// Built but not exposed: by an administrator, or because a piece is
    /// missing (`reason`).
    Offline { reason: Option<String> },
    Online {
        exposed: Exposed,
        /// One per mirror, shared with every queue thread of the volume.
        health: Vec<Arc<MirrorHealth>>,
    },
}

pub struct Daemon {
    cfg: Config,
    store: Store,
    /// Paths that could not be opened at all, with the error.
    missing: BTreeMap<String, String>,
    runtime: BTreeMap<String, Runtime>,
    /// Data-path file handles, one per ALU, shared by every queue thread.
    files: HashMap<Uuid, Arc<File>>,
    events: mpsc::Sender<Event>,
}

fn open_disk(path: &str) -> Result<Box<dyn Disk>, String> {
    FileDisk::open(std::path::Path::new(path), true)
        .map(|d| Box::new(d) as Box<dyn Disk>)
        .map_err(|e| format!("alu {path}: cannot open: {e}"))
}

impl Daemon {
    /// Scan the ALUs, open the object database, and bring complete volumes online.
    pub fn start(cfg: Config, events: mpsc::Sender<Event>) -> Result<Daemon, String> {
        let mut disks = Vec::new();
        let mut missing = BTreeMap::new();
        for p in &cfg.alus {
            let path = p.display().to_string();
            if disks.iter().any(|(d, _): &(String, _)| *d == path) {
                continue;
            }
            match open_disk(&path) {
                Ok(d) => disks.push((path, d)),
                Err(e) => {
                    warn!("{e}");
                    missing.insert(path, e);
                }
            }
        }
        let (store, report) = Store::open(disks, Some(&cfg.cluster), true)
            .map_err(|e| format!("cannot open the object database: {e}"))?;
        for r in &report.repairs {
            warn!("repaired: {r}");
        }
        for p in &report.problems {
            error!("{p}");
        }
        let mut d = Daemon {
            cfg,
            store,
            missing,
            runtime: BTreeMap::new(),
            files: HashMap::new(),
            events,
        };
        for s in d.store.alus() {
            info!(alu = %s.path, state = %state_name(&s.state), "scanned");
        }
        let names: Vec<String> = d.image_volumes().iter().map(|v| v.name.clone()).collect();
        for name in names {
            d.runtime
                .insert(name.clone(), Runtime::Offline { reason: None });
            if let Err(e) = d.online(&name) {
                error!("{e}");
            }
        }
        Ok(d)
    }

    fn image_volumes(&self) -> Vec<VolumeDef> {
        self.store
            .image()
            .map(|i| i.volumes.clone())
            .unwrap_or_default()
    }

    fn volume(&self, name: &str) -> Result<VolumeDef, String> {
        self.image_volumes()
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| format!("volume {name}: not found"))
    }

    /// Handle one control request.
    pub fn handle(&mut self, req: Request) -> Result<Payload, String> {
        match req {
            Request::AluList => Ok(Payload::Alus(self.alu_views())),
            Request::AluShow { path } => self
                .alu_views()
                .into_iter()
                .find(|a| a.path == path)
                .map(Payload::Alu)
                .ok_or_else(|| format!("alu {path}: unknown (not scanned by this daemon)")),
            Request::AluScan => self.scan().map(Payload::Alus),
            Request::AluClaim { path, force } => self.claim(&path, force),
            Request::AluRelease { path } => self.release(&path),
            Request::AluFail { path } => self.fail_alu(&path),
            Request::VolCreate {
                name,
                size,
                alus,
                layout,
            } => self.create(&name, size, &alus, &layout),
            Request::VolList => Ok(Payload::Volumes(
                self.image_volumes()
                    .iter()
                    .map(|v| self.volume_view(v))
                    .collect(),
            )),
            Request::VolShow { name } => {
                let v = self.volume(&name)?;
                Ok(Payload::Volume(self.volume_view(&v)))
            }
            Request::VolRemove { name } => self.remove(&name),
            Request::VolOnline { name } => {
                self.volume(&name)?;
                self.online(&name)?;
                let v = self.volume(&name)?;
                Ok(Payload::Volume(self.volume_view(&v)))
            }
            Request::VolOffline { name } => {
                self.volume(&name)?;
                self.offline(&name)?;
                let v = self.volume(&name)?;
                Ok(Payload::Volume(self.volume_view(&v)))
            }
        }
    }

    /// Take every volume offline (SIGTERM): the kernel flushes each device
    /// as it is stopped.
    pub fn shutdown(&mut self) {
        let names: Vec<String> = self.runtime.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.offline(&name) {
                error!("{e}");
            }
        }
    }

    fn problem_of(&self, name: &str) -> Option<String> {
        self.store
            .volume_problems()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, why)| why)
    }

    fn data_file(&mut self, alu: Uuid) -> Result<Arc<File>, String> {
        if let Some(f) = self.files.get(&alu) {
            return Ok(f.clone());
        }
        let path = self
            .store
            .path_of(alu)
            .ok_or_else(|| format!("alu {alu}: not present"))?
            .to_string();
        let f = tierblk_stack::partition::open_alu(std::path::Path::new(&path))
            .map_err(|e| format!("alu {path}: cannot open for I/O: {e}"))?;
        self.files.insert(alu, f.clone());
        Ok(f)
    }

    /// Build the volume's stack and expose it; a volume with a problem stays
    /// offline and remembers why ([094]).
    fn online(&mut self, name: &str) -> Result<(), String> {
        if matches!(self.runtime.get(name), Some(Runtime::Online { .. })) {
            return Ok(());
        }
        let v = self.volume(name)?;
        match self.bring_online(&v) {
            Ok((exposed, health)) => {
                self.runtime
                    .insert(name.to_string(), Runtime::Online { exposed, health });
                Ok(())
            }
            Err(e) => {
                self.runtime.insert(
                    name.to_string(),
                    Runtime::Offline {
                        reason: Some(e.clone()),
                    },
                );
                Err(e)
            }
        }
    }

    fn bring_online(&mut self, v: &VolumeDef) -> Result<(Exposed, Vec<Arc<MirrorHealth>>), String> {
        if let Some(p) = self.problem_of(&v.name) {
            return Err(format!("volume {}: held offline: {p}", v.name));
        }
        let degraded: Vec<u16> = self
            .store
            .degraded_members(&v.name)
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        let mut members = Vec::with_capacity(v.members.len());
        for m in 0..v.layout.members() as u16 {
            let mut pieces = Vec::new();
            for s in v.segments.iter().filter(|s| s.member == m) {
                let file = match self.data_file(s.alu) {
                    Ok(f) => f,
                    // A degraded leg starts marked failed in its mirror and is
                    // never touched: a read-only /dev/null stands in for an
                    // ALU that is gone (a write to it would fail, not vanish).
                    Err(_) if degraded.contains(&m) => absent_alu()?,
                    Err(e) => return Err(format!("volume {}: {e}", v.name)),
                };
                pieces.push((file, s.start, s.len));
            }
            members.push(MemberDesc { pieces });
        }
        let copies = usize::from(v.layout.copies.max(1));
        let health = self.mirror_health(v, &degraded);
        let layout = match v.layout.kind {
            LayoutKind::Linear => StackLayout::Linear,
            LayoutKind::Stripe => StackLayout::Stripe {
                chunk: v.layout.chunk,
            },
            LayoutKind::Mirror => StackLayout::Mirror,
            LayoutKind::Raid10 => StackLayout::Raid10 {
                chunk: v.layout.chunk,
            },
        };
        let desc = VolumeDesc {
            layout,
            copies,
            members,
            health: health.clone(),
        };
        if !ublk::available() {
            return Err(format!(
                "volume {}: cannot expose: /dev/ublk-control missing (load the ublk_drv module)",
                v.name
            ));
        }
        let exposed = ublk::expose(VolumeSpec {
            name: v.name.clone(),
            wwn: hex(&v.wwn),
            desc: Arc::new(desc),
            queues: self.cfg.queues,
            depth: self.cfg.depth,
        })
        .map_err(|e| e.to_string())?;
        Ok((exposed, health))
    }

    /// One shared health record per mirror; a failing leg reports through the
    /// event channel and waits until the failure is on disk.
    fn mirror_health(&self, v: &VolumeDef, degraded: &[u16]) -> Vec<Arc<MirrorHealth>> {
        let copies = v.layout.copies.max(1);
        let mirrors = match v.layout.kind {
            LayoutKind::Mirror => 1,
            LayoutKind::Raid10 => v.layout.stripes,
            _ => 0,
        };
        (0..mirrors)
            .map(|j| {
                let mut mask = 0u32;
                for leg in 0..copies {
                    if degraded.contains(&(j * copies + leg)) {
                        mask |= 1 << leg;
                    }
                }
                let events = self.events.clone();
                let volume = v.name.clone();
                let on_fail = move |leg: usize, errno: i32| {
                    let (done, wait) = mpsc::channel();
                    let member = j * copies + leg as u16;
                    error!(volume = %volume, member, errno, "mirror leg failed: degrading");
                    let sent = events.send(Event::LegFailed {
                        volume: volume.clone(),
                        member,
                        errno,
                        done,
                    });
                    if sent.is_err() || wait.recv_timeout(PERSIST_WAIT).is_err() {
                        error!(volume = %volume, member, "leg failure not yet persisted");
                    }
                };
                Arc::new(MirrorHealth::new(
                    usize::from(copies),
                    mask,
                    Box::new(on_fail),
                ))
            })
            .collect()
    }

    /// Persist a leg failure found on the data path ([0168]–[0171]). An
    /// I/O error means the ALU under the leg is dead (as MD marks a device
    /// faulty): the ALU is failed, which fails every member on it in one
    /// commit and stops every running mirror from using it.
    pub fn on_event(&mut self, ev: Event) {
        match ev {
            Event::LegFailed {
                volume,
                member,
                errno,
                done,
            } => {
                let alus: Vec<Uuid> = self
                    .volume(&volume)
                    .map(|v| {
                        let mut a: Vec<Uuid> = v
                            .segments
                            .iter()
                            .filter(|s| s.member == member)
                            .map(|s| s.alu)
                            .collect();
                        a.dedup();
                        a
                    })
                    .unwrap_or_default();
                for alu in alus {
                    match self.fail_alu_uuid(alu) {
                        Ok(_) => {
                            warn!(volume = %volume, member, errno, %alu, "leg failure persisted; ALU failed")
                        }
                        Err(e) => {
                            error!(volume = %volume, member, "cannot persist the leg failure: {e}")
                        }
                    }
                }
                let _ = done.send(());
            }
        }
    }

    fn offline(&mut self, name: &str) -> Result<(), String> {
        match self.runtime.remove(name) {
            Some(Runtime::Online { exposed, health }) => {
                let dev = exposed.device();
                if let Err(e) = ensure_unused(&dev) {
                    self.runtime
                        .insert(name.to_string(), Runtime::Online { exposed, health });
                    return Err(format!("volume {name}: {e}"));
                }
                let r = exposed.stop().map_err(|e| e.to_string());
                self.runtime
                    .insert(name.to_string(), Runtime::Offline { reason: None });
                r
            }
            Some(other) => {
                self.runtime.insert(name.to_string(), other);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn cluster_name(&self) -> &str {
        self.store
            .image()
            .map(|i| i.sig.name.as_str())
            .unwrap_or(&self.cfg.cluster)
    }

    fn claim(&mut self, path: &str, force: bool) -> Result<Payload, String> {
        if !self.store.alus().iter().any(|a| a.path == path) {
            let disk = open_disk(path)?;
            self.store
                .add_disk(path.to_string(), disk)
                .map_err(|e| e.to_string())?;
            self.missing.remove(path);
            info!(alu = %path, "added to the scanned set");
        }
        let cluster = self.cluster_name().to_string();
        let uuid = self
            .store
            .claim(path, &cluster, force)
            .map_err(|e| match e {
                MetaError::ForeignData { .. } => {
                    format!("{e} (`tierblk alu claim --force {path}` destroys it)")
                }
                e => e.to_string(),
            })?;
        info!(alu = %path, %uuid, cluster = %cluster, "claimed");
        self.alu_view(path).map(Payload::Alu)
    }

    fn release(&mut self, path: &str) -> Result<Payload, String> {
        let uuid = self.owned_uuid(path)?;
        self.store.release(path).map_err(|e| e.to_string())?;
        self.files.remove(&uuid);
        info!(alu = %path, "released");
        Ok(Payload::Done(format!("alu {path}: released")))
    }

    fn owned_uuid(&self, path: &str) -> Result<Uuid, String> {
        let st = self
            .store
            .alus()
            .into_iter()
            .find(|a| a.path == path)
            .ok_or_else(|| format!("alu {path}: unknown (not scanned by this daemon)"))?;
        match st.state {
            AluState::Owned { uuid } => Ok(uuid),
            other => Err(format!(
                "alu {path}: not owned by cluster {:?} ({}): claim it first",
                self.cluster_name(),
                state_name(&other)
            )),
        }
    }

    fn scan(&mut self) -> Result<Vec<AluView>, String> {
        let retry: Vec<String> = self.missing.keys().cloned().collect();
        for path in retry {
            match open_disk(&path) {
                Ok(disk) => {
                    let report = self
                        .store
                        .add_disk(path.clone(), disk)
                        .map_err(|e| e.to_string())?;
                    for r in &report.repairs {
                        warn!("repaired: {r}");
                    }
                    self.missing.remove(&path);
                    info!(alu = %path, "appeared");
                }
                Err(e) => {
                    self.missing.insert(path, e);
                }
            }
        }
        Ok(self.alu_views())
    }

    fn create(
        &mut self,
        name: &str,
        size: u64,
        alus: &[String],
        spec: &LayoutSpec,
    ) -> Result<Payload, String> {
        if self.image_volumes().iter().any(|v| v.name == name) {
            return Err(format!("volume {name}: name already taken"));
        }
        let layout = layout_from(spec).map_err(|e| format!("volume {name}: {e}"))?;
        let size = planner::rounded_size(size, &layout)
            .ok_or_else(|| format!("volume {name}: size too large"))?;
        let mut candidates = Vec::new();
        let paths: Vec<String> = if alus.is_empty() {
            let mut owned: Vec<String> = self
                .store
                .alus()
                .into_iter()
                .filter(|a| matches!(a.state, AluState::Owned { .. }))
                .map(|a| a.path)
                .collect();
            owned.sort();
            owned
        } else {
            alus.to_vec()
        };
        for path in &paths {
            let uuid = self.owned_uuid(path)?;
            candidates.push(Candidate {
                alu: uuid,
                name: path.clone(),
                free: self.store.free_extents(uuid),
            });
        }
        let plan =
            planner::plan(size, &layout, &candidates).map_err(|e| format!("volume {name}: {e}"))?;
        let def = self
            .store
            .create_volume_with(name, size, layout, &plan)
            .map_err(|e| e.to_string())?;
        info!(volume = %name, size = %format_size(size), layout = %spec.kind, "created");
        self.runtime
            .insert(name.to_string(), Runtime::Offline { reason: None });
        if let Err(e) = self.online(name) {
            warn!("{e}");
        }
        Ok(Payload::Volume(self.volume_view(&def)))
    }

    fn remove(&mut self, name: &str) -> Result<Payload, String> {
        self.volume(name)?;
        self.offline(name)?;
        self.store.remove_volume(name).map_err(|e| e.to_string())?;
        self.runtime.remove(name);
        info!(volume = %name, "removed");
        Ok(Payload::Done(format!("volume {name}: removed")))
    }

    fn volume_view(&self, v: &VolumeDef) -> VolumeView {
        let degraded = self.store.degraded_members(&v.name);
        let (state, device, problem) = match self.runtime.get(&v.name) {
            Some(Runtime::Online { exposed, health }) => {
                let live_degraded = health.iter().any(|h| h.failed_mask() != 0);
                let state = if live_degraded || !degraded.is_empty() {
                    "degraded"
                } else {
                    "online"
                };
                (state, Some(exposed.device()), None)
            }
            Some(Runtime::Offline { reason }) => (
                "offline",
                None,
                self.problem_of(&v.name).or_else(|| reason.clone()),
            ),
            None => ("offline", None, self.problem_of(&v.name)),
        };
        let members = v
            .members
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let index = i as u16;
                let detail = degraded
                    .iter()
                    .find(|(m, _)| *m == index)
                    .map(|(_, why)| why.clone());
                let (health, fail_seq) = match h {
                    MemberHealth::Ok if detail.is_some() => ("failed", None),
                    MemberHealth::Ok => ("ok", None),
                    MemberHealth::Failed { fail_seq } => ("failed", Some(*fail_seq)),
                    MemberHealth::Rebuilding { .. } => ("rebuilding", None),
                };
                MemberView {
                    index,
                    health: health.into(),
                    detail,
                    fail_seq,
                }
            })
            .collect();
        VolumeView {
            name: v.name.clone(),
            id: v.id,
            size: v.size,
            layout: layout_name(&v.layout).into(),
            stripes: v.layout.stripes,
            copies: v.layout.copies,
            chunk: v.layout.chunk,
            state: state.into(),
            device,
            wwn: hex(&v.wwn),
            problem,
            members,
            segments: v
                .segments
                .iter()
                .map(|s| SegmentView {
                    member: s.member,
                    alu: s.alu.to_string(),
                    path: self.store.path_of(s.alu).map(str::to_string),
                    start: s.start,
                    len: s.len,
                })
                .collect(),
        }
    }

    fn fail_alu(&mut self, path: &str) -> Result<Payload, String> {
        let uuid = self.owned_uuid(path)?;
        let affected = self.fail_alu_uuid(uuid)?;
        let list = affected
            .iter()
            .map(|(v, m)| format!("{v} member {m}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Payload::Done(if list.is_empty() {
            format!("alu {path}: failed (no volume used it)")
        } else {
            format!("alu {path}: failed; degraded: {list}")
        }))
    }

    /// Fail an ALU: persist it, then stop every running mirror from using it.
    fn fail_alu_uuid(&mut self, uuid: Uuid) -> Result<Vec<(String, u16)>, String> {
        let affected = self.store.fail_alu(uuid).map_err(|e| e.to_string())?;
        for (volume, member) in &affected {
            let copies = self
                .volume(volume)
                .map(|v| v.layout.copies.max(1))
                .unwrap_or(1);
            if let Some(Runtime::Online { health, .. }) = self.runtime.get(volume) {
                if let Some(h) = health.get(usize::from(member / copies)) {
                    h.mark_failed(usize::from(member % copies));
                }
            }
            warn!(alu = %uuid, volume = %volume, member, "member failed with its ALU");
        }
        self.files.remove(&uuid);
        Ok(affected)
    }

    fn alu_view(&self, path: &str) -> Result<AluView, String> {
        self.alu_views()
            .into_iter()
            .find(|a| a.path == path)
            .ok_or_else(|| format!("alu {path}: unknown"))
    }

    fn alu_views(&self) -> Vec<AluView> {
        let image: Option<&ClusterImage> = self.store.image();
        let mut out: Vec<AluView> = self
            .store
            .alus()
            .into_iter()
            .map(|s| {
                let mut view = AluView {
                    path: s.path.clone(),
                    state: state_name(&s.state).into(),
                    size: s.size,
                    uuid: None,
                    cluster: None,
                    detail: None,
                    boot_member: false,
                    free: None,
                    partitions: Vec::new(),
                };
                match &s.state {
                    AluState::Owned { uuid } => {
                        view.uuid = Some(uuid.to_string());
                        view.cluster = image.map(|i| i.sig.name.clone());
                        view.free = Some(self.store.free_extents(*uuid).iter().map(|e| e.len).sum());
                        if let Some(i) = image {
                            view.boot_member = i.alus.iter().any(|a| a.uuid == *uuid && a.boot_member);
                            for v in &i.volumes {
                                for seg in v.segments.iter().filter(|seg| seg.alu == *uuid) {
                                    view.partitions.push(PartitionView {
                                        volume: v.name.clone(),
                                        start: seg.start,
                                        len: seg.len,
                                    });
                                }
                            }
                        }
                    }
                    AluState::NotOwned { foreign } => view.detail = foreign.clone(),
                    AluState::Damaged { uuid, reason } => {
                        view.uuid = uuid.map(|u| u.to_string());
                        view.detail = Some(reason.clone());
                    }
                    AluState::OtherCluster { sig } => {
                        view.cluster = Some(sig.name.clone());
                        view.detail = Some(format!("owned by cluster {:?}", sig.name));
                    }
                    AluState::Orphan { uuid } => {
                        view.uuid = Some(uuid.to_string());
                        view.detail =
                            Some("signature present but not in the boot set (interrupted claim): claim it again".into());
                    }
                    AluState::Unreadable { reason } => view.detail = Some(reason.clone()),
                }
                view
            })
            .collect();
        for (path, err) in &self.missing {
            out.push(AluView {
                path: path.clone(),
                state: "missing".into(),
                size: 0,
                uuid: None,
                cluster: None,
                detail: Some(err.clone()),
                boot_member: false,
                free: None,
                partitions: Vec::new(),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

fn absent_alu() -> Result<Arc<File>, String> {
    File::open("/dev/null")
        .map(Arc::new)
        .map_err(|e| format!("cannot open /dev/null: {e}"))
}

/// Turn the CLI's layout request into a validated layout, with defaults.
fn layout_from(spec: &LayoutSpec) -> Result<Layout, String> {
    let chunk = spec.chunk.unwrap_or(64 << 10);
    let (kind, stripes, copies, chunk) = match spec.kind.as_str() {
        "linear" | "concat" => (LayoutKind::Linear, 1, 1, 0),
        "stripe" => (LayoutKind::Stripe, spec.stripes.unwrap_or(2), 1, chunk),
        "mirror" => (LayoutKind::Mirror, 1, spec.copies.unwrap_or(2), 0),
        "raid10" => (
            LayoutKind::Raid10,
            spec.stripes.unwrap_or(2),
            spec.copies.unwrap_or(2),
            chunk,
        ),
        other => {
            return Err(format!(
                "unknown layout {other:?} (linear, concat, stripe, mirror, raid10)"
            ))
        }
    };
    let layout = Layout {
        kind,
        stripes,
        copies,
        chunk,
    };
    layout.validate()?;
    Ok(layout)
}

fn layout_name(l: &Layout) -> &'static str {
    match l.kind {
        LayoutKind::Linear => "linear",
        LayoutKind::Stripe => "stripe",
        LayoutKind::Mirror => "mirror",
        LayoutKind::Raid10 => "raid10",
    }
}

pub fn state_name(s: &AluState) -> &'static str {
    match s {
        AluState::NotOwned { .. } => "not-owned",
        AluState::Owned { .. } => "owned",
        AluState::Damaged { .. } => "damaged",
        AluState::OtherCluster { .. } => "other-cluster",
        AluState::Orphan { .. } => "orphan",
        AluState::Unreadable { .. } => "unreadable",
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuse to stop a device that is mounted or held open: an exclusive open of
/// a block device fails with EBUSY while a filesystem is mounted on it.
fn ensure_unused(dev: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(dev)
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(format!(
            "{dev} is in use (mounted or open): unmount it first"
        )),
        // Device node gone or not openable: nothing holds it through us.
        Err(_) => Ok(()),
    }
}
