//! Three tierblkd processes as peer storage processors on one machine (spec
//! sections III–V): election by rule ([069]), administration only on the
//! master, the master's object database over its peers' ALUs, remote
//! references to the peers' tier-1 exports, authentication, takeover after
//! kill -9 of the master ([062]) and fencing of the old one.
//!
//! The host has no ublk, so volumes stay offline here; what comes before
//! exposing (claiming remote ALUs, planning across SPs, probing every remote
//! piece over the fabric) is real. The VM scenario tests/vm/cluster.sh
//! carries I/O through /dev/ublkb0.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tierblk_stack::BlockDev;

const NAMES: [&str; 3] = ["sp1", "sp2", "sp3"];

struct Cluster {
    sps: Vec<Env>,
    root: std::path::PathBuf,
    tcp_port: u16,
}

fn sock(root: &std::path::Path, name: &str) -> String {
    root.join(format!("{name}.sock")).display().to_string()
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        Cluster::with(tag, None)
    }

    fn with(tag: &str, etcd: Option<&str>) -> Cluster {
        let root =
            std::env::temp_dir().join(format!("tierblk-cluster-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let secret = root.join("secret");
        std::fs::write(&secret, "a cluster secret of some length\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tcp_port = free_port();
        let mut sps = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let mut env = Env::new(&format!("{tag}-{name}"), &[64 * MIB, 64 * MIB]);
            env.extra = vec![
                "--sp".into(),
                name.to_string(),
                "--listen".into(),
                format!("unix:{}", sock(&root, name)),
                "--secret-file".into(),
                secret.display().to_string(),
            ];
            if i == 1 {
                env.extra.push("--listen".into());
                env.extra.push(format!("tcp:127.0.0.1:{tcp_port}"));
            }
            if let Some(e) = etcd {
                env.extra.push("--etcd".into());
                env.extra.push(e.to_string());
            }
            for other in NAMES.iter().filter(|n| *n != name) {
                env.extra.push("--peer".into());
                env.extra
                    .push(format!("{other}=unix:{}", sock(&root, other)));
            }
            sps.push(env);
        }
        Cluster {
            sps,
            root,
            tcp_port,
        }
    }

    fn sp_list(&self, i: usize) -> Vec<Value> {
        self.sps[i]
            .json(&["sp", "list"])
            .as_array()
            .unwrap()
            .clone()
    }

    fn role_of(&self, i: usize) -> String {
        self.sp_list(i)[0]["role"].as_str().unwrap().to_string()
    }

    /// Wait until SP `i` sees SP `j` in `role`.
    fn wait_sees(&self, i: usize, j: usize, role: &str, secs: u64) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if self
                .sp_list(i)
                .iter()
                .any(|s| s["name"] == NAMES[j] && s["role"] == role)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} never saw {} as {role}: {:?}",
            NAMES[i],
            NAMES[j],
            self.sp_list(i)
        );
    }

    fn wait_role(&self, i: usize, role: &str, secs: u64) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if self.role_of(i) == role {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} never became {role}: {:?}\n{}",
            NAMES[i],
            self.sp_list(i),
            std::fs::read_to_string(self.sps[i].dir.join("tierblkd.log")).unwrap_or_default()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sps.clear();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn nbdinfo(args: &[&str]) -> std::process::Output {
    Command::new("nbdinfo")
        .args(args)
        .output()
        .expect("nbdinfo (libnbd-bin) is installed by scripts/test")
}

#[test]
fn three_sps_elect_share_alus_fail_over_and_fence() {
    let mut c = Cluster::new("main");
    for env in &mut c.sps {
        env.start();
    }
    // Equal ALU counts: the lowest name is master ([069]).
    c.wait_role(0, "master", 20);
    c.wait_role(1, "peer", 20);
    c.wait_role(2, "peer", 20);
    let l = c.sp_list(0);
    assert_eq!(l.len(), 3);
    assert_eq!(l[0]["generation"], 1);
    assert!(l[1..].iter().all(|p| p["state"] == "up"), "{l:?}");

    // Only the master administers.
    let e = c.sps[1].refused(&["vol", "create", "x", "--size", "8M"]);
    assert!(e.contains("not the master") && e.contains("sp1"), "{e}");

    // The master sees every SP's ALUs, named SP:/path, and claims them
    // through the fabric.
    let alus = c.sps[0].json(&["alu", "list"]);
    let alus = alus.as_array().unwrap();
    assert_eq!(alus.len(), 6, "{alus:?}");
    let mut paths = Vec::new();
    for a in alus {
        let path = a["path"].as_str().unwrap().to_string();
        let sp = a["sp"].as_str().unwrap();
        if sp == "sp1" {
            assert!(path.starts_with('/'), "{path}");
        } else {
            assert!(path.starts_with(&format!("{sp}:/")), "{path}");
        }
        c.sps[0].ok(&["alu", "claim", &path]);
        paths.push(path);
    }
    let table = c.sps[0].ok(&["alu", "list"]);
    assert!(table.starts_with("SP"), "{table}");

    // A RAID10 across the three SPs, each mirror's legs on two SPs.
    let mut args = vec![
        "vol",
        "create",
        "r10",
        "--size",
        "48M",
        "--layout",
        "raid10",
        "--stripes",
        "3",
        "--copies",
        "2",
    ];
    let order = [0usize, 2, 4, 1, 3, 5]; // sp1, sp2, sp3, sp1, sp2, sp3
    for i in order {
        args.push("--alu");
        args.push(&paths[i]);
    }
    c.sps[0].ok(&args);
    let v = c.sps[0].json(&["vol", "show", "r10"]);
    let segs = v["segments"].as_array().unwrap();
    for sp in ["sp2:", "sp3:"] {
        assert!(
            segs.iter()
                .any(|s| s["path"].as_str().unwrap_or("").starts_with(sp)),
            "no segment on {sp}: {v}"
        );
    }
    // Bringing it online built remote references to sp2's and sp3's
    // partitions over the authenticated fabric (the host then lacks ublk).
    let reason = v["problem"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("ublk"), "{v}");
    let p = c.sps[0].json(&["path", "list"]);
    let p = p.as_array().unwrap();
    assert_eq!(p.len(), 4, "one path per remote piece: {p:?}");
    assert!(
        p.iter().all(|p| p["state"] == "up" && p["connects"] == 0),
        "{p:?}"
    );
    let sps: std::collections::BTreeSet<&str> =
        p.iter().map(|p| p["sp"].as_str().unwrap()).collect();
    assert_eq!(sps.into_iter().collect::<Vec<_>>(), ["sp2", "sp3"]);

    // Standard tools read a tier-1 export: as root over the Unix socket.
    let export = p[0]["export"].as_str().unwrap().to_string();
    let owner = p[0]["sp"].as_str().unwrap();
    let uri = format!("nbd+unix:///{export}?socket={}", sock(&c.root, owner));
    let o = nbdinfo(&["--size", &uri]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let len: u64 = export.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), len.to_string());
    // nbdcopy copies it out: the bytes of the owner's ALU at that range.
    let uuid = export.split(':').nth(2).unwrap();
    let start: u64 = export.split(':').nth(3).unwrap().parse().unwrap();
    let seg = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["alu"] == uuid)
        .unwrap()
        .clone();
    let alu_file = seg["path"]
        .as_str()
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .to_string();
    let out = c.root.join("copy.img");
    let o = Command::new("nbdcopy")
        .arg(&uri)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let alu_bytes = std::fs::read(&alu_file).unwrap();
    let copied = std::fs::read(&out).unwrap();
    assert_eq!(copied.len() as u64, len);
    assert!(
        copied[..] == alu_bytes[start as usize..(start + len) as usize],
        "nbdcopy bytes differ"
    );
    // ... but not over TCP without the secret, not even the list.
    let tcp = format!("nbd://127.0.0.1:{}", c.tcp_port);
    let o = nbdinfo(&["--list", &tcp]);
    assert!(!o.status.success(), "unauthenticated list succeeded");
    let o = nbdinfo(&["--size", &format!("{tcp}/{export}")]);
    assert!(!o.status.success(), "unauthenticated read succeeded");
    // A partition outside an ALU's data area is no export.
    let uuid = export.split(':').nth(2).unwrap();
    let o = nbdinfo(&[
        "--size",
        &format!(
            "nbd+unix:///part:1:{uuid}:0:4096?socket={}",
            sock(&c.root, owner)
        ),
    ]);
    assert!(!o.status.success(), "the metadata region was exported");
    // Nor is a range of the data area that is no partition.
    let o = nbdinfo(&[
        "--size",
        &format!(
            "nbd+unix:///part:1:{uuid}:{}:4096?socket={}",
            start + 4096,
            sock(&c.root, owner)
        ),
    ]);
    assert!(
        !o.status.success(),
        "a range that is no partition was exported"
    );

    // The exposure map: sp2 is sent r10's tree over the control channel and
    // builds it (remote references to sp1's and sp3's partitions, local ones
    // to its own: only then does it get to exposing); here it cannot expose
    // it (no ublk), so nothing is recorded and sp2 keeps nothing.
    let e = c.sps[0].refused(&["vol", "expose", "r10", "--on", "sp2"]);
    assert!(e.contains("sp sp2") && e.contains("ublk"), "{e}");
    assert_eq!(
        c.sps[0].json(&["vol", "show", "r10"])["exposed_on"],
        serde_json::json!([])
    );
    assert_eq!(c.sps[1].json(&["vol", "list"]), serde_json::json!([]));
    let e = c.sps[0].refused(&["vol", "expose", "r10", "--on", "sp9"]);
    assert!(e.contains("not a configured peer"), "{e}");
    let e = c.sps[0].refused(&["vol", "expose", "r10", "--on", "sp1"]);
    assert!(e.contains("already exposed"), "{e}");
    let e = c.sps[0].refused(&["vol", "unexpose", "r10", "--on", "sp1"]);
    assert!(e.contains("only exposure"), "{e}");
    let e = c.sps[1].refused(&["vol", "expose", "r10", "--on", "sp2"]);
    assert!(e.contains("not the master"), "{e}");
    // A snapshot is kept by copy-on-write in the origin's tree on this SP:
    // writes through another SP would change its image.
    c.sps[0].ok(&["snap", "create", "r10", "s1", "--size", "8M"]);
    let e = c.sps[0].refused(&["vol", "expose", "r10", "--on", "sp2"]);
    assert!(e.contains("has snapshots (s1)"), "{e}");
    c.sps[0].ok(&["snap", "remove", "s1"]);

    // A session the master of generation 1 holds open on sp3's ALU (as the
    // metadata store keeps one), to see it cut once a newer master appears.
    let ring = tierblk_stack::uring::LocalRing::new(8).unwrap();
    let held = tierblk_stack::nbd::NbdDev::connect(
        &format!("unix:{}", sock(&c.root, "sp3")).parse().unwrap(),
        &format!("alu:1:{}", c.sps[2].alu(0)),
        ring.clone(),
    )
    .unwrap();
    let mut buf = tierblk_stack::AlignedBuf::new(4096);
    ring.block_on(held.read(0, &mut buf)).unwrap();

    // kill -9 the master: sp2 (rule: equal ALUs, lowest name) takes over with
    // a newer generation, and administration works there.
    c.sps[0].daemon.take().unwrap().kill().unwrap();
    c.wait_role(1, "master", 30);
    c.wait_sees(2, 1, "master", 10);
    assert_eq!(c.sp_list(1)[0]["generation"], 2);
    let l = c.sp_list(1);
    assert_eq!(
        l.iter().find(|s| s["name"] == "sp1").unwrap()["state"],
        "down"
    );
    let vols = c.sps[1].json(&["vol", "list"]);
    assert!(
        vols.as_array().unwrap().iter().any(|v| v["name"] == "r10"),
        "{vols}"
    );
    c.sps[1].ok(&["vol", "create", "after", "--size", "8M", "--alu", &paths[2]]);
    let e = c.sps[2].refused(&["vol", "remove", "after"]);
    assert!(e.contains("sp2"), "{e}");

    // Fencing: the old generation can no longer open an ALU anywhere.
    let stale = format!(
        "nbd+unix:///alu:1:{}?socket={}",
        c.sps[2].alu(0),
        sock(&c.root, "sp3")
    );
    let o = nbdinfo(&["--size", &stale]);
    assert!(!o.status.success(), "a stale master generation was served");
    let log = std::fs::read_to_string(c.sps[2].dir.join("tierblkd.log")).unwrap();
    assert!(log.contains("refusing a stale master"), "{log}");
    // The old master's open session is cut at its next request.
    let e = ring.block_on(held.read(0, &mut buf)).unwrap_err();
    assert_eq!(e.errno(), libc::ESHUTDOWN, "{e}");
    // So are its tier-1 partitions: generation 1's names are refused.
    let o = nbdinfo(&["--size", &uri]);
    assert!(
        !o.status.success(),
        "a deposed master's partition export was served"
    );
    // The current generation is served (the refusal above is the fence).
    let o = nbdinfo(&["--size", &stale.replace("alu:1:", "alu:2:")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The old master comes back and follows the new one, whose object
    // database takes its ALUs back (late disks, [0172]).
    let state_of = |c: &Cluster, path: &str| {
        c.sps[1]
            .json(&["alu", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["path"] == path)
            .map(|a| a["state"].as_str().unwrap().to_string())
    };
    let sp1_alu = format!("sp1:{}", c.sps[0].alu(0));
    assert_eq!(state_of(&c, &sp1_alu).as_deref(), Some("missing"));
    c.sps[0].start();
    c.wait_role(0, "peer", 20);
    assert_eq!(c.role_of(1), "master");
    let t = Instant::now();
    while state_of(&c, &sp1_alu).as_deref() != Some("owned") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{:?}",
            state_of(&c, &sp1_alu)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = c.sps[1].json(&["vol", "show", "r10"]);
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["health"] == "ok"),
        "{v}"
    );
    let e = c.sps[0].refused(&["vol", "create", "y", "--size", "8M"]);
    assert!(e.contains("sp2"), "{e}");
    // Metadata goes to the returned ALUs again.
    c.sps[1].ok(&["vol", "create", "y", "--size", "8M", "--alu", &sp1_alu]);

    // A peer dies while the master runs: its ALUs leave the object database
    // (commits do not wait on them, nothing is poisoned); it restarts and
    // they rejoin.
    let sp3_alu = format!("sp3:{}", c.sps[2].alu(1));
    c.sps[2].daemon.take().unwrap().kill().unwrap();
    c.wait_sees(1, 2, "unknown", 15);
    let t = Instant::now();
    while state_of(&c, &sp3_alu).as_deref() != Some("missing") {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{:?}",
            state_of(&c, &sp3_alu)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.sps[1].ok(&["vol", "create", "z", "--size", "8M", "--alu", &sp1_alu]);
    c.sps[2].start();
    let t = Instant::now();
    while state_of(&c, &sp3_alu).as_deref() != Some("owned") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{:?}",
            state_of(&c, &sp3_alu)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.sps[1].ok(&["vol", "create", "w", "--size", "8M", "--alu", &sp3_alu]);
    for env in &mut c.sps {
        env.stop();
    }
}

/// The kinds of the jobs queued for `volume`, in id order.
fn job_kinds(env: &Env, volume: &str) -> Vec<String> {
    env.json(&["job", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["volume"] == volume)
        .map(|j| j["kind"].as_str().unwrap().to_string())
        .collect()
}

/// After an unclean stop a mirror's write-intent bitmap is trusted only where
/// it was kept: a mirror with a leg on a peer's ALU runs without one (its
/// copies would live in the peer's metadata region), so after kill -9 of
/// the master it is resynced whole (a repairing scrub), never by a bitmap
/// that no write marked; so is a mirror on the new master's own ALUs after a
/// takeover (the old master ran it through remote references, without a
/// bitmap). A mirror on the master's own ALUs keeps its dirty-region resync
/// when the same master comes back.
#[test]
fn unclean_stop_resyncs_mirrors_that_ran_without_bitmaps_whole() {
    let mut c = Cluster::new("resync");
    for env in &mut c.sps {
        env.start();
    }
    c.wait_role(0, "master", 20);
    c.wait_role(1, "peer", 20);
    c.wait_role(2, "peer", 20);
    let sp1 = [c.sps[0].alu(0), c.sps[0].alu(1)];
    let sp2 = [
        format!("sp2:{}", c.sps[1].alu(0)),
        format!("sp2:{}", c.sps[1].alu(1)),
    ];
    for a in sp1.iter().chain(sp2.iter()) {
        c.sps[0].ok(&["alu", "claim", a]);
    }
    let mirror = |c: &Cluster, name: &str, a: &str, b: &str| {
        c.sps[0].ok(&[
            "vol", "create", name, "--size", "8M", "--layout", "mirror", "--alu", a, "--alu", b,
        ]);
    };
    mirror(&c, "local", &sp1[0], &sp1[1]);
    mirror(&c, "split", &sp1[0], &sp2[0]);
    mirror(&c, "theirs", &sp2[0], &sp2[1]);
    // Bringing them online (refused here: no ublk) marked the cluster in
    // use; kill -9 and start again at once, before the peers give sp1 up.
    let mut d = c.sps[0].daemon.take().unwrap();
    d.kill().unwrap();
    d.wait().unwrap();
    c.sps[0].start();
    c.wait_role(0, "master", 20);
    assert_eq!(c.sp_list(0)[0]["generation"], 2, "{:?}", c.sp_list(0));
    assert_eq!(job_kinds(&c.sps[0], "local"), ["resync"]);
    assert_eq!(job_kinds(&c.sps[0], "split"), ["scrub-repair"]);
    assert_eq!(job_kinds(&c.sps[0], "theirs"), ["scrub-repair"]);

    // A takeover: sp2 becomes master; its own ALUs' mirror ran without a
    // bitmap on sp1.
    mirror(&c, "later", &sp2[0], &sp2[1]);
    let mut d = c.sps[0].daemon.take().unwrap();
    d.kill().unwrap();
    d.wait().unwrap();
    c.wait_role(1, "master", 30);
    let t = Instant::now();
    while job_kinds(&c.sps[1], "later").is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "no resync queued");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(job_kinds(&c.sps[1], "later"), ["scrub-repair"]);
    for i in [1, 2] {
        c.sps[i].stop();
    }
}

/// etcd, started for a test on free ports, killed at the end.
struct EtcdServer {
    child: std::process::Child,
    url: String,
    _dir: std::path::PathBuf,
}

impl EtcdServer {
    fn start(dir: std::path::PathBuf) -> EtcdServer {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let purl = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &purl,
                "--initial-advertise-peer-urls",
                &purl,
            ])
            .args(["--initial-cluster", &format!("default={purl}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd (etcd-server) is installed by scripts/test");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        EtcdServer {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(env: &Env, sig: nix::sys::signal::Signal) {
    let pid = env.daemon.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

impl Cluster {
    /// The SPs (among `alive`) that say they are master, with their
    /// generations; waits until exactly one does and every other alive SP
    /// follows it.
    fn one_master(&self, alive: &[usize], secs: u64) -> (usize, u64) {
        let t = Instant::now();
        loop {
            let roles: Vec<(usize, String, u64)> = alive
                .iter()
                .map(|&i| {
                    let me = &self.sp_list(i)[0];
                    (
                        i,
                        me["role"].as_str().unwrap().to_string(),
                        me["generation"].as_u64().unwrap(),
                    )
                })
                .collect();
            let masters: Vec<&(usize, String, u64)> =
                roles.iter().filter(|r| r.1 == "master").collect();
            if masters.len() == 1 && roles.iter().all(|r| r.1 == "master" || r.1 == "peer") {
                return (masters[0].0, masters[0].2);
            }
            if t.elapsed() > Duration::from_secs(secs) {
                for &i in alive {
                    eprintln!(
                        "---- {} ----\n{}",
                        NAMES[i],
                        std::fs::read_to_string(self.sps[i].dir.join("tierblkd.log"))
                            .unwrap_or_default()
                    );
                }
                panic!("no single master: {roles:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Leadership from etcd (across machines the SPs' views may differ, so the
/// rule is not enough): one master is elected; a master frozen past its lease
/// is replaced by one with a newer generation, its open sessions are cut,
/// and when it thaws it steps down; kill -9 of the master hands over too.
#[test]
fn etcd_elects_one_master_and_fences_the_old_one() {
    let root = std::env::temp_dir().join(format!("tierblk-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let etcd = EtcdServer::start(root.clone());
    let mut c = Cluster::with("etcd", Some(&etcd.url));
    for env in &mut c.sps {
        env.start();
    }
    let (m1, g1) = c.one_master(&[0, 1, 2], 30);
    assert!(g1 > 0);
    let alus = c.sps[m1].json(&["alu", "list"]);
    assert_eq!(alus.as_array().unwrap().len(), 6, "{alus}");

    // A session of generation g1 on a peer's ALU, as the master holds one.
    let peer = (0..3).find(|&i| i != m1).unwrap();
    let ring = tierblk_stack::uring::LocalRing::new(8).unwrap();
    let held = tierblk_stack::nbd::NbdDev::connect(
        &format!("unix:{}", sock(&c.root, NAMES[peer]))
            .parse()
            .unwrap(),
        &format!("alu:{g1}:{}", c.sps[peer].alu(0)),
        ring.clone(),
    )
    .unwrap();
    let mut buf = tierblk_stack::AlignedBuf::new(4096);
    ring.block_on(held.read(0, &mut buf)).unwrap();

    // Freeze the master past its lease: another SP is elected, newer.
    signal(&c.sps[m1], nix::sys::signal::Signal::SIGSTOP);
    let others: Vec<usize> = (0..3).filter(|&i| i != m1).collect();
    let (m2, g2) = c.one_master(&others, 30);
    assert!(g2 > g1, "generation did not grow: {g1} -> {g2}");
    let e = ring.block_on(held.read(0, &mut buf)).unwrap_err();
    assert_eq!(e.errno(), libc::ESHUTDOWN, "{e}");

    // It thaws: its lease is gone, it steps down and follows.
    signal(&c.sps[m1], nix::sys::signal::Signal::SIGCONT);
    assert_eq!(c.one_master(&[0, 1, 2], 30), (m2, g2));
    let e = c.sps[m1].refused(&["vol", "create", "x", "--size", "8M"]);
    assert!(e.contains("not the master"), "{e}");

    // kill -9 the master: the last SP takes over, and administers.
    c.sps[m2].daemon.take().unwrap().kill().unwrap();
    let rest: Vec<usize> = (0..3).filter(|&i| i != m2).collect();
    let (m3, g3) = c.one_master(&rest, 30);
    assert!(g3 > g2);
    let own = c.sps[m3].alu(0);
    c.sps[m3].ok(&["alu", "claim", &own]);
    c.sps[m3].ok(&["vol", "create", "after", "--size", "8M", "--alu", &own]);
    for i in rest {
        c.sps[i].stop();
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&root);
}
