//! `tierblk meta history|dump|restore` end to end on the host, over image-file ALUs
//! (Env helper copied from tests/cli.rs).
//!
//! The host has no ublk driver, so volumes cannot go online here: these tests
//! prove the control path, the on-disk metadata and the refusals; the VM
//! scenarios in tests/vm prove the data path through /dev/ublkbN.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

struct Env {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    alus: Vec<PathBuf>,
    /// Extra tierblkd arguments.
    extra: Vec<String>,
}

impl Env {
    fn new(name: &str, disks: &[u64]) -> Env {
        let dir = std::env::temp_dir().join(format!("tierblk-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let alus = disks
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let p = dir.join(format!("alu{i}.img"));
                let f = std::fs::File::create(&p).unwrap();
                f.set_len(*size).unwrap();
                p
            })
            .collect();
        Env {
            socket: dir.join("control.sock"),
            dir,
            daemon: None,
            alus,
            extra: Vec::new(),
        }
    }

    fn alu(&self, i: usize) -> String {
        self.alus[i].display().to_string()
    }

    fn start(&mut self) -> String {
        let log = self.dir.join("tierblkd.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tierblkd"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--cluster")
            .arg("lab");
        cmd.arg("--config").arg(self.dir.join("none.toml"));
        std::fs::write(self.dir.join("none.toml"), "").unwrap();
        for a in &self.alus {
            cmd.arg("--alu").arg(a);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.cli(&["alu", "list"]).status.success() {
                return std::fs::read_to_string(&log).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon did not come up: {}",
            std::fs::read_to_string(&log).unwrap()
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let t = Instant::now();
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(st.success(), "daemon exited with {st}");
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "daemon ignored SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(!self.socket.exists(), "socket left behind");
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tierblk"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "tierblk {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// The command fails with exactly one line on stderr, which is returned.
    fn refused(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            !o.status.success(),
            "tierblk {args:?} unexpectedly succeeded"
        );
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
        err
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first 8 MiB of every ALU: the metadata regions (and no data).
fn metadata(env: &Env) -> Vec<Vec<u8>> {
    env.alus
        .iter()
        .map(|p| std::fs::read(p).unwrap()[..8 * MIB as usize].to_vec())
        .collect()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect()
}

fn extents(v: &Value) -> Vec<(String, u64, u64)> {
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["alu"].as_str().unwrap().to_string(),
                s["start"].as_u64().unwrap(),
                s["len"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn history_dump_and_restore_of_a_removed_volume() {
    let mut env = Env::new("restore", &[128 * MIB, 128 * MIB]);
    env.start();
    env.ok(&["alu", "claim", &env.alu(0)]);
    env.ok(&["alu", "claim", &env.alu(1)]);
    env.ok(&[
        "vol",
        "create",
        "keep",
        "--size",
        "10M",
        "--alu",
        &env.alu(1),
    ]);
    let v1 = env.json(&["vol", "create", "v1", "--size", "20M", "--alu", &env.alu(0)]);
    env.ok(&["vol", "remove", "v1"]);
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep"]);

    // History: newest first, the configuration before the removal lists v1.
    let h = env.json(&["meta", "history"]);
    let entries = h["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{h}");
    assert!(entries
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() > w[1]["seq"].as_u64()));
    let with_v1 = entries
        .iter()
        .find(|e| e["volumes"].as_array().unwrap().iter().any(|v| v == "v1"))
        .unwrap_or_else(|| panic!("no entry lists v1: {h}"));
    let seq = with_v1["seq"].as_u64().unwrap();
    assert!(seq < h["current"].as_u64().unwrap());
    assert_eq!(with_v1["copies"], 2, "{h}");
    assert!(h["problems"].as_array().unwrap().is_empty(), "{h}");
    let table = env.ok(&["meta", "history"]);
    assert!(
        table.starts_with("SEQ") && table.contains("TIME"),
        "{table}"
    );
    assert!(table.contains("keep,v1"), "{table}");

    // Dump: the archived configuration has v1's full definition.
    let s = seq.to_string();
    let d = env.json(&["meta", "dump", "--seq", &s]);
    assert_eq!(d["seq"], seq);
    assert!(d["archived"].is_u64(), "{d}");
    assert_eq!(d["alus"].as_array().unwrap().len(), 2);
    let dv1 = d["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .unwrap();
    assert_eq!(dv1["state"], "archived");
    assert_eq!(extents(dv1), extents(&v1));
    assert_eq!(dv1["members"][0]["health"], "ok");
    let live = env.json(&["meta", "dump"]);
    assert!(live["archived"].is_null());
    assert_eq!(names(&live["volumes"]), vec!["keep"]);
    // Without --json the dump is pretty JSON too.
    let pretty: Value = serde_json::from_str(&env.ok(&["meta", "dump"])).unwrap();
    assert_eq!(pretty, live);
    let e = env.refused(&["meta", "dump", "--seq", "99999"]);
    assert!(e.contains("not in the archive"), "{e}");

    // A volume created since would be dropped: refused, nothing changes.
    env.ok(&[
        "vol",
        "create",
        "later",
        "--size",
        "4M",
        "--alu",
        &env.alu(1),
    ]);
    let before = metadata(&env);
    let e = env.refused(&["meta", "restore", &s]);
    assert!(e.contains("would drop volume(s) later"), "{e}");
    assert!(metadata(&env) == before, "a refused restore wrote");
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep", "later"]);
    env.ok(&["vol", "remove", "later"]);

    // The restore brings v1 back with its extents.
    let out = env.ok(&["meta", "restore", &s]);
    assert!(out.contains("volumes back: v1"), "{out}");
    let list = env.json(&["vol", "list"]);
    assert_eq!(names(&list), vec!["keep", "v1"]);
    let back = env.json(&["vol", "show", "v1"]);
    assert_eq!(extents(&back), extents(&v1));
    assert_eq!(back["id"], v1["id"]);
    // ... and it survives a restart.
    env.stop();
    env.start();
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep", "v1"]);

    // Space handed to another volume since: refused, even with --force.
    env.ok(&["vol", "remove", "v1"]);
    env.ok(&[
        "vol",
        "create",
        "thief",
        "--size",
        "20M",
        "--alu",
        &env.alu(0),
    ]);
    let before = metadata(&env);
    let e = env.refused(&["meta", "restore", &s, "--force"]);
    assert!(e.contains("now allocated to volume thief"), "{e}");
    assert!(metadata(&env) == before, "a refused restore wrote");
    let e = env.refused(&["meta", "restore", "99999"]);
    assert!(e.contains("not older"), "{e}");
    assert_eq!(names(&env.json(&["vol", "list"])), vec!["keep", "thief"]);
    env.stop();
}
