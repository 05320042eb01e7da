//! The test environment shared by the host integration tests: image-file
//! ALUs in a temporary directory, a tierblkd on a private socket, and the
//! tierblk CLI against it.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;

/// A TCP port on 127.0.0.1 for a daemon to listen on, free when chosen.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), from
/// which `bind(127.0.0.1:0)` and every outgoing connection's source port
/// come: a port from there, released before the daemon binds it, can go to
/// another socket meanwhile (a cluster test's daemon failed so, "Address
/// already in use"). Tests of one process get different ports by a counter,
/// test processes by their process id.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&p| p > LOW + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral - LOW;
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + seed.wrapping_add(n.wrapping_mul(7_919)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 in {LOW}..{ephemeral}");
}

pub struct Env {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub daemon: Option<Child>,
    pub alus: Vec<PathBuf>,
    /// Extra tierblkd arguments.
    pub extra: Vec<String>,
}

impl Env {
    pub fn new(name: &str, disks: &[u64]) -> Env {
        let dir = std::env::temp_dir().join(format!("tierblk-test-{name}-{}", std::process::id()));
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

    pub fn alu(&self, i: usize) -> String {
        self.alus[i].display().to_string()
    }

    pub fn start(&mut self) -> String {
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

    pub fn stop(&mut self) {
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

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tierblk"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "tierblk {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// The command fails with exactly one line on stderr, which is returned.
    pub fn refused(&self, args: &[&str]) -> String {
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
