//! Helpers shared by the fabric integration tests.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tierblk_fabric::{Export, NbdAddr};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{open_alu, AlignedBuf, BlockDev, Partition};

/// xorshift64* PRNG: deterministic per seed, no dependency.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tierblk-fabric-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fail (not skip) when an external tool is missing, naming its package.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` not found in PATH: install the Debian package `{package}` \
         (apt-get install {package}; scripts/test installs it)"
    );
}

/// An image file of `size` bytes filled from `seed`; returns its content.
pub fn make_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(size);
    std::fs::write(path, &data).unwrap();
    data
}

/// A tier-1 style export: a partition over the whole image file at `path`
/// (`O_DIRECT` when possible), one instance per connection.
pub fn partition_export(name: &str, path: &Path, size: u64) -> Export<Partition<LocalRing>> {
    let alu = open_alu(path).unwrap();
    Export::new(name, size, move |ring: &LocalRing| {
        Ok(Partition::new(alu.clone(), 0, size, ring.clone()))
    })
    .multi_conn(true)
}

/// Expected device content; `known[i] == false` after a trim whose result
/// the server does not guarantee.
pub struct Model {
    pub data: Vec<u8>,
    pub known: Vec<bool>,
}

impl Model {
    pub fn new(data: Vec<u8>) -> Self {
        let n = data.len();
        Model {
            data,
            known: vec![true; n],
        }
    }

    pub fn check(&self, offset: usize, got: &[u8], what: &str) {
        for (i, &b) in got.iter().enumerate() {
            let p = offset + i;
            if self.known[p] && self.data[p] != b {
                panic!("{what}: byte {p} is {b:#x}, expected {:#x}", self.data[p]);
            }
        }
    }
}

/// Run `tasks` concurrent futures on `ring`, each doing `ops` random
/// operations (read, write, write+FUA, trim, write-zeroes, flush) on its own
/// region of `dev`, checked against `model`. When `trim_zeroes` is false, a
/// trimmed range becomes unknown in the model. Returns the largest number of
/// requests seen in flight on the connection (via `in_flight`).
#[allow(clippy::too_many_arguments)] // A test helper: plain knobs read best.
pub fn random_io<D: BlockDev>(
    ring: &LocalRing,
    dev: &D,
    in_flight: &dyn Fn() -> usize,
    model: &RefCell<Model>,
    tasks: usize,
    ops: usize,
    seed: u64,
    trim_zeroes: bool,
) -> usize {
    const BLK: u64 = 512;
    let size = dev.size();
    let region = size / tasks as u64 / BLK * BLK;
    assert!(region >= 64 * BLK, "device too small for {tasks} tasks");
    let max_seen = Cell::new(0usize);
    let futs: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = (0..tasks)
        .map(|t| {
            let max_seen = &max_seen;
            let fut = async move {
                let mut rng = Rng::new(seed ^ ((t as u64 + 1) << 32));
                let base = t as u64 * region;
                for op in 0..ops {
                    let blocks = 1 + rng.below(64.min(region / BLK));
                    let len = blocks * BLK;
                    let off = base + rng.below(region / BLK - blocks + 1) * BLK;
                    let (o, l) = (off as usize, len as usize);
                    let what = format!("task {t} op {op} off {off} len {len}");
                    max_seen.set(max_seen.get().max(in_flight()));
                    match rng.below(10) {
                        0..=2 => {
                            let mut buf = AlignedBuf::new(l);
                            dev.read(off, &mut buf).await.unwrap();
                            model.borrow().check(o, &buf, &what);
                        }
                        3..=5 => {
                            let buf = AlignedBuf::from_slice(&rng.bytes(l));
                            let fua = rng.below(2) == 0;
                            dev.write(off, &buf, fua).await.unwrap();
                            let mut m = model.borrow_mut();
                            m.data[o..o + l].copy_from_slice(&buf);
                            m.known[o..o + l].fill(true);
                        }
                        6 => {
                            dev.discard(off, len).await.unwrap();
                            let mut m = model.borrow_mut();
                            if trim_zeroes {
                                m.data[o..o + l].fill(0);
                            } else {
                                m.known[o..o + l].fill(false);
                            }
                        }
                        7 | 8 => {
                            dev.write_zeroes(off, len).await.unwrap();
                            let mut m = model.borrow_mut();
                            m.data[o..o + l].fill(0);
                            m.known[o..o + l].fill(true);
                        }
                        _ => dev.flush().await.unwrap(),
                    }
                }
            };
            Box::pin(fut) as Pin<Box<dyn Future<Output = ()> + '_>>
        })
        .collect();
    ring.run_all(futs);
    max_seen.get()
}

/// Read the whole device and compare with the model.
pub fn verify_all<D: BlockDev>(ring: &LocalRing, dev: &D, model: &Model) {
    let mut buf = AlignedBuf::new(dev.size() as usize);
    ring.block_on(dev.read(0, &mut buf)).unwrap();
    model.check(0, &buf, "final read");
}

/// Wait until `f` holds, or panic after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (by its pid) and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run a command to completion, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait for a Unix socket path to accept connections.
pub fn wait_for_socket(path: &Path) {
    wait_until(20, &format!("socket {}", path.display()), || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    });
}

/// The Unix address of `path`.
pub fn unix(path: PathBuf) -> NbdAddr {
    NbdAddr::Unix(path)
}

/// A remote reference (export "obj" of `size` bytes) over Unix socket paths
/// `a` then `b`, probed, and this thread's leaf over it on a new ring.
pub fn remote_leaf(
    size: u64,
    a: &Path,
    b: &Path,
) -> (
    std::sync::Arc<tierblk_stack::RemoteDesc>,
    LocalRing,
    tierblk_stack::Leaf<LocalRing>,
) {
    let desc = tierblk_stack::RemoteDesc::new("obj", size, two_paths(a, b), None)
        .unwrap()
        .probe()
        .unwrap();
    let desc = std::sync::Arc::new(desc);
    let ring = LocalRing::new(64).unwrap();
    let leaf = tierblk_stack::Piece::Remote(desc.clone()).build(ring.clone());
    (desc, ring, leaf)
}

/// Unix socket paths `a` then `b` as two fabric paths.
pub fn two_paths(a: &Path, b: &Path) -> Vec<NbdAddr> {
    vec![
        NbdAddr::Unix(a.to_path_buf()),
        NbdAddr::Unix(b.to_path_buf()),
    ]
}

/// One NBD request on the wire (header only; a write's payload follows).
pub fn req(command: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    tierblk_fabric::proto::Request {
        flags,
        command,
        cookie,
        offset,
        len,
    }
    .encode()
    .to_vec()
}
