//! A remote reference re-admitted under a new name (a new master's
//! generation, spec [062]/[069] with the fencing of section V): the peer cuts
//! the old name's sessions, requests wait on the reference, and once the
//! daemon renames the reference they reconnect under the new name and
//! complete, with nothing failed to the host. Without the rename they fail
//! after the no-path timeout, as before.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tierblk_fabric::{NbdAddr, NbdServer};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{AlignedBuf, BlockDev, RemoteDesc, RemoteRef};

const SIZE: u64 = 4 << 20;

/// One image served as `part:1` (valid until `cut`) and `part:2`.
fn serve_two_generations(dir: &TempDir, seed: u64) -> (NbdServer, NbdAddr, Arc<AtomicBool>) {
    let img = dir.path("disk.img");
    make_image(&img, SIZE as usize, seed);
    let valid = Arc::new(AtomicBool::new(true));
    let v = valid.clone();
    let old = partition_export("part:1", &img, SIZE).valid_while(move || v.load(Ordering::SeqCst));
    let new = partition_export("part:2", &img, SIZE);
    let sock = dir.path("nbd.sock");
    let server = NbdServer::start(&[NbdAddr::Unix(sock.clone())], vec![old, new]).unwrap();
    (server, NbdAddr::Unix(sock), valid)
}

/// The image's first two 4 KiB blocks, read through a fresh part:2 session,
/// are filled with `first` and `second`.
fn assert_blocks(addr: &NbdAddr, ring: &LocalRing, first: u8, second: u8) {
    let check = tierblk_fabric::NbdDev::connect(addr, "part:2", ring.clone()).unwrap();
    let mut back = AlignedBuf::new(8192);
    ring.block_on(check.read(0, &mut back)).unwrap();
    assert!(back[..4096].iter().all(|&b| b == first));
    assert!(back[4096..].iter().all(|&b| b == second));
}

#[test]
fn a_renamed_reference_reconnects_under_the_new_name_without_failing_io() {
    let dir = TempDir::new("rename");
    let (server, addr, valid) = serve_two_generations(&dir, 11);
    let mut desc = RemoteDesc::new("part:1", SIZE, vec![addr.clone()], None).unwrap();
    desc.no_path_timeout = Duration::from_secs(20);
    let desc = Arc::new(desc);
    let ring = LocalRing::new(16).unwrap();
    let dev = RemoteRef::new(desc.clone(), ring.clone());
    let mut buf = AlignedBuf::new(4096);
    buf.fill(0xa5);
    ring.block_on(dev.write(0, &buf, false)).unwrap();

    // The configuration moves on: part:1's session is cut at its next
    // request and part:1 is refused from now on. The rename comes 300 ms
    // after the write below was issued.
    valid.store(false, Ordering::SeqCst);
    let renamer = {
        let desc = desc.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            desc.rename("part:2");
        })
    };
    let t0 = Instant::now();
    buf.fill(0x5a);
    ring.block_on(dev.write(4096, &buf, false)).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    renamer.join().unwrap();
    assert_eq!(desc.export(), "part:2");

    // Both writes are on the image.
    assert_blocks(&addr, &ring, 0xa5, 0x5a);
    server.shutdown();
}

#[test]
fn without_the_rename_a_cut_reference_fails_after_the_no_path_timeout() {
    let dir = TempDir::new("norename");
    let (server, addr, valid) = serve_two_generations(&dir, 12);
    let mut desc = RemoteDesc::new("part:1", SIZE, vec![addr], None).unwrap();
    desc.no_path_timeout = Duration::from_millis(400);
    let ring = LocalRing::new(16).unwrap();
    let dev = RemoteRef::new(Arc::new(desc), ring.clone());
    let buf = AlignedBuf::new(4096);
    ring.block_on(dev.write(0, &buf, false)).unwrap();
    valid.store(false, Ordering::SeqCst);
    // Every reconnect is accepted and shut down again: that counts as no
    // path, with a back-off, not as a loop that never ends.
    let t0 = Instant::now();
    let e = ring.block_on(dev.write(0, &buf, false)).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    server.shutdown();
}

#[test]
fn a_rename_moves_an_idle_connection_to_the_new_name_with_no_path_failure() {
    let dir = TempDir::new("eager");
    let (server, addr, valid) = serve_two_generations(&dir, 13);
    let desc = Arc::new(RemoteDesc::new("part:1", SIZE, vec![addr.clone()], None).unwrap());
    let ring = LocalRing::new(16).unwrap();
    let dev = RemoteRef::new(desc.clone(), ring.clone());
    let mut buf = AlignedBuf::new(4096);
    buf.fill(0x3c);
    ring.block_on(dev.write(0, &buf, false)).unwrap();
    assert_eq!(desc.paths()[0].connects, 1);

    // A new master re-admits the reference while its connection is idle:
    // the next request goes out under part:2 at once. Sent on the part:1
    // session it would be answered ESHUTDOWN, a failure on the path's
    // record (what `path list` shows) for an expected cut.
    valid.store(false, Ordering::SeqCst);
    desc.rename("part:2");
    buf.fill(0xc3);
    ring.block_on(dev.write(4096, &buf, false)).unwrap();
    let p = &desc.paths()[0];
    assert_eq!(p.failures, 0, "last error: {:?}", p.last_error);
    assert_eq!((p.connects, p.active), (2, 1));

    assert_blocks(&addr, &ring, 0x3c, 0xc3);
    server.shutdown();
}
