//! The administrator's side on the host: `tierblk udev-name` (what the udev
//! rules import), tierblkd's systemd readiness notification, the generated
//! man pages and completions, and scripts/install's tree. The udev rules
//! themselves run against a real /dev/ublkbN in tests/vm/udev.sh.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TIERBLK: &str = env!("CARGO_BIN_EXE_tierblk");
const TIERBLKD: &str = env!("CARGO_BIN_EXE_tierblkd");

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tierblk-admin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tierblk(args: &[&str]) -> Output {
    Command::new(TIERBLK).args(args).output().unwrap()
}

// --- udev-name -------------------------------------------------------------

/// libublk's export for device ID, its one queue served by thread TID.
fn export_json(dir: &Path, id: u32, tid: u32, target: serde_json::Value) {
    let j = serde_json::json!({
        "dev_info": { "dev_id": id, "ublksrv_pid": -1, "nr_hw_queues": 1 },
        "target": { "tgt_type": "none" },
        "target_data": target,
        "queues": { "0": { "qid": 0, "tid": tid, "affinity": [0] } },
    });
    std::fs::write(dir.join(format!("{id:04}.json")), j.to_string()).unwrap();
}

fn udev_name(run_dir: &Path, dev: &str) -> Output {
    tierblk(&["udev-name", "--run-dir", run_dir.to_str().unwrap(), dev])
}

#[test]
fn udev_name_prints_import_lines_for_ours_only() {
    let dir = tmpdir("udev");
    let me = std::process::id();
    // Device 7: ours, served by a live thread (this test's main thread).
    export_json(
        &dir,
        7,
        me,
        serde_json::json!({ "tierblk": { "volume": "db-1.x_y", "wwn": "60A0B1C2D3E4F5061728394A5B6C7D8E" } }),
    );
    // Device 8: another ublk server's device.
    export_json(&dir, 8, me, serde_json::json!({ "null": { "size": 1 } }));
    // Device 9: left by a tierblkd that died (no such thread).
    export_json(
        &dir,
        9,
        0x3fff_fff0,
        serde_json::json!({ "tierblk": { "volume": "old", "wwn": "ab" } }),
    );
    // Device 10: its file claims to be device 11.
    export_json(
        &dir,
        10,
        me,
        serde_json::json!({ "tierblk": { "volume": "x", "wwn": "ab" } }),
    );
    std::fs::rename(dir.join("0010.json"), dir.join("0011.json")).unwrap();
    export_json(
        &dir,
        10,
        me,
        serde_json::json!({ "tierblk": { "volume": "y", "wwn": "ab" } }),
    );
    std::fs::rename(dir.join("0010.json"), dir.join("0012.json")).unwrap();

    let kernel = Path::new("/dev/ublk-control").exists();
    for dev in ["ublkb7", "/dev/ublkb7"] {
        let o = udev_name(&dir, dev);
        if kernel {
            // The kernel has no device 7 served by us: not trusted.
            assert!(!o.status.success());
            continue;
        }
        assert!(
            o.status.success(),
            "{dev}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            "TIERBLK_VOLUME=db-1.x_y\nTIERBLK_WWN=60a0b1c2d3e4f5061728394a5b6c7d8e\n"
        );
        assert!(o.stderr.is_empty());
    }
    // Not ours: exit 1, nothing on stdout or stderr (udev logs stderr).
    for dev in [
        "ublkb8", "ublkb9", "ublkb11", "ublkb12", "ublkb99", "ublkb7p1", "sda", "ublkc7",
    ] {
        let o = udev_name(&dir, dev);
        assert_eq!(o.status.code(), Some(1), "{dev}");
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{dev}: {o:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udev_rules_use_the_subcommand() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../udev/60-tierblk.rules"
    ))
    .unwrap();
    assert!(rules.contains(r#"IMPORT{program}="/usr/local/sbin/tierblk udev-name %k""#));
    assert!(rules.contains(r#"SYMLINK+="tierblk/$env{TIERBLK_VOLUME}""#));
    assert!(rules.contains(r#"SYMLINK+="disk/by-id/tierblk-$env{TIERBLK_WWN}""#));
    // Every GOTO has its LABEL.
    for line in rules.lines().filter(|l| l.contains("GOTO=")) {
        let label = line.split("GOTO=\"").nth(1).unwrap().split('"').next();
        assert!(rules.contains(&format!("LABEL=\"{}\"", label.unwrap())));
    }
}

// --- systemd notification ----------------------------------------------------

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, notify: &str, socket: &Path) -> Daemon {
        let alu = dir.join("alu0.img");
        std::fs::File::create(&alu)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        std::fs::write(dir.join("none.toml"), "").unwrap();
        let log = dir.join("tierblkd.log");
        let child = Command::new(TIERBLKD)
            .arg("--socket")
            .arg(socket)
            .arg("--config")
            .arg(dir.join("none.toml"))
            .arg("--alu")
            .arg(&alu)
            .env("NOTIFY_SOCKET", notify)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn term(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// READY=1 arrives once the control socket answers, STOPPING=1 on SIGTERM;
/// NOTIFY_SOCKET as a path or as an abstract `@name`.
#[test]
fn tierblkd_notifies_systemd() {
    let dir = tmpdir("notify");
    let abstract_name = format!("tierblk-test-notify-{}", std::process::id());
    let path = dir.join("notify.sock");
    for (i, notify) in [path.display().to_string(), format!("@{abstract_name}")]
        .into_iter()
        .enumerate()
    {
        let sock = if i == 0 {
            UnixDatagram::bind(&path).unwrap()
        } else {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                .unwrap();
            UnixDatagram::bind_addr(&addr).unwrap()
        };
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let control = dir.join(format!("control{i}.sock"));
        let mut d = Daemon::start(&dir, &notify, &control);
        let ready = recv(&sock);
        assert!(
            ready.lines().any(|l| l == "READY=1"),
            "{ready:?}\n{}",
            d.log()
        );
        assert!(ready.contains("STATUS=0 volume(s) online"), "{ready:?}");
        // Ready means answering: the very first request succeeds.
        let o = tierblk(&["--socket", control.to_str().unwrap(), "alu", "list"]);
        assert!(
            o.status.success(),
            "control socket not answering after READY=1: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            d.log()
        );
        d.term();
        let stopping = recv(&sock);
        assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
        assert!(d.wait().success(), "{}", d.log());
    }

    // A daemon that cannot start never says READY=1.
    let sock = UnixDatagram::bind(dir.join("notify2.sock")).unwrap();
    let mut d = Daemon::start(&dir, dir.join("notify2.sock").to_str().unwrap(), &dir);
    assert!(!d.wait().success(), "a directory as the socket must fail");
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    assert!(sock.recv(&mut buf).is_err(), "notified although it failed");
    let _ = std::fs::remove_dir_all(&dir);
}

// --- man pages, completions, scripts/install ----------------------------------

/// The subcommands `--help` lists after "Commands:" (without `help`).
fn subcommands(args: &[&str]) -> Vec<String> {
    let o = tierblk(args);
    assert!(o.status.success());
    let help = String::from_utf8(o.stdout).unwrap();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let dir = tmpdir("gen");
    let man = dir.join("man");
    let comp = dir.join("comp");
    assert!(tierblk(&["gen", "man", man.to_str().unwrap()])
        .status
        .success());
    assert!(tierblk(&["gen", "completions", comp.to_str().unwrap()])
        .status
        .success());
    let top = subcommands(&["--help"]);
    for c in ["alu", "vol", "snap", "job", "udev-name"] {
        assert!(top.iter().any(|t| t == c), "{c} not in {top:?}");
    }
    assert!(!top.iter().any(|t| t == "gen"), "gen must stay hidden");
    let page = std::fs::read_to_string(man.join("tierblk.8")).unwrap();
    let bash = std::fs::read_to_string(comp.join("tierblk.bash")).unwrap();
    let zsh = std::fs::read_to_string(comp.join("_tierblk")).unwrap();
    let fish = std::fs::read_to_string(comp.join("tierblk.fish")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH tierblk 8"));
    for c in &top {
        let roff = c.replace('-', "\\-");
        assert!(
            page.contains(&format!("tierblk\\-{roff}(8)")),
            "tierblk.8 lacks {c}"
        );
        assert!(bash.contains(c.as_str()), "bash completion lacks {c}");
        assert!(zsh.contains(c.as_str()) && fish.contains(c.as_str()));
        assert!(man.join(format!("tierblk-{c}.8")).exists());
        for sub in subcommands(&[c, "--help"]) {
            let f = man.join(format!("tierblk-{c}-{sub}.8"));
            assert!(f.exists(), "{} missing", f.display());
            // clap_complete spells a hyphen in a name as a subcommand break.
            let b = sub.replace('-', "__subcmd__");
            assert!(
                bash.contains(&format!("tierblk__subcmd__{c}__subcmd__{b}"))
                    || bash.contains(&format!("tierblk__{c}__{}", sub.replace('-', "__"))),
                "bash completion lacks {c} {sub}"
            );
        }
    }
    assert!(!man.join("tierblk-gen.8").exists());
    let d = std::fs::read_to_string(man.join("tierblkd.8")).unwrap();
    assert!(d.contains(".TH tierblkd 8") && d.contains("\\-\\-alu"));
    for f in ["tierblkd.bash", "_tierblkd", "tierblkd.fish"] {
        assert!(comp.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn install_places_the_tree() {
    let dest = tmpdir("install");
    let bins = Path::new(TIERBLK).parent().unwrap();
    let o = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install"))
        .args(["--prefix", "/usr", "--destdir"])
        .arg(&dest)
        .arg("--bin-dir")
        .arg(bins)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = dest.join("usr");
    for f in [
        "sbin/tierblkd",
        "sbin/tierblk",
        "lib/systemd/system/tierblkd.service",
        "lib/udev/rules.d/60-tierblk.rules",
        "share/man/man8/tierblk.8",
        "share/man/man8/tierblkd.8",
        "share/man/man8/tierblk-vol-create.8",
        "share/bash-completion/completions/tierblk",
        "share/bash-completion/completions/tierblkd",
        "share/zsh/site-functions/_tierblk",
        "share/fish/vendor_completions.d/tierblk.fish",
    ] {
        assert!(p.join(f).is_file(), "{f} not installed");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.join("sbin/tierblkd"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let unit = std::fs::read_to_string(p.join("lib/systemd/system/tierblkd.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/sbin/tierblkd\n"), "{unit}");
    for want in [
        "Type=notify",
        "Before=local-fs-pre.target shutdown.target",
        "Wants=local-fs-pre.target",
        "DefaultDependencies=no",
        "ExecStartPre=-/sbin/modprobe ublk_drv",
        "KillMode=mixed",
    ] {
        assert!(unit.lines().any(|l| l == want), "unit lacks {want}");
    }
    let rules = std::fs::read_to_string(p.join("lib/udev/rules.d/60-tierblk.rules")).unwrap();
    assert!(rules.contains("\"/usr/sbin/tierblk udev-name %k\""));
    let dest_s = dest.display().to_string();
    assert!(!unit.contains(&dest_s) && !rules.contains(&dest_s));
    let _ = std::fs::remove_dir_all(&dest);
}
