//! A dynamic export catalog: exports added and removed while the server runs
//! are seen by `LIST` and `GO`; a catalog's refusal reaches the client;
//! connections already in transmission keep their instance.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use tierblk_fabric::{
    list_exports, list_exports_with, Catalog, ClientError, Export, NbdAddr, NbdDev, NbdServer,
    Secret, ServerConfig,
};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{AlignedBuf, BlockDev, Partition};

const SIZE: u64 = 1 << 20;

type Dev = Partition<LocalRing>;

/// What a daemon would keep: current exports by name, and names refused
/// with a reason (e.g. a stale generation).
#[derive(Default)]
struct Volumes {
    exports: Mutex<BTreeMap<String, Export<Dev>>>,
    refused: Mutex<BTreeMap<String, String>>,
}

impl Volumes {
    fn add(&self, e: Export<Dev>) {
        self.exports.lock().unwrap().insert(e.name().to_string(), e);
    }
    fn remove(&self, name: &str) {
        self.exports.lock().unwrap().remove(name);
    }
}

impl Catalog<Dev> for Volumes {
    fn list(&self) -> Vec<String> {
        self.exports.lock().unwrap().keys().cloned().collect()
    }
    fn lookup(&self, name: &str) -> Result<Export<Dev>, String> {
        if let Some(why) = self.refused.lock().unwrap().get(name) {
            return Err(format!("export {name:?} refused: {why}"));
        }
        self.exports
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no volume {name:?}"))
    }
    fn control(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        match request {
            b"fail" => Err("control refused: asked to".into()),
            r => Ok([b"echo:", r].concat()),
        }
    }
}

fn refused_message<T>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Refused { message, .. }) => message,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("not refused"),
    }
}

/// Exports added and removed while the server runs are seen by LIST and GO
/// (our client and `nbdinfo`); a removed export's live connection keeps
/// working; the catalog's refusal message reaches the client.
#[test]
fn exports_added_and_removed_while_running() {
    let dir = TempDir::new("catalog");
    let imgs: Vec<_> = (0..3)
        .map(|i| {
            let p = dir.path(&format!("v{i}.img"));
            let data = make_image(&p, SIZE as usize, 10 + i);
            (p, data)
        })
        .collect();
    let vols = Arc::new(Volumes::default());
    vols.add(partition_export("v0", &imgs[0].0, SIZE));
    let addr = NbdAddr::Unix(dir.path("nbd.sock"));
    let server = NbdServer::start_catalog(
        std::slice::from_ref(&addr),
        vols.clone() as Arc<dyn Catalog<Dev>>,
        ServerConfig::default(),
    )
    .unwrap();
    let ring = LocalRing::new(16).unwrap();
    assert_eq!(list_exports(&addr).unwrap(), vec!["v0"]);
    let m = refused_message(NbdDev::connect(&addr, "v1", ring.clone()));
    assert!(m.contains("no volume \"v1\""), "{m}");

    // Created while running.
    vols.add(partition_export("v1", &imgs[1].0, SIZE));
    vols.add(partition_export("v2", &imgs[2].0, SIZE).read_only(true));
    assert_eq!(list_exports(&addr).unwrap(), vec!["v0", "v1", "v2"]);
    let v1 = NbdDev::connect(&addr, "v1", ring.clone()).unwrap();
    let mut buf = AlignedBuf::new(4096);
    ring.block_on(v1.read(0, &mut buf)).unwrap();
    assert!(buf[..] == imgs[1].1[..4096], "v1 content");
    let v2 = NbdDev::connect(&addr, "v2", ring.clone()).unwrap();
    assert!(v2.read_only());
    require_tool("nbdinfo", "libnbd-bin");
    let out = run(Command::new("nbdinfo").arg("--list").arg(addr.uri("")));
    assert!(out.contains("v1") && out.contains("v2"), "{out}");

    // Removed while running: gone from LIST and GO; the live connection
    // keeps its instance.
    vols.remove("v1");
    assert_eq!(list_exports(&addr).unwrap(), vec!["v0", "v2"]);
    let m = refused_message(NbdDev::connect(&addr, "v1", ring.clone()));
    assert!(m.contains("no volume"), "{m}");
    let data = AlignedBuf::from_slice(&Rng::new(3).bytes(4096));
    ring.block_on(v1.write(8192, &data, true)).unwrap();
    ring.block_on(v1.read(8192, &mut buf)).unwrap();
    assert!(buf[..] == data[..]);

    // Refused by policy (a stale generation, say): the reason is passed on.
    vols.refused
        .lock()
        .unwrap()
        .insert("v2".into(), "stale generation 3 < 4".into());
    let m = refused_message(NbdDev::connect(&addr, "v2", ring.clone()));
    assert!(m.contains("stale generation 3 < 4"), "{m}");

    // Re-created: visible again.
    vols.add(partition_export("v1", &imgs[1].0, SIZE));
    NbdDev::connect(&addr, "v1", ring.clone()).unwrap();
    ring.block_on(v1.disconnect());
    ring.block_on(v2.disconnect());
    server.shutdown();
}

/// The catalog and the secret combine: exports added later are served to
/// authenticated clients only (TCP).
#[test]
fn catalog_with_a_secret() {
    let dir = TempDir::new("catalog-auth");
    let img = dir.path("v.img");
    make_image(&img, SIZE as usize, 4);
    let vols = Arc::new(Volumes::default());
    let secret = Secret::new("catalog test cluster secret").unwrap();
    let server = NbdServer::start_catalog(
        &[NbdAddr::Tcp("127.0.0.1:0".parse().unwrap())],
        vols.clone() as Arc<dyn Catalog<Dev>>,
        ServerConfig {
            secret: Some(secret.clone()),
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addr = server.addrs()[0].clone();
    assert!(list_exports_with(&addr, Some(&secret)).unwrap().is_empty());
    vols.add(partition_export("late", &img, SIZE));
    assert_eq!(
        list_exports_with(&addr, Some(&secret)).unwrap(),
        vec!["late"]
    );
    let ring = LocalRing::new(8).unwrap();
    NbdDev::connect_with(&addr, "late", ring.clone(), Some(&secret)).unwrap();
    assert!(matches!(
        NbdDev::connect(&addr, "late", ring.clone()),
        Err(ClientError::Refused { .. })
    ));
}

/// A session opened while its export was valid is cut once it no longer is
/// (a deposed master's generation): the next request gets ESHUTDOWN and the
/// connection closes; a new session is refused by the catalog meanwhile.
#[test]
fn revoked_sessions_get_eshutdown_and_close() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = TempDir::new("revoke");
    let img = dir.path("disk.img");
    make_image(&img, SIZE as usize, 3);
    let valid = Arc::new(AtomicBool::new(true));
    let v = valid.clone();
    let export =
        partition_export("alu:1:/x", &img, SIZE).valid_while(move || v.load(Ordering::SeqCst));
    let sock = dir.path("nbd.sock");
    let server = NbdServer::start(&[NbdAddr::Unix(sock.clone())], vec![export]).unwrap();
    let ring = LocalRing::new(8).unwrap();
    let dev = NbdDev::connect(&NbdAddr::Unix(sock.clone()), "alu:1:/x", ring.clone()).unwrap();
    let mut buf = AlignedBuf::new(4096);
    ring.block_on(dev.read(0, &mut buf)).unwrap();
    ring.block_on(dev.write(0, &buf, false)).unwrap();
    valid.store(false, Ordering::SeqCst);
    let e = ring.block_on(dev.write(4096, &buf, false)).unwrap_err();
    assert_eq!(e.errno(), libc::ESHUTDOWN, "{e}");
    // The server closed the connection after the reply.
    let e = ring.block_on(dev.read(0, &mut buf)).unwrap_err();
    assert!(dev.is_broken(), "{e}");
    server.shutdown();
}

/// The control channel of the catalog: after authentication only, versioned,
/// errors come back as refusals, a server without one says so.
#[test]
fn control_requests_reach_the_catalog_after_authentication() {
    use std::time::Duration;
    use tierblk_stack::nbd::{control, proto};
    let secret = Secret::new(b"0123456789abcdef-control".to_vec()).unwrap();
    let cfg = ServerConfig {
        secret: Some(secret.clone()),
        trust_unix_root: false,
        ..ServerConfig::default()
    };
    let cat: Arc<dyn Catalog<Dev>> = Arc::new(Volumes::default());
    let dir = TempDir::new("control");
    let sock = NbdAddr::Unix(dir.path("nbd.sock"));
    let server = NbdServer::start_catalog(std::slice::from_ref(&sock), cat, cfg).unwrap();
    let t = Duration::from_secs(5);
    assert_eq!(
        control(&sock, Some(&secret), b"hello", t).unwrap(),
        b"echo:hello"
    );
    let m = refused_message(control(&sock, Some(&secret), b"fail", t));
    assert!(m.contains("asked to"), "{m}");
    // Without the secret: refused before the catalog sees it.
    let m = refused_message(control(&sock, None, b"hello", t));
    assert!(m.contains("authentication required"), "{m}");
    // A frame of another version is refused, the connection goes on.
    assert!(proto::decode_control(&[0, 0, 0, 2, 1]).is_err());
    assert!(proto::decode_control(&[0, 0]).is_err());
    server.shutdown();
    // A server without a control channel refuses.
    let img = dir.path("x.img");
    make_image(&img, SIZE as usize, 1);
    let plain = NbdAddr::Unix(dir.path("plain.sock"));
    let server = NbdServer::start(
        std::slice::from_ref(&plain),
        vec![partition_export("x", &img, SIZE)],
    )
    .unwrap();
    let m = refused_message(control(&plain, None, b"hello", t));
    assert!(m.contains("no control channel"), "{m}");
    server.shutdown();
}
