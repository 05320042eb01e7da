//! Our client (`NbdDev`) against other servers: `qemu-nbd` (Debian package
//! `qemu-utils`) serving a raw image file, and `nbdkit` (package `nbdkit`)
//! with its memory plugin.

mod common;

use std::cell::RefCell;
use std::process::{Command, Stdio};

use common::*;
use tierblk_fabric::{list_exports, NbdAddr, NbdDev};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::BlockDev;

const SIZE: usize = 8 << 20;

/// Random I/O from 8 concurrent tasks against qemu-nbd matches the model;
/// after qemu-nbd exits, the image file holds exactly the model's bytes.
#[test]
fn qemu_nbd_random_io_and_file_bytes() {
    require_tool("qemu-nbd", "qemu-utils");
    let dir = TempDir::new("qemu");
    let img = dir.path("disk.img");
    let data = make_image(&img, SIZE, 5);
    let sock = dir.path("qemu.sock");
    let child = Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "-t",
            "-e",
            "4",
            "--discard=unmap",
            "-x",
            "qdisk",
        ])
        .arg("-k")
        .arg(&sock)
        .arg(&img)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn qemu-nbd");
    let mut child = ChildGuard(child);
    wait_for_socket(&sock);
    let addr = NbdAddr::Unix(sock.clone());
    assert_eq!(list_exports(&addr).unwrap(), vec!["qdisk"]);

    let ring = LocalRing::new(64).unwrap();
    let dev = NbdDev::connect(&addr, "qdisk", ring.clone()).unwrap();
    assert_eq!(dev.size(), SIZE as u64);
    let model = RefCell::new(Model::new(data));
    // qemu may ignore a trim it cannot honour: trimmed bytes are unknown.
    let max = random_io(&ring, &dev, &|| dev.in_flight(), &model, 8, 150, 7, false);
    assert!(max >= 2, "never had two requests in flight (max {max})");
    verify_all(&ring, &dev, &model.borrow());
    // Make the trimmed ranges known again, then compare the file exactly.
    {
        let m = model.borrow();
        let unknown: Vec<usize> = (0..SIZE).filter(|&i| !m.known[i]).collect();
        drop(m);
        let mut i = 0;
        while i < unknown.len() {
            let start = unknown[i];
            let mut end = start + 1;
            while i + 1 < unknown.len() && unknown[i + 1] == end {
                i += 1;
                end += 1;
            }
            i += 1;
            ring.block_on(dev.write_zeroes(start as u64, (end - start) as u64))
                .unwrap();
            let mut m = model.borrow_mut();
            m.data[start..end].fill(0);
            m.known[start..end].fill(true);
        }
    }
    ring.block_on(dev.flush()).unwrap();
    ring.block_on(dev.disconnect());
    drop(dev);
    let _ = child.0.kill();
    let _ = child.0.wait();
    let on_disk = std::fs::read(&img).unwrap();
    assert!(
        on_disk == model.borrow().data,
        "image file differs from the model"
    );
}

/// Our client against nbdkit's memory plugin over a Unix socket (default
/// export name): random I/O matches the model.
#[test]
fn nbdkit_memory_random_io() {
    require_tool("nbdkit", "nbdkit");
    let dir = TempDir::new("nbdkit");
    let sock = dir.path("nbdkit.sock");
    let child = Command::new("nbdkit")
        .args(["-f", "-U"])
        .arg(&sock)
        .args(["memory", &format!("size={SIZE}")])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nbdkit");
    let _child = ChildGuard(child);
    wait_for_socket(&sock);
    let ring = LocalRing::new(64).unwrap();
    let dev = NbdDev::connect(&NbdAddr::Unix(sock), "", ring.clone()).unwrap();
    assert_eq!(dev.size(), SIZE as u64);
    let model = RefCell::new(Model::new(vec![0u8; SIZE]));
    let max = random_io(&ring, &dev, &|| dev.in_flight(), &model, 8, 100, 11, true);
    assert!(max >= 2);
    verify_all(&ring, &dev, &model.borrow());
    ring.block_on(dev.disconnect());
}

/// A remote reference with two paths to one image served by servers no one
/// here wrote: qemu-nbd (preferred) and nbdkit's file plugin. After a round
/// of random I/O from 8 tasks over qemu-nbd, qemu-nbd is killed: the next
/// round finds the connection broken, every request succeeds over nbdkit,
/// and the data matches the model.
#[test]
fn remote_reference_fails_over_from_qemu_nbd_to_nbdkit() {
    require_tool("qemu-nbd", "qemu-utils");
    require_tool("nbdkit", "nbdkit");
    let dir = TempDir::new("qemu-nbdkit");
    let img = dir.path("disk.img");
    let data = make_image(&img, SIZE, 9);
    let (qs, ks) = (dir.path("qemu.sock"), dir.path("kit.sock"));
    let qemu = Command::new("qemu-nbd")
        .args(["-f", "raw", "-t", "-e", "8", "--cache=none", "-x", "obj"])
        .arg("-k")
        .arg(&qs)
        .arg(&img)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn qemu-nbd");
    let mut qemu = ChildGuard(qemu);
    let kit = Command::new("nbdkit")
        .args(["--foreground", "--exportname", "obj", "--unix"])
        .arg(&ks)
        .arg("file")
        .arg(format!("file={}", img.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nbdkit");
    let _kit = ChildGuard(kit);
    wait_for_socket(&qs);
    wait_for_socket(&ks);
    let (desc, ring, leaf) = remote_leaf(SIZE as u64, &qs, &ks);
    let model = RefCell::new(Model::new(data));
    // Either server may ignore a trim: trimmed bytes are unknown.
    random_io(&ring, &leaf, &|| 0, &model, 8, 60, 1, false);
    assert_eq!(desc.paths()[0].active, 1, "{:?}", desc.paths());
    let _ = qemu.0.kill();
    let _ = qemu.0.wait();
    random_io(&ring, &leaf, &|| 0, &model, 8, 60, 2, false);
    verify_all(&ring, &leaf, &model.borrow());
    let p = desc.paths();
    assert!(!p[0].up && p[0].failures >= 1, "{p:?}");
    assert_eq!(p[1].active, 1, "{p:?}");
}
