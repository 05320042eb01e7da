//! End-to-end tests of tierblkd and tierblk on the host, over image-file ALUs.
//!
//! The host has no ublk driver, so volumes cannot go online here: these tests
//! prove the control path, the on-disk metadata and the refusals; the VM
//! scenarios in tests/vm prove the data path through /dev/ublkbN.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A volume's `(member, ALU path)` pairs from `vol show --json`, sorted.
fn members_on(v: &Value) -> Vec<(u64, String)> {
    let mut m: Vec<(u64, String)> = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["member"].as_u64().unwrap(),
                s["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    m.sort();
    m.dedup();
    m
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn claim_create_restart_remove() {
    let mut env = Env::new("lifecycle", &[256 * MIB, 256 * MIB]);
    env.start();
    let alus = env.json(&["alu", "list"]);
    assert_eq!(alus.as_array().unwrap().len(), 2);
    assert!(alus
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["state"] == "not-owned"));

    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["alu", "claim", &env.alu(1)]);
    let v = env.json(&["vol", "create", "v1", "--size", "384M"]);
    assert_eq!(v["size"], 384 * MIB);
    let segs = v["segments"].as_array().unwrap();
    let paths: std::collections::BTreeSet<_> =
        segs.iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 2, "384M on two 256M ALUs must span both: {v}");
    // No ublk on the host: the volume is defined but offline, and says why.
    assert_eq!(v["state"], "offline");
    assert!(v["problem"].as_str().unwrap().contains("ublk"), "{v}");

    env.stop();
    env.start();
    let list = env.json(&["vol", "list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "v1");
    assert_eq!(list[0]["size"], 384 * MIB);
    assert!(list[0]["device"].is_null());
    let table = env.ok(&["vol", "list"]);
    assert!(table.starts_with("NAME") && table.contains("v1"), "{table}");

    env.ok(&["vol", "remove", "v1"]);
    assert_eq!(env.json(&["vol", "list"]).as_array().unwrap().len(), 0);
    env.stop();
    env.start();
    assert_eq!(env.json(&["vol", "list"]).as_array().unwrap().len(), 0);
    // The space came back: the same volume fits again.
    env.ok(&["vol", "create", "v1", "--size", "384M"]);
    env.stop();
}

#[test]
fn bad_input_is_refused_with_one_line() {
    let mut env = Env::new("bad", &[128 * MIB, 128 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["vol", "create", "v1", "--size", "10M"]);
    let e = env.refused(&["vol", "create", "v1", "--size", "10M"]);
    assert!(e.contains("already taken"), "{e}");
    let e = env.refused(&["vol", "create", "v2", "--size", "100T"]);
    assert!(e.contains("not enough free space"), "{e}");
    let e = env.refused(&["vol", "create", "bad/name", "--size", "10M"]);
    assert!(e.contains("bad/name"), "{e}");
    let e = env.refused(&["vol", "create", "v3", "--size", "ten"]);
    assert!(e.contains("size"), "{e}");
    let e = env.refused(&["vol", "create", "v3", "--size", "10M", "--alu", &env.alu(1)]);
    assert!(e.contains("not owned"), "{e}");
    let e = env.refused(&["alu", "claim", "/nonexistent/disk"]);
    assert!(e.contains("/nonexistent/disk"), "{e}");
    let e = env.refused(&["vol", "show", "nosuch"]);
    assert!(e.contains("not found"), "{e}");
    let e = env.refused(&["alu", "claim", &env.alu(0)]);
    assert!(e.contains("already"), "{e}");
    let e = env.refused(&["alu", "release", &env.alu(0)]);
    assert!(e.contains("v1"), "{e}");
    // A refused request wrote nothing: the unowned ALU is still all zeroes.
    assert!(sha(&env.alus[1]).iter().all(|&b| b == 0));
    env.stop();
    let e = env.refused(&["vol", "list"]);
    assert!(e.contains("daemon not running"), "{e}");
}

#[test]
fn claim_refuses_a_disk_holding_a_filesystem() {
    let mut env = Env::new("foreign", &[64 * MIB]);
    // An ext4 superblock magic at byte 1080.
    let mut img = vec![0u8; 64 * MIB as usize];
    img[1080] = 0x53;
    img[1081] = 0xEF;
    std::fs::write(&env.alus[0], &img).unwrap();
    env.start();
    let a = env.json(&["alu", "show", &env.alu(0)]);
    assert_eq!(a["state"], "not-owned");
    let e = env.refused(&["alu", "claim", &env.alu(0)]);
    assert!(e.contains("--force"), "{e}");
    assert_eq!(sha(&env.alus[0]), img, "refused claim modified the disk");
    env.ok(&["alu", "claim", "--force", &env.alu(0)]);
    assert_eq!(env.json(&["alu", "show", &env.alu(0)])["state"], "owned");
    env.stop();
}

#[test]
fn control_socket_is_root_only() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to drop to another uid");
        return;
    }
    let mut env = Env::new("peercred", &[64 * MIB]);
    env.start();
    use std::os::unix::fs::PermissionsExt;
    let socket = env.socket.clone();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let as_nobody = || {
        Command::new(env!("CARGO_BIN_EXE_tierblk"))
            .arg("--socket")
            .arg(&socket)
            .args(["alu", "list"])
            .uid(65534)
            .output()
            .unwrap()
    };
    // The file mode keeps other users out...
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    // ...and if the mode is loosened, SO_PEERCRED still refuses them.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("root-only") && !err.contains("socket"),
        "{err}"
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.stop();
}

use std::os::unix::process::CommandExt;

#[test]
fn layouts_are_planned_on_distinct_alus_and_failures_persist() {
    let mut env = Env::new("layouts", &[128 * MIB, 128 * MIB, 128 * MIB, 128 * MIB]);
    env.start();
    for i in 0..4 {
        env.ok(&["alu", "claim", &env.alu(i)]);
    }
    let r = env.json(&[
        "vol",
        "create",
        "r1",
        "--size",
        "100M",
        "--layout",
        "raid10",
        "--stripes",
        "2",
        "--copies",
        "2",
        "--chunk",
        "128K",
    ]);
    assert_eq!(
        (
            r["layout"].as_str(),
            r["stripes"].as_u64(),
            r["copies"].as_u64()
        ),
        (Some("raid10"), Some(2), Some(2))
    );
    assert_eq!(r["chunk"], 128 << 10);
    let m = members_on(&r);
    assert_eq!(m.len(), 4, "{r}");
    let alus: std::collections::BTreeSet<_> = m.iter().map(|x| x.1.clone()).collect();
    assert_eq!(alus.len(), 4, "raid10 members share an ALU: {r}");
    let mirror = env.json(&["vol", "create", "m1", "--size", "20M", "--layout", "mirror"]);
    let m = members_on(&mirror);
    assert_eq!(m.len(), 2);
    assert_ne!(m[0].1, m[1].1, "mirror legs on one ALU: {mirror}");
    // A 3-way mirror of 100M does not fit: every ALU has < 100M left after r1.
    let e = env.refused(&[
        "vol", "create", "m3", "--size", "100M", "--layout", "mirror", "--copies", "3",
    ]);
    assert!(e.contains("needs 3 ALUs"), "{e}");
    let e = env.refused(&[
        "vol", "create", "s9", "--size", "10M", "--layout", "stripe", "--chunk", "3K",
    ]);
    assert!(e.contains("chunk"), "{e}");

    // Fail the ALU under one raid10 leg: persisted, reported, survives a restart.
    let victim = members_on(&r)[1].1.clone();
    let out = env.ok(&["alu", "fail", &victim]);
    assert!(out.contains("r1 member 1"), "{out}");
    let check = |env: &Env| {
        let r = env.json(&["vol", "show", "r1"]);
        let members = r["members"].as_array().unwrap();
        assert_eq!(members[1]["health"], "failed", "{r}");
        assert!(members[1]["fail_seq"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(members[0]["health"], "ok", "{r}");
        // Degraded, not a problem: the mirror still has a leg.
        assert!(
            r["problem"]
                .as_str()
                .is_none_or(|p| !p.contains("held offline")),
            "{r}"
        );
        let a = env.json(&["alu", "show", &victim]);
        assert_eq!(a["state"], "damaged", "{a}");
    };
    check(&env);
    env.stop();
    env.start();
    check(&env);
    env.stop();
}

#[test]
fn replace_and_scrub_refuse_what_cannot_work() {
    let mut env = Env::new("jobs", &[96 * MIB, 96 * MIB, 96 * MIB]);
    env.start();
    for i in 0..3 {
        env.ok(&["alu", "claim", &env.alu(i)]);
    }
    env.ok(&["vol", "create", "l1", "--size", "10M", "--alu", &env.alu(0)]);
    env.ok(&[
        "vol",
        "create",
        "m1",
        "--size",
        "10M",
        "--layout",
        "mirror",
        "--alu",
        &env.alu(0),
        "--alu",
        &env.alu(1),
    ]);
    let e = env.refused(&["vol", "scrub", "l1"]);
    assert!(e.contains("no copies"), "{e}");
    // No ublk on the host: the mirror is offline, and a scrub needs it online.
    let e = env.refused(&["vol", "scrub", "m1"]);
    assert!(e.contains("offline"), "{e}");
    let e = env.refused(&["alu", "replace", &env.alu(0), &env.alu(2)]);
    assert!(e.contains("l1") && e.contains("no redundancy"), "{e}");
    // Nothing was failed by the refused replace.
    assert_eq!(env.json(&["alu", "show", &env.alu(0)])["state"], "owned");
    let e = env.refused(&["alu", "replace", &env.alu(2), &env.alu(1)]);
    assert!(e.contains("nothing to replace"), "{e}");
    let e = env.refused(&["job", "show", "999"]);
    assert!(e.contains("not found"), "{e}");
    let e = env.refused(&["vol", "scrub", "m1", "--rate", "fast"]);
    assert!(e.contains("--rate"), "{e}");
    assert_eq!(env.json(&["job", "list"]).as_array().unwrap().len(), 0);
    env.stop();
}

/// Snapshots on the host (spec VIII): create, list, refusals, rollback as a
/// job, persistence, an unreachable store holding its origin offline, and a
/// lost store (as after a crash between the commit and the store's format)
/// that only invalidates the snapshot.
#[test]
fn snapshots_persist_refuse_and_hold_their_origin() {
    let mut env = Env::new("snap", &[256 * MIB, 256 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["alu", "claim", &env.alu(1)]);
    env.ok(&[
        "vol",
        "create",
        "v1",
        "--size",
        "200M",
        "--alu",
        &env.alu(0),
    ]);

    let s = env.json(&["snap", "create", "v1", "s1"]);
    assert_eq!(s["origin"], "v1");
    assert_eq!(s["size"], 200 * MIB);
    assert_eq!(s["chunk"], 65536);
    assert_eq!(s["state"], "valid");
    assert_eq!(s["used"], 0);
    // The default store holds a copy of every chunk of the origin.
    assert!(s["capacity"].as_u64().unwrap() >= 200 * MIB, "{s}");
    // It does not fit next to v1 on alu0: it spans both ALUs.
    let sv = env.json(&["vol", "show", "s1"]);
    assert_eq!(sv["layout"], "snapshot");
    assert_eq!(sv["origin"], "v1");
    let paths: std::collections::BTreeSet<_> = sv["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.len(), 2, "{sv}");

    let e = env.refused(&["snap", "create", "v1", "s1"]);
    assert!(e.contains("s1: name already taken"), "{e}");
    let e = env.refused(&["snap", "create", "s1", "s2"]);
    assert!(e.contains("itself a snapshot"), "{e}");
    let e = env.refused(&["snap", "create", "v1", "s2", "--chunk", "3000"]);
    assert!(e.contains("chunk"), "{e}");
    let e = env.refused(&["snap", "create", "v1", "s2", "--size", "100G"]);
    assert!(e.contains("s2"), "{e}");
    let e = env.refused(&["snap", "create", "nope", "s2"]);
    assert!(e.contains("volume nope: not found"), "{e}");
    let e = env.refused(&["vol", "remove", "v1"]);
    assert!(e.contains("has snapshots (s1)"), "{e}");
    let e = env.refused(&["snap", "remove", "v1"]);
    assert!(e.contains("v1: not a snapshot"), "{e}");
    assert_eq!(
        env.json(&["alu", "list"]).as_array().unwrap().len(),
        2,
        "refusals wrote nothing"
    );
    assert_eq!(env.json(&["snap", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(
        env.json(&["snap", "list", "v1"]).as_array().unwrap().len(),
        1
    );
    let table = env.ok(&["snap", "list"]);
    assert!(table.starts_with("NAME") && table.contains("s1"), "{table}");

    // Rollback is a job on the offline origin (nothing changed: 0 bytes).
    let j = env.json(&["snap", "rollback", "s1", "--wait"]);
    assert_eq!(j["kind"], "rollback");
    assert_eq!(j["state"], "done");
    assert_eq!(j["volume"], "s1");

    // Persisted across a restart.
    env.stop();
    env.start();
    let l = env.json(&["snap", "list"]);
    assert_eq!(l[0]["name"], "s1");
    assert_eq!(l[0]["state"], "valid");

    // Its store unreachable (an ALU gone): the snapshot may be valid, so the
    // origin must not be written: it is held offline and says why.
    env.stop();
    let moved = env.dir.join("alu1.away");
    std::fs::rename(&env.alus[1], &moved).unwrap();
    env.start();
    let l = env.json(&["snap", "list"]);
    assert_eq!(l[0]["state"], "unavailable", "{l}");
    let v = env.json(&["vol", "show", "v1"]);
    let p = v["problem"].as_str().unwrap();
    assert!(
        p.contains("held offline") && p.contains("snapshot s1"),
        "{v}"
    );
    env.stop();
    std::fs::rename(&moved, &env.alus[1]).unwrap();

    // The store's header lost: the snapshot is invalid and only removable;
    // its origin is free again.
    let seg = &sv["segments"][0];
    let path = seg["path"].as_str().unwrap();
    let start = seg["start"].as_u64().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&[0u8; 4096], start).unwrap();
    }
    env.start();
    let l = env.json(&["snap", "list"]);
    assert_eq!(l[0]["state"], "invalid", "{l}");
    assert!(
        l[0]["problem"].as_str().unwrap().contains("remove it"),
        "{l}"
    );
    let v = env.json(&["vol", "show", "v1"]);
    assert!(
        !v["problem"].as_str().unwrap_or("").contains("snapshot"),
        "{v}"
    );
    let e = env.refused(&["snap", "rollback", "s1"]);
    assert!(e.contains("s1"), "{e}");
    env.ok(&["snap", "remove", "s1"]);
    assert_eq!(env.json(&["snap", "list"]).as_array().unwrap().len(), 0);
    env.ok(&["vol", "remove", "v1"]);
    env.stop();
}

/// `tierblk status` through the daemon: the overall state and the advice
/// follow what happens to ALUs and volumes.
#[test]
fn status_assesses_and_advises() {
    let mut env = Env::new("status", &[256 * MIB, 256 * MIB]);
    env.start();
    let s = env.json(&["status"]);
    assert_eq!(s["state"], "online", "{s}");
    assert!(env
        .ok(&["status"])
        .contains("cluster: (none: claim an ALU)"));
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["alu", "claim", &env.alu(1)]);
    env.ok(&["vol", "create", "m1", "--size", "64M", "--layout", "mirror"]);
    // No ublk on the host: the volume is offline with a problem.
    let s = env.json(&["status"]);
    assert_eq!(s["state"], "faulted", "{s}");
    assert_eq!(s["cluster"], "lab");
    assert!(
        s["actions"][0]
            .as_str()
            .unwrap()
            .contains("volume m1 is offline"),
        "{s}"
    );
    env.ok(&["alu", "fail", &env.alu(1)]);
    let s = env.json(&["status"]);
    let actions = s["actions"].to_string();
    assert!(
        actions.contains(&format!("tierblk alu readd {}", env.alu(1))),
        "{actions}"
    );
    let t = env.ok(&["status"]);
    assert!(
        t.contains("state: FAULTED") && t.contains("VOLUME") && t.contains("ALU"),
        "{t}"
    );
    env.stop();
}

/// Snapshot schedules (spec [0167]): the daemon takes the snapshots, keeps
/// the newest `keep`, and the schedule survives a restart.
#[test]
fn snapshot_schedules_take_expire_and_persist() {
    let mut env = Env::new("sched", &[256 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["vol", "create", "v1", "--size", "16M"]);
    let e = env.refused(&["snap", "schedule", "v1", "--every", "1y", "--keep", "2"]);
    assert!(e.contains("--every"), "{e}");
    let e = env.refused(&["snap", "schedule", "v1", "--every", "1s", "--keep", "0"]);
    assert!(e.contains("keep"), "{e}");
    let e = env.refused(&["snap", "unschedule", "v1"]);
    assert!(e.contains("no snapshot schedule"), "{e}");
    let s = env.json(&[
        "snap", "schedule", "v1", "--every", "1s", "--keep", "2", "--size", "8M",
    ]);
    assert_eq!(s[0]["every"], 1);
    assert_eq!(s[0]["keep"], 2);
    assert_eq!(s[0]["size"], 8 * MIB);
    // Within a few seconds: more than two taken, only the newest two kept.
    let t = Instant::now();
    let mut names: Vec<String>;
    loop {
        let snaps = env.json(&["snap", "list", "v1"]);
        names = snaps
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        let log = std::fs::read_to_string(env.dir.join("tierblkd.log")).unwrap();
        if log.matches("expired by the schedule").count() >= 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "schedule did not run: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(names.len() <= 2, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("v1.auto-")), "{names:?}");
    let sv = env.json(&["vol", "show", &names[0]]);
    assert_eq!(sv["size"], 8 * MIB, "the schedule's --size: {sv}");
    // A manual snapshot is not the schedule's to expire.
    env.ok(&["snap", "create", "v1", "keepme", "--size", "8M"]);
    env.stop();
    env.start();
    let s = env.json(&["snap", "schedules"]);
    assert_eq!(s[0]["volume"], "v1", "{s}");
    assert!(s[0]["last"].as_u64().unwrap() > 0);
    std::thread::sleep(Duration::from_millis(2500));
    let snaps = env.json(&["snap", "list", "v1"]);
    let names: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"keepme"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.starts_with("v1.auto-")).count(),
        2,
        "{names:?}"
    );
    env.ok(&["snap", "unschedule", "v1"]);
    assert_eq!(
        env.json(&["snap", "schedules"]).as_array().unwrap().len(),
        0
    );
    env.stop();
}

/// `tierblk stats` and the opt-in Prometheus endpoint (the counters
/// themselves move only with I/O: tests/vm/fio-verify.sh checks them).
#[test]
fn stats_and_metrics_endpoint() {
    use std::io::{Read, Write};
    let port = free_port();
    let mut env = Env::new("stats", &[256 * MIB]);
    env.extra = vec!["--metrics".into(), format!("127.0.0.1:{port}")];
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["vol", "create", "v1", "--size", "16M"]);
    assert_eq!(env.json(&["stats"]), serde_json::json!([]));
    let e = env.refused(&["stats", "v1"]);
    assert!(e.contains("v1: offline"), "{e}");
    let e = env.refused(&["stats", "nope"]);
    assert!(e.contains("nope: not found"), "{e}");
    let get = |path: &str| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    };
    let r = get("/metrics");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(
        r.contains("# TYPE tierblk_io_requests_total counter"),
        "{r}"
    );
    assert!(
        r.contains("# TYPE tierblk_io_latency_seconds histogram"),
        "{r}"
    );
    assert!(get("/").starts_with("HTTP/1.1 404"));
    // A client that sends garbage or nothing does not stop the endpoint.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(&[0xff; 100]).unwrap();
    }
    assert!(get("/metrics").starts_with("HTTP/1.1 200 OK"));
    env.stop();
    // A bad address is one clear line at start-up.
    let o = Command::new(env!("CARGO_BIN_EXE_tierblkd"))
        .args(["--metrics", "nonsense", "--socket"])
        .arg(env.dir.join("x.sock"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--metrics"));
}

/// Legacy disks ([058], [060]): adopting a disk that holds data writes
/// nothing to it; the volume is found again by identity after a restart, even
/// at another path; a copy at the same path is not taken for it; forgetting it
/// leaves every byte.
#[test]
fn legacy_disks_are_adopted_without_a_write() {
    let mut env = Env::new("legacy", &[256 * MIB, 64 * MIB]);
    let data: Vec<u8> = (0..64 * MIB as usize)
        .map(|i| (i * 31 + i / 4096) as u8)
        .collect();
    std::fs::write(&env.alus[1], &data).unwrap();
    env.start();
    let e = env.refused(&["alu", "adopt", &env.alu(1), "old1"]);
    assert!(e.contains("claim an ALU first"), "{e}");
    env.ok(&["alu", "claim", &env.alu(0)]);
    let v = env.json(&["alu", "adopt", &env.alu(1), "old1"]);
    assert_eq!(v["layout"], "legacy", "{v}");
    assert_eq!(v["size"], 64 * MIB);
    assert_eq!(v["segments"][0]["path"], env.alu(1));
    let a = env.json(&["alu", "show", &env.alu(1)]);
    assert_eq!(a["detail"], "adopted as legacy volume old1", "{a}");
    let e = env.refused(&["alu", "claim", "--force", &env.alu(1)]);
    assert!(e.contains("adopted as legacy volume old1"), "{e}");
    let e = env.refused(&["alu", "adopt", &env.alu(1), "again"]);
    assert!(e.contains("already adopted"), "{e}");
    let e = env.refused(&["vol", "create", "old1", "--size", "8M"]);
    assert!(e.contains("name already"), "{e}");

    // A copy at its path (same bytes, another inode) is not it.
    env.stop();
    let orig = env.dir.join("orig.img");
    std::fs::rename(&env.alus[1], &orig).unwrap();
    std::fs::copy(&orig, &env.alus[1]).unwrap();
    env.start();
    let v = env.json(&["vol", "show", "old1"]);
    assert!(
        v["problem"]
            .as_str()
            .unwrap()
            .contains("not the one adopted"),
        "{v}"
    );
    // The disk itself, at another path, is found by its identity.
    env.stop();
    std::fs::remove_file(&env.alus[1]).unwrap();
    env.alus[1] = orig;
    env.start();
    let v = env.json(&["vol", "show", "old1"]);
    assert_eq!(v["segments"][0]["path"], env.alu(1), "{v}");
    env.ok(&["vol", "remove", "old1"]);
    assert_eq!(env.json(&["vol", "list"]), serde_json::json!([]));
    env.stop();
    assert!(
        std::fs::read(&env.alus[1]).unwrap() == data,
        "the legacy disk changed"
    );
}

/// `vol quiesce|resume` refusals on the host (volumes cannot be online
/// here; tests/vm/quiesce.sh proves the hold under load).
#[test]
fn quiesce_refuses_what_it_cannot_hold() {
    let mut env = Env::new("quiesce", &[128 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["vol", "create", "v1", "--size", "16M"]);
    let e = env.refused(&["vol", "quiesce", "v1"]);
    assert!(e.contains("v1: offline: nothing to quiesce"), "{e}");
    let e = env.refused(&["vol", "resume", "v1"]);
    assert!(e.contains("v1: not quiesced"), "{e}");
    let e = env.refused(&["vol", "quiesce", "nope"]);
    assert!(e.contains("nope: not found"), "{e}");
    env.stop();
}

/// `tierblk events [--follow]`: what happens is kept and streamed as JSON
/// lines, in order.
#[test]
fn events_are_kept_and_followed() {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;
    let mut env = Env::new("events", &[128 * MIB, 128 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    let mut follower = Command::new(env!("CARGO_BIN_EXE_tierblk"))
        .arg("--socket")
        .arg(&env.socket)
        .args(["--json", "events", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            if tx.send(l.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no event within 20 s");
        serde_json::from_str(&l).unwrap()
    };
    let first = next();
    assert_eq!(first["kind"], "alu-claimed", "the kept events come first");
    env.ok(&["alu", "claim", &env.alu(1)]);
    env.ok(&["vol", "create", "m1", "--size", "16M", "--layout", "mirror"]);
    env.ok(&["snap", "create", "m1", "s1", "--size", "8M"]);
    env.ok(&["alu", "fail", &env.alu(1)]);
    let mut kinds = Vec::new();
    while !kinds
        .iter()
        .any(|k: &String| k.starts_with("member-failed"))
    {
        let e = next();
        kinds.push(format!(
            "{} {}",
            e["kind"].as_str().unwrap(),
            e["volume"].as_str().unwrap_or("-")
        ));
    }
    // In order; no ublk on the host, so the volume goes offline with why.
    assert_eq!(
        kinds,
        [
            "alu-claimed -",
            "volume-offline m1",
            "snapshot-created m1",
            "member-failed m1"
        ],
        "{kinds:?}"
    );
    follower.kill().unwrap();
    let _ = follower.wait();
    let kept = env.json(&["events"]);
    let all: Vec<&str> = kept
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "alu-claimed",
        "volume-offline",
        "snapshot-created",
        "member-failed",
    ] {
        assert!(all.contains(&k), "{k} not kept: {all:?}");
    }
    assert!(env.ok(&["events"]).contains("snapshot-created"));
    env.stop();
}

/// Two unclean stops in a row while a mirror cannot come online queue one
/// resync, not two: the first one has not run yet and covers the second.
#[test]
fn repeated_unclean_stops_queue_one_resync() {
    let mut env = Env::new("resync-once", &[128 * MIB, 128 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["alu", "claim", &env.alu(1)]);
    env.ok(&["vol", "create", "m1", "--size", "32M", "--layout", "mirror"]);
    let resyncs = |env: &Env| {
        env.json(&["job", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "resync" && j["state"] == "running")
            .count()
    };
    for round in 0..2 {
        let mut d = env.daemon.take().unwrap();
        d.kill().unwrap();
        d.wait().unwrap();
        env.start();
        assert_eq!(
            resyncs(&env),
            1,
            "after unclean stop {}: {}",
            round + 1,
            env.json(&["job", "list"])
        );
    }
    env.stop();
}

/// Changing a volume's shape (spec VI, [0109]–[0115]) on the host, where
/// volumes stay offline: each command commits the new definition (checked
/// after a restart), refuses what cannot work with one line, and the moves
/// free the ALU they leave. The data path under load is tests/vm/reshape.sh.
#[test]
fn reshape_commands_change_the_definition_and_refuse_what_cannot_work() {
    let mut env = Env::new("reshape", &[96 * MIB, 96 * MIB, 96 * MIB, 96 * MIB]);
    env.start();
    for i in 0..4 {
        env.ok(&["alu", "claim", &env.alu(i)]);
    }
    let (a0, a1, a2, a3) = (env.alu(0), env.alu(1), env.alu(2), env.alu(3));
    env.ok(&["vol", "create", "l1", "--size", "16M", "--alu", &a0]);

    // add-leg: linear -> mirror; the new leg is rebuilt by a job.
    let j = env.json(&["vol", "add-leg", "l1", &a1]);
    assert_eq!(j["kind"], "rebuild");
    assert_eq!(j["member"], 1);
    let v = env.json(&["vol", "show", "l1"]);
    assert_eq!(v["layout"], "mirror", "{v}");
    assert_eq!(members_on(&v), vec![(0, a0.clone()), (1, a1.clone())]);
    let e = env.refused(&["vol", "add-leg", "l1", &a0]);
    assert!(e.contains("l1") && e.contains("leg"), "{e}");
    let e = env.refused(&["vol", "add-leg", "l1", "/nonexistent"]);
    assert!(e.contains("/nonexistent"), "{e}");

    // remove-leg: the rebuilding leg goes; never the last in-sync one.
    let e = env.refused(&["vol", "remove-leg", "l1", "--member", "0"]);
    assert!(e.contains("in sync") || e.contains("in-sync"), "{e}");
    let e = env.refused(&["vol", "remove-leg", "l1"]);
    assert!(e.contains("--member"), "{e}");
    env.ok(&["vol", "remove-leg", "l1", "--alu", &a1]);
    let v = env.json(&["vol", "show", "l1"]);
    assert_eq!(v["layout"], "linear", "{v}");
    assert_eq!(members_on(&v), vec![(0, a0.clone())]);
    let jobs = env.json(&["job", "list"]);
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] != "running"),
        "the removed leg's rebuild still runs: {jobs}"
    );

    // move: a temporary leg on the target and a move job (it runs when the
    // volume is online; here it stays queued and persists).
    let j = env.json(&["vol", "move", "l1", "--to", &a2, "--rate", "10M"]);
    assert_eq!(j["kind"], "move");
    assert_eq!(j["state"], "running");
    let id = j["id"].as_u64().unwrap();
    let e = env.refused(&["vol", "move", "l1", "--to", &a3]);
    assert!(e.contains("--member"), "{e}");
    let e = env.refused(&["vol", "move", "l1", "--to", &a3, "--member", "0"]);
    assert!(e.contains("move"), "{e}");
    env.stop();
    env.start();
    let v = env.json(&["vol", "show", "l1"]);
    assert_eq!(v["layout"], "mirror", "{v}");
    assert_eq!(members_on(&v), vec![(0, a0.clone()), (1, a2.clone())]);
    let j = env.json(&["job", "show", &id.to_string()]);
    assert_eq!(j["kind"], "move");
    assert_eq!(j["state"], "running");

    // extend: one --alu per member; a mirror waits for its copy jobs.
    let e = env.refused(&["vol", "extend", "l1", "--by", "8M", "--alu", &a3]);
    assert!(e.contains("--alu per member"), "{e}");
    let e = env.refused(&[
        "vol", "extend", "l1", "--by", "8M", "--alu", &a3, "--alu", &a1,
    ]);
    assert!(e.contains(&format!("move job {id} is unfinished")), "{e}");
    env.ok(&["vol", "create", "l2", "--size", "8M", "--alu", &a3]);
    let out = env.ok(&["vol", "extend", "l2", "--by", "8M", "--alu", &a1]);
    assert!(out.contains("16"), "{out}");
    let v = env.json(&["vol", "show", "l2"]);
    assert_eq!(v["size"], 16 * MIB);
    assert_eq!(members_on(&v), vec![(0, a1.clone()), (0, a3.clone())]);
    let e = env.refused(&["vol", "extend", "l2", "--by", "1G", "--alu", &a1]);
    assert!(e.contains("space") || e.contains("short"), "{e}");
    assert_eq!(env.json(&["vol", "show", "l2"])["size"], 16 * MIB);

    // A mirror grows every leg; the second copies its new part from the
    // first, from the old member size on (a rebuild job, queued here).
    env.ok(&[
        "vol", "create", "m1", "--size", "8M", "--layout", "mirror", "--alu", &a1, "--alu", &a3,
    ]);
    let e = env.refused(&[
        "vol", "extend", "m1", "--by", "8M", "--alu", &a1, "--alu", &a1,
    ]);
    assert!(e.contains("another leg of mirror 0"), "{e}");
    assert!(
        e.contains(&format!("({a1})")),
        "the ALU is named by its path: {e}"
    );
    let out = env.ok(&[
        "vol", "extend", "m1", "--by", "8M", "--alu", &a1, "--alu", &a3,
    ]);
    assert!(out.contains("copies the new part"), "{out}");
    env.stop();
    env.start();
    let v = env.json(&["vol", "show", "m1"]);
    assert_eq!(v["size"], 16 * MIB, "{v}");
    let copy: Vec<_> = env
        .json(&["job", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["volume"] == "m1")
        .cloned()
        .collect();
    assert_eq!(copy.len(), 1, "{copy:?}");
    assert_eq!(copy[0]["kind"], "rebuild");
    assert_eq!(copy[0]["member"], 1);
    assert_eq!(copy[0]["state"], "running");
    assert_eq!(copy[0]["done"], 8 * MIB, "{copy:?}");
    assert_eq!(copy[0]["total"], 16 * MIB, "{copy:?}");
    env.stop();
}
