//! Remote references over redundant fabric paths (spec [046], section VII;
//! remote references [0109]–[0110]): a path that breaks under load costs no
//! I/O error, the reference fails back to the preferred path when it returns,
//! and with no path at all requests wait a bounded time.

mod common;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tierblk_fabric::{NbdAddr, NbdServer};
use tierblk_stack::remote::{RemoteError, FAILBACK_INTERVAL};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{AlignedBuf, BlockDev, RemoteDesc, RemoteRef};

const SIZE: usize = 8 << 20;

fn serve(sock: &std::path::Path, img: &std::path::Path) -> NbdServer {
    NbdServer::start(
        &[NbdAddr::Unix(sock.to_path_buf())],
        vec![partition_export("obj", img, SIZE as u64)],
    )
    .unwrap()
}

/// Two servers over one image stand for one peer reached over two paths.
/// Path A dies in the middle of random I/O from 8 tasks: every request
/// succeeds (re-issued on path B) and the data matches the model; path A is
/// reported failed. When A returns, the reference fails back to it.
#[test]
fn broken_path_fails_over_without_io_error_and_fails_back() {
    let dir = TempDir::new("failover");
    let img = dir.path("disk.img");
    let data = make_image(&img, SIZE, 5);
    let (sa, sb) = (dir.path("a.sock"), dir.path("b.sock"));
    let a = serve(&sa, &img);
    let b = serve(&sb, &img);
    let (desc, ring, leaf) = remote_leaf(SIZE as u64, &sa, &sb);
    let model = RefCell::new(Model::new(data));

    // Kill path A once I/O is flowing on it.
    let killed = Arc::new(AtomicBool::new(false));
    let killer = {
        let killed = killed.clone();
        std::thread::spawn(move || {
            wait_until(10, "a connection on path A", || {
                a.accepted_connections() >= 2
            });
            std::thread::sleep(Duration::from_millis(30));
            a.shutdown();
            killed.store(true, Ordering::SeqCst);
        })
    };
    // Enough operations that the I/O outlives the kill.
    let mut rounds = 0;
    while !killed.load(Ordering::SeqCst) || rounds == 0 {
        random_io(&ring, &leaf, &|| 0, &model, 8, 50, rounds, true);
        rounds += 1;
        assert!(rounds < 2000, "path A never went away");
    }
    random_io(&ring, &leaf, &|| 0, &model, 8, 50, 999, true);
    killer.join().unwrap();
    verify_all(&ring, &leaf, &model.borrow());

    let paths = desc.paths();
    assert!(!paths[0].up, "path A still reported up: {paths:?}");
    assert!(paths[0].failures >= 1, "{paths:?}");
    assert!(paths[0].last_error.is_some());
    assert!(paths[1].up && paths[1].connects >= 1, "{paths:?}");
    assert_eq!(paths[1].active, 1, "{paths:?}");

    // Path A comes back: after the failback interval the next request runs
    // on it again.
    let a2 = serve(&sa, &img);
    std::thread::sleep(FAILBACK_INTERVAL + Duration::from_millis(100));
    let mut buf = AlignedBuf::new(4096);
    ring.block_on(leaf.read(0, &mut buf)).unwrap();
    model.borrow().check(0, &buf, "after failback");
    assert!(
        a2.accepted_connections() >= 1,
        "no connection on the returned path"
    );
    let paths = desc.paths();
    assert!(paths[0].up, "{paths:?}");
    assert_eq!((paths[0].active, paths[1].active), (1, 0), "{paths:?}");
    drop(leaf);
    assert_eq!(desc.paths()[0].active, 0);
    b.shutdown();
    a2.shutdown();
}

/// With no path, a request waits (without blocking the ring: other tasks go
/// on) and succeeds as soon as a path returns within the no-path timeout; past
/// the timeout it fails with EIO.
#[test]
fn no_path_waits_bounded_then_fails() {
    let dir = TempDir::new("nopath");
    let img = dir.path("disk.img");
    make_image(&img, SIZE, 6);
    let sock = dir.path("a.sock");
    let mut desc =
        RemoteDesc::new("obj", SIZE as u64, vec![NbdAddr::Unix(sock.clone())], None).unwrap();
    desc.no_path_timeout = Duration::from_secs(5);
    let desc = Arc::new(desc);
    let ring = LocalRing::new(16).unwrap();
    let dev = RemoteRef::new(desc.clone(), ring.clone());

    // The server appears 300 ms after the request is issued.
    let starter = {
        let (sock, img) = (sock.clone(), img.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            serve(&sock, &img)
        })
    };
    let t0 = Instant::now();
    let mut buf = AlignedBuf::new(4096);
    ring.block_on(dev.read(4096, &mut buf)).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(250));
    let server = starter.join().unwrap();
    server.shutdown();

    // Gone for good: EIO after the timeout, not before.
    let mut desc2 =
        RemoteDesc::new("obj", SIZE as u64, vec![NbdAddr::Unix(sock.clone())], None).unwrap();
    desc2.no_path_timeout = Duration::from_millis(400);
    let dev2 = RemoteRef::new(Arc::new(desc2), ring.clone());
    let t0 = Instant::now();
    let err = ring.block_on(dev2.write(0, &buf, false)).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
}

/// Probing names every path that failed, and refuses an export that is too
/// small for the volume.
#[test]
fn probe_reports_unreachable_and_too_small() {
    let dir = TempDir::new("probe");
    let img = dir.path("disk.img");
    make_image(&img, SIZE, 7);
    let (sa, sb) = (dir.path("a.sock"), dir.path("b.sock"));
    let err = RemoteDesc::new("obj", SIZE as u64, two_paths(&sa, &sb), None)
        .unwrap()
        .probe()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{msg}");
    assert!(msg.contains("a.sock") && msg.contains("b.sock"), "{msg}");

    let server = serve(&sb, &img);
    let err = RemoteDesc::new(
        "obj",
        2 * SIZE as u64,
        vec![NbdAddr::Unix(sb.clone())],
        None,
    )
    .unwrap()
    .probe()
    .unwrap_err();
    assert!(matches!(err, RemoteError::TooSmall { .. }), "{err}");
    let err = RemoteDesc::new("nope", SIZE as u64, vec![NbdAddr::Unix(sb.clone())], None)
        .unwrap()
        .probe()
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(RemoteDesc::new("obj", 1, vec![], None).is_err());
    server.shutdown();
}
