//! This daemon as one storage processor among peers (spec sections III–V).
//!
//! Without `--sp` the daemon is the embedded default: storage processor,
//! master and coordinator in one. With it, the daemon serves its ALUs' tier-1
//! objects on the fabric ([`crate::sp::SpCatalog`]), watches its peers (a
//! `State` request on the control channel every second is the heartbeat and
//! each peer's report of its ALUs), and
//! takes the role the election rule gives it ([`crate::sp::elect`]):
//!
//! * **master** ([062], [069]): opens the object database over its own ALUs
//!   and, through the fabric, the ALUs of every peer that answers
//!   ([`crate::sp::RemoteDisk`], fenced by its generation), then brings the
//!   volumes online here: pieces on its own ALUs are local references,
//!   pieces on a peer's ALUs remote references to that peer's `part:`
//!   exports (start-up order of [088]–[095]);
//! * **peer**: serves its exports and refuses administration, naming the
//!   master.
//!
//! When the master stops answering for [`MISSES`] heartbeats the others run
//! the rule again and one takes over with a newer generation; the old master,
//! should it come back, finds itself fenced (its ALU sessions are refused)
//! and steps down when it sees the newer master.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tierblk_fabric::server::ServerConfig;
use tierblk_fabric::NbdServer;
use tierblk_stack::remote::RemoteDesc;

use super::*;
use crate::sp::{elect, Decision, ExportName, RemoteDisk, SpCatalog, SpConfig, SpView};

/// How often peers are asked who they are.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long one heartbeat waits for a peer's answer.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Heartbeats a peer may miss before it counts as gone.
pub const MISSES: u32 = 3;

/// What this SP is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Looking for the master (start-up, or the master just went away).
    Electing,
    /// The one writer of the object database, of this generation.
    Master { generation: u64 },
    /// Serving its exports; `master` holds the object database.
    Peer { master: String },
}

/// What this SP knows of one peer.
#[derive(Debug, Default)]
pub struct PeerState {
    /// Its last answer.
    pub view: Option<SpView>,
    /// Heartbeats missed in a row.
    pub misses: u32,
    /// Why the last heartbeat failed.
    pub error: Option<String>,
}

/// The daemon's cluster side.
pub struct Cluster {
    pub sp: SpConfig,
    pub catalog: Arc<SpCatalog>,
    server: NbdServer,
    pub role: Role,
    pub peers: BTreeMap<String, PeerState>,
    /// Remote references by tier-1 object (alu, start, len), shared by the
    /// volumes' trees: their path states outlive one online.
    remotes: HashMap<(Uuid, u64, u64), Arc<RemoteDesc>>,
    /// With etcd: the generation etcd elected this SP for, until it takes
    /// office (once every peer answered or was given up on).
    won: Option<u64>,
    /// Peers whose assignments this master could not deliver: tried again
    /// at every heartbeat.
    pub unassigned: BTreeSet<String>,
}

impl Cluster {
    /// Serve this SP's exports and start the heartbeat thread.
    pub fn start(
        sp: SpConfig,
        cluster: &str,
        alus: &[PathBuf],
        events: mpsc::Sender<Event>,
    ) -> Result<Cluster, String> {
        for a in &sp.listen {
            if let tierblk_stack::nbd::NbdAddr::Unix(p) = a {
                remove_stale_socket(p)?;
            }
        }
        let catalog = Arc::new(SpCatalog::new(&sp.name, cluster, alus));
        let config = ServerConfig {
            secret: sp.secret.as_deref().cloned(),
            ..ServerConfig::default()
        };
        let server = NbdServer::start_catalog(&sp.listen, catalog.clone(), config)
            .map_err(|e| format!("sp {}: cannot serve the fabric: {e}", sp.name))?;
        info!(sp = %sp.name, endpoints = ?server.addrs(), "serving tier-1 exports");
        let peers = sp
            .peers
            .iter()
            .map(|p| (p.name.clone(), PeerState::default()))
            .collect();
        if let Some(etcd) = &sp.etcd {
            let election = format!("tierblk/{cluster}/master");
            info!(%etcd, %election, "master election through etcd");
            let tx = events.clone();
            crate::etcd::spawn(etcd.clone(), election, sp.name.clone(), move |l| {
                tx.send(Event::Leadership(l)).is_ok()
            })?;
        }
        let tx = Mutex::new(events.clone());
        let me = Arc::downgrade(&catalog);
        catalog.set_control(Box::new(move |body: &[u8]| {
            let req: super::expose::ControlRequest = serde_json::from_slice(body)
                .map_err(|e| format!("malformed control request: {e}"))?;
            // A heartbeat is answered here, on the connection's thread: a
            // busy daemon (taking office) must not look dead.
            if req == super::expose::ControlRequest::State {
                let c = me.upgrade().ok_or("stopping")?;
                return serde_json::to_vec(&c.view()).map_err(|e| e.to_string());
            }
            let (reply, wait) = mpsc::channel();
            tx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(Event::Control(req, reply))
                .map_err(|_| "daemon stopping".to_string())?;
            wait.recv_timeout(Duration::from_secs(60))
                .map_err(|_| "no answer from the daemon".to_string())?
                .map(String::into_bytes)
        }));
        let (list, secret) = (sp.peers.clone(), sp.secret.clone());
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                let views = list
                    .iter()
                    .map(|p| (p.name.clone(), ask(&p.paths, secret.as_deref())))
                    .collect();
                if events.send(Event::Peers(views)).is_err() {
                    return;
                }
                std::thread::sleep(HEARTBEAT);
            })
            .map_err(|e| format!("cannot start the heartbeat thread: {e}"))?;
        Ok(Cluster {
            sp,
            catalog,
            server,
            role: Role::Electing,
            peers,
            remotes: HashMap::new(),
            won: None,
            unassigned: BTreeSet::new(),
        })
    }

    /// This SP as its peers see it.
    pub fn me(&self) -> SpView {
        let (master, generation) = match self.role {
            Role::Master { generation } => (true, generation),
            _ => (false, self.catalog.generation()),
        };
        SpView {
            name: self.sp.name.clone(),
            master,
            generation,
            alus: self.catalog.alu_paths(),
        }
    }

    /// The peers that answer now.
    pub fn reachable(&self) -> Vec<SpView> {
        self.peers
            .values()
            .filter(|p| p.misses < MISSES)
            .filter_map(|p| p.view.clone())
            .collect()
    }

    /// Endpoints of peer `name`.
    pub fn paths_of(&self, name: &str) -> Option<&[tierblk_stack::nbd::NbdAddr]> {
        self.sp
            .peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.paths.as_slice())
    }

    /// Where this SP listens.
    pub fn endpoints(&self) -> &[tierblk_stack::nbd::NbdAddr] {
        self.server.addrs()
    }

    /// The remote reference to `len` bytes at `start` of `alu`, owned by
    /// `peer`; probed when first made.
    pub fn remote(
        &mut self,
        peer: &str,
        alu: Uuid,
        start: u64,
        len: u64,
        generation: u64,
    ) -> Result<Arc<RemoteDesc>, String> {
        if let Some(d) = self.remotes.get(&(alu, start, len)) {
            return Ok(d.clone());
        }
        let paths = self
            .paths_of(peer)
            .ok_or_else(|| format!("sp {peer}: not a configured peer"))?
            .to_vec();
        let export = ExportName::Part {
            generation,
            alu,
            start,
            len,
        }
        .to_string();
        let d = RemoteDesc::new(export, len, paths, self.sp.secret.clone())
            .and_then(RemoteDesc::probe)
            .map_err(|e| format!("sp {peer}: {e}"))?;
        let d = Arc::new(d);
        self.remotes.insert((alu, start, len), d.clone());
        Ok(d)
    }

    /// Re-admit the remote references to `pieces` (alu, start, len) under
    /// master generation `generation`: each names its tier-1 object at that
    /// generation from now on (a peer cuts and refuses older ones), and the
    /// trees holding it, which the new master confirmed, go on: requests
    /// waiting on a cut connection reconnect under the new name. With
    /// `forget_others`, references to any other piece still at an older
    /// generation are forgotten (a tree built later gets a new one; one
    /// still holding it stays fenced).
    pub fn readmit(
        &mut self,
        generation: u64,
        pieces: &HashSet<(Uuid, u64, u64)>,
        forget_others: bool,
    ) {
        self.remotes.retain(|key, d| {
            let Ok(ExportName::Part { generation: g, .. }) = d.export().parse::<ExportName>()
            else {
                return true;
            };
            if g >= generation {
                return true;
            }
            if !pieces.contains(key) {
                return !forget_others;
            }
            let (alu, start, len) = *key;
            d.rename(
                ExportName::Part {
                    generation,
                    alu,
                    start,
                    len,
                }
                .to_string(),
            );
            true
        });
    }

    /// `peer`'s ALU at `alu` (its own path) as a metadata disk of the master
    /// of `generation`.
    pub fn peer_alu(
        &self,
        peer: &str,
        alu: &str,
        generation: u64,
    ) -> Result<Box<dyn Disk>, String> {
        let paths = self
            .paths_of(peer)
            .ok_or_else(|| format!("sp {peer}: not a configured peer"))?;
        let export = ExportName::Alu {
            generation,
            path: alu.to_string(),
        }
        .to_string();
        RemoteDisk::open(paths, &export, self.sp.secret.clone())
            .map(|d| Box::new(d) as Box<dyn Disk>)
            .map_err(|e| {
                warn!(alu = %format!("{peer}:{alu}"), "cannot reach: {e}");
                e
            })
    }

    /// Every remote reference made so far.
    pub fn remotes(&self) -> impl Iterator<Item = (&(Uuid, u64, u64), &Arc<RemoteDesc>)> {
        self.remotes.iter()
    }
}

/// A socket file left by a daemon that was killed is removed; one that a
/// live process answers on is not ours to take.
fn remove_stale_socket(p: &std::path::Path) -> Result<(), String> {
    if !p.exists() {
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(p) {
        Ok(_) => Err(format!(
            "fabric socket {}: another process listens on it",
            p.display()
        )),
        Err(_) => std::fs::remove_file(p).map_err(|e| {
            format!(
                "fabric socket {}: cannot remove stale file: {e}",
                p.display()
            )
        }),
    }
}

/// One heartbeat: the peer's `State` reply, over the first path that answers.
fn ask(
    paths: &[tierblk_stack::nbd::NbdAddr],
    secret: Option<&tierblk_stack::nbd::auth::Secret>,
) -> Result<SpView, String> {
    let mut why = Vec::new();
    let req =
        serde_json::to_vec(&super::expose::ControlRequest::State).map_err(|e| e.to_string())?;
    for p in paths {
        match tierblk_stack::nbd::control(p, secret, &req, HEARTBEAT_TIMEOUT) {
            Ok(reply) => {
                return serde_json::from_slice(&reply)
                    .map_err(|e| format!("{p}: malformed heartbeat reply: {e}"))
            }
            Err(e) => why.push(format!("{p}: {e}")),
        }
    }
    Err(why.join("; "))
}

impl Daemon {
    /// Record one round of heartbeats and act on the election rule.
    pub(super) fn on_peers(&mut self, views: Vec<(String, Result<SpView, String>)>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut back = Vec::new();
        let mut gone = Vec::new();
        for (name, r) in views {
            let st = c.peers.entry(name.clone()).or_default();
            match r {
                Ok(v) => {
                    if st.misses >= MISSES || st.view.is_none() {
                        back.push(name.clone());
                    }
                    if st.misses >= MISSES {
                        info!(sp = %name, "peer answers again");
                        self.log.emit("sp-up", None, name.clone());
                    }
                    st.view = Some(v);
                    st.misses = 0;
                    st.error = None;
                }
                Err(e) => {
                    st.misses = st.misses.saturating_add(1);
                    if st.misses == MISSES {
                        gone.push(name.clone());
                        warn!(sp = %name, "peer gone: {e}");
                        self.log.emit("sp-down", None, format!("{name}: {e}"));
                    }
                    st.error = Some(e);
                }
            }
        }
        self.reelect();
        if let Some(Role::Master { generation }) = self.cluster.as_ref().map(|c| c.role.clone()) {
            for name in gone {
                self.drop_peer_alus(&name);
                self.resync_after_peer(&name);
            }
            for name in back {
                self.add_peer_alus(&name, generation);
                self.push_assignments(Some(&name));
            }
            let retry: Vec<String> = self
                .cluster
                .as_ref()
                .map(|c| {
                    let up = c.reachable();
                    c.unassigned
                        .iter()
                        .filter(|n| up.iter().any(|v| &v.name == *n))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for name in retry {
                self.push_assignments(Some(&name));
            }
        }
    }

    /// A peer that stopped answering: its ALUs leave the object database
    /// (listed missing) so that commits no longer wait on them. Legs on them
    /// fail through their remote references and are persisted as failed.
    fn drop_peer_alus(&mut self, peer: &str) {
        let prefix = format!("{peer}:");
        let paths: Vec<String> = self
            .store
            .alus()
            .into_iter()
            .map(|a| a.path)
            .filter(|p| p.starts_with(&prefix))
            .collect();
        for p in paths {
            if let Err(e) = self.store.remove_disk(&p) {
                warn!(alu = %p, "{e}");
            }
            warn!(alu = %p, "peer's ALU gone");
            self.missing.insert(p, format!("sp {peer}: not answering"));
        }
    }

    /// A peer that answers again (or for the first time since this SP took
    /// office): its ALUs join the object database ([0172]: a late disk is
    /// found), and volumes they complete come online.
    pub(super) fn add_peer_alus(&mut self, peer: &str, generation: u64) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let Some(view) = c.peers.get(peer).and_then(|p| p.view.clone()) else {
            return;
        };
        let known: Vec<String> = self.store.alus().into_iter().map(|a| a.path).collect();
        let mut added = false;
        for alu in view.alus {
            let path = format!("{peer}:{alu}");
            if known.contains(&path) {
                continue;
            }
            let Some(Ok(disk)) = self
                .cluster
                .as_ref()
                .map(|c| c.peer_alu(peer, &alu, generation))
            else {
                continue;
            };
            match self.store.add_disk(path.clone(), disk) {
                Ok(_) => {
                    info!(alu = %path, "peer's ALU joined");
                    self.missing.remove(&path);
                    added = true;
                }
                Err(e) => warn!(alu = %path, "{e}"),
            }
        }
        if added {
            self.retry_held_volumes();
        }
    }

    /// Try again every volume held offline by a problem (not by an
    /// administrator).
    pub(super) fn retry_held_volumes(&mut self) {
        let held: Vec<String> = self
            .runtime
            .iter()
            .filter(|(_, r)| matches!(r, Runtime::Offline { reason: Some(_) }))
            .map(|(n, _)| n.clone())
            .collect();
        for name in held {
            let Ok(v) = self.volume(&name) else { continue };
            if !self.exposed_here(&v) {
                // Its tree for its jobs may build now.
                if self.keeps_tree(&v) {
                    self.hold_remote(&v, false);
                    self.start_jobs_of(&v);
                }
                continue;
            }
            match self.online(&name) {
                Ok(()) => info!(volume = %name, "online after a peer's ALUs joined"),
                Err(e) => warn!("{e}"),
            }
        }
    }

    /// Take the role the rule gives this SP now (or, with etcd, the office
    /// etcd gave it once the peers are known).
    fn reelect(&mut self) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        // At start-up, wait for every peer's first answer (or its misses)
        // so that the first election sees the whole cluster.
        let waiting = c
            .peers
            .values()
            .any(|p| p.view.is_none() && p.misses < MISSES);
        if c.sp.etcd.is_some() {
            match c.won {
                Some(g) if !waiting && c.role != (Role::Master { generation: g }) => {
                    self.take_office(g)
                }
                _ => {}
            }
            return;
        }
        if c.role == Role::Electing && waiting {
            return;
        }
        let decision = elect(&c.me(), &c.reachable());
        match (decision, c.role.clone()) {
            (Decision::Lead(g), Role::Master { generation }) if g == generation => {}
            (Decision::Lead(g), _) => self.take_office(g),
            (Decision::Follow(m), Role::Master { generation }) => {
                error!(master = %m, generation, "a newer master took over: stepping down");
                self.step_down(Role::Peer { master: m });
            }
            (Decision::Follow(m), Role::Peer { master }) if m == master => {}
            (Decision::Follow(m), _) => {
                info!(master = %m, "following the master");
                self.log
                    .emit("sp-role", None, format!("peer (master: {m})"));
                if let Some(c) = self.cluster.as_mut() {
                    c.role = Role::Peer { master: m };
                }
            }
        }
    }

    /// Become the master of `generation`: open the object database over
    /// this SP's ALUs and every reachable peer's, then bring the volumes
    /// online here.
    fn take_office(&mut self, generation: u64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        info!(sp = %c.sp.name, generation, "taking the master role");
        // Holds for the old master's jobs: it is gone, and this SP runs the
        // jobs from now on.
        self.fences.clear();
        c.catalog.set_role(true, generation);
        c.role = Role::Master { generation };
        let (mut disks, mut missing) = open_disks(&self.cfg.alus);
        // A peer known but gone: its ALUs are listed missing until it
        // answers again (add_peer_alus).
        for (name, p) in &c.peers {
            if p.misses >= MISSES {
                for alu in p.view.iter().flat_map(|v| v.alus.iter()) {
                    missing.insert(format!("{name}:{alu}"), format!("sp {name}: not answering"));
                }
            }
        }
        for v in c.reachable() {
            for alu in &v.alus {
                let path = format!("{}:{alu}", v.name);
                match c.peer_alu(&v.name, alu, generation) {
                    Ok(d) => disks.push((path, d)),
                    Err(e) => {
                        missing.insert(path, e);
                    }
                }
            }
        }
        match open_store(disks, &self.cfg.cluster) {
            Ok(store) => {
                self.store = store;
                self.missing = missing;
            }
            Err(e) => {
                error!("{e}");
                return;
            }
        }
        self.log
            .emit("sp-role", None, format!("master (generation {generation})"));
        // References of an earlier term carry its generation, which the
        // peers refuse from now on: those to a piece of a committed volume
        // go on under this generation, the rest are forgotten.
        let pieces: HashSet<(Uuid, u64, u64)> = self
            .store
            .image()
            .iter()
            .flat_map(|i| i.volumes.iter())
            .flat_map(|v| v.segments.iter().map(|s| (s.alu, s.start, s.len)))
            .collect();
        if let Some(c) = self.cluster.as_mut() {
            c.readmit(generation, &pieces, true);
        }
        let kept = self.adopt_assigned();
        self.activate();
        // Jobs the takeover queued for them (activate starts those of the
        // volumes it brings online).
        for v in kept {
            self.start_jobs_of(&v);
        }
        self.push_assignments(None);
    }

    /// The volumes this SP exposed for the old master become its own: one
    /// the object database still places here keeps its device and runs on
    /// (a mounted filesystem sees a pause at most), loading the committed
    /// tree in place if the old master's assignment differs from it;
    /// anything else goes offline.
    fn adopt_assigned(&mut self) -> Vec<VolumeDef> {
        let assigned = std::mem::take(&mut self.assigned);
        let mut kept = Vec::new();
        for (name, a) in assigned {
            let now = self
                .store
                .image()
                .and_then(|i| i.volumes.iter().find(|v| v.name == name).cloned());
            let online = matches!(self.runtime.get(&name), Some(Runtime::Online { .. }));
            match now {
                Some(v) if online && self.exposed_here(&v) => {
                    match self.keep_assigned(&v, &a.def) {
                        Ok(()) => {
                            info!(volume = %name, "kept online across the takeover");
                            self.log
                                .emit("volume-adopted", Some(&name), "kept online".into());
                            kept.push(v);
                            continue;
                        }
                        Err(e) => error!(volume = %name, "cannot keep it online: {e}"),
                    }
                }
                _ => {}
            }
            if let Err(e) = self.offline(&name) {
                warn!("{e}");
            }
            self.runtime.remove(&name);
        }
        self.owners.clear();
        kept
    }

    /// Make `v`, online here under the old master's definition `old`, run
    /// the committed definition: as it is when they agree, else loaded in
    /// place under quiescence. A hold the old master left (it died between
    /// its quiesce and its resume) ends here: this master confirmed the tree.
    fn keep_assigned(&mut self, v: &VolumeDef, old: &VolumeDef) -> Result<(), String> {
        if v.definition() != old.definition() {
            warn!(volume = %v.name, "the old master's tree differs from the committed one: loading it in place");
            if !self.quiesced.contains_key(&v.name) {
                self.quiesce_here(&v.name)?;
            }
            self.reload(v)?;
        }
        if self.quiesced.contains_key(&v.name) {
            self.resume_here(&v.name)?;
        }
        Ok(())
    }

    /// What etcd says: follow its leader, take office when it is this SP's
    /// lease, step down when this SP's lease is gone.
    pub(super) fn on_leadership(&mut self, l: crate::etcd::Leadership) {
        use crate::etcd::Leadership as L;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let master = matches!(c.role, Role::Master { .. });
        match l {
            L::Leader { leader, mine: true } => {
                info!(generation = leader.generation, "etcd elected this SP");
                c.won = Some(leader.generation);
                self.reelect();
            }
            L::Leader {
                leader,
                mine: false,
            } => {
                c.won = None;
                if master {
                    error!(master = %leader.name, "etcd says another SP leads: stepping down");
                    self.step_down(Role::Peer {
                        master: leader.name,
                    });
                } else if c.role
                    != (Role::Peer {
                        master: leader.name.clone(),
                    })
                {
                    info!(master = %leader.name, "following the master (etcd)");
                    self.log
                        .emit("sp-role", None, format!("peer (master: {})", leader.name));
                    c.role = Role::Peer {
                        master: leader.name,
                    };
                }
            }
            L::Vacant | L::LeaseLost(_) => {
                c.won = None;
                if master {
                    error!("etcd lease lost or no leader: stepping down ({l:?})");
                    self.step_down(Role::Electing);
                } else {
                    c.role = Role::Electing;
                }
            }
            L::Unreachable(e) => warn!("etcd: {e}"),
        }
    }

    /// Another SP is the master now (or this one lost its lease): this one's
    /// volumes go offline and its object database is closed (its sessions
    /// are fenced anyway).
    fn step_down(&mut self, role: Role) {
        let names: Vec<String> = self.runtime.keys().cloned().collect();
        self.quiesced.clear();
        for n in names {
            if let Err(e) = self.offline(&n) {
                warn!("{e}");
            }
        }
        if let Ok((store, _)) = Store::open(Vec::new(), Some(&self.cfg.cluster), false) {
            self.store = store;
        }
        self.files.clear();
        self.log
            .emit("sp-role", None, format!("stepped down: {role:?}"));
        if let Some(c) = self.cluster.as_mut() {
            c.remotes.clear();
            c.catalog.set_role(false, 0);
            c.role = role;
        }
    }

    /// Refuse an administrative request on an SP that is not the master.
    pub(super) fn require_master(&self) -> Result<(), String> {
        match self.cluster.as_ref().map(|c| (&c.sp.name, &c.role)) {
            None | Some((_, Role::Master { .. })) => Ok(()),
            Some((me, Role::Peer { master })) => Err(format!(
                "sp {me}: not the master: run this against sp {master}"
            )),
            Some((me, Role::Electing)) => Err(format!(
                "sp {me}: no master yet (waiting for the peers' first answers)"
            )),
        }
    }

    /// The piece for `len` bytes at `start` of `alu`: local when this SP
    /// owns the ALU, else a remote reference to the owning peer.
    pub(super) fn piece(&mut self, alu: Uuid, start: u64, len: u64) -> Result<Piece, String> {
        let Some(path) = self.store.path_of(alu).map(str::to_string) else {
            return self.assigned_piece(alu, start, len);
        };
        let generation = match self.cluster.as_ref().map(|c| &c.role) {
            Some(Role::Master { generation }) => *generation,
            _ => 0,
        };
        match self.peer_of(&path) {
            None => Ok(Piece::local(self.data_file(alu)?, start, len)),
            Some(peer) => {
                let c = self.cluster.as_mut().expect("peer_of found a cluster");
                c.remote(&peer, alu, start, len, generation)
                    .map(Piece::Remote)
                    .map_err(|e| format!("alu {path}: {e}"))
            }
        }
    }

    /// A piece of a volume the master assigned to this peer: local when
    /// this SP owns the ALU, else a remote reference at the assignment's
    /// generation.
    fn assigned_piece(&mut self, alu: Uuid, start: u64, len: u64) -> Result<Piece, String> {
        let owner = self
            .owners
            .get(&alu)
            .cloned()
            .ok_or_else(|| format!("alu {alu}: not present"))?;
        let generation = self
            .assigned
            .values()
            .map(|a| a.generation)
            .max()
            .unwrap_or(0);
        let c = self.cluster.as_mut().ok_or("no peers")?;
        if owner == c.sp.name {
            let file = c
                .catalog
                .file_of(alu)
                .ok_or_else(|| format!("alu {alu}: not one of this SP's ALUs"))?;
            return Ok(Piece::local(file, start, len));
        }
        c.remote(&owner, alu, start, len, generation)
            .map(Piece::Remote)
            .map_err(|e| format!("alu {alu} on sp {owner}: {e}"))
    }

    /// The peer owning the ALU at store path `path` (`PEER:/path`), if it
    /// is not this SP's.
    pub(super) fn peer_of(&self, path: &str) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let (name, _) = path.split_once(':')?;
        c.sp.peers
            .iter()
            .any(|p| p.name == name)
            .then(|| name.to_string())
    }
}

impl Daemon {
    /// `sp list`: this SP, then its peers as the heartbeats saw them.
    pub(super) fn sp_views(&self) -> Vec<crate::proto::SpView> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        let me = c.me();
        let role = match &c.role {
            Role::Master { .. } => "master",
            Role::Peer { .. } => "peer",
            Role::Electing => "electing",
        };
        let mut out = vec![crate::proto::SpView {
            name: me.name,
            role: role.into(),
            generation: me.generation,
            endpoints: c.endpoints().iter().map(|a| a.to_string()).collect(),
            alus: me.alus,
            state: "self".into(),
            error: None,
        }];
        for p in &c.sp.peers {
            let st = c.peers.get(&p.name);
            let view = st.and_then(|s| s.view.as_ref());
            let up = st.is_some_and(|s| s.view.is_some() && s.misses < MISSES);
            out.push(crate::proto::SpView {
                name: p.name.clone(),
                role: match view {
                    Some(v) if up && v.master => "master".into(),
                    Some(_) if up => "peer".into(),
                    _ => "unknown".into(),
                },
                generation: view.map_or(0, |v| v.generation),
                endpoints: p.paths.iter().map(|a| a.to_string()).collect(),
                alus: view.map(|v| v.alus.clone()).unwrap_or_default(),
                state: if up { "up" } else { "down" }.into(),
                error: st.and_then(|s| s.error.clone()),
            });
        }
        out
    }

    /// `path list`: every path of every remote reference made here.
    pub(super) fn path_views(&self) -> Vec<crate::proto::PathView> {
        let Some(c) = self.cluster.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ((alu, _, _), d) in c.remotes() {
            let sp = self
                .store
                .path_of(*alu)
                .and_then(|p| self.peer_of(p))
                .unwrap_or_default();
            for (i, p) in d.paths().into_iter().enumerate() {
                out.push(crate::proto::PathView {
                    sp: sp.clone(),
                    export: d.export(),
                    endpoint: p.addr.to_string(),
                    priority: i + 1,
                    state: if p.up { "up" } else { "down" }.into(),
                    active: p.active,
                    connects: p.connects,
                    failures: p.failures,
                    last_error: p.last_error,
                });
            }
        }
        out.sort_by(|a, b| (&a.export, a.priority).cmp(&(&b.export, b.priority)));
        out
    }

    /// Accept this SP's own ALUs as `ME:/path` too (the name its peers give
    /// them), so that one name works on every SP.
    pub(super) fn own_paths(&self, mut req: Request) -> Request {
        let Some(me) = self.cluster.as_ref().map(|c| format!("{}:", c.sp.name)) else {
            return req;
        };
        let fix = |p: &mut String| {
            if let Some(rest) = p.strip_prefix(&me) {
                *p = rest.to_string();
            }
        };
        match &mut req {
            Request::AluClaim { path, .. }
            | Request::AluRelease { path }
            | Request::AluShow { path }
            | Request::AluFail { path }
            | Request::AluReadd { path, .. }
            | Request::AluAdopt { path, .. } => fix(path),
            Request::AluReplace { old, new, .. } => {
                fix(old);
                fix(new);
            }
            Request::VolCreate { alus, .. } => alus.iter_mut().for_each(fix),
            _ => {}
        }
        req
    }

    /// The SP owning the ALU at store path `path`, for `alu list`.
    pub(super) fn sp_of(&self, path: &str) -> Option<String> {
        let c = self.cluster.as_ref()?;
        Some(self.peer_of(path).unwrap_or_else(|| c.sp.name.clone()))
    }
}
