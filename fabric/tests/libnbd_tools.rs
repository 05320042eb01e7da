//! Our server, read and written by libnbd's tools (`nbdinfo`, `nbdcopy`,
//! Debian package `libnbd-bin`).

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use tierblk_fabric::{NbdAddr, NbdServer};

const SIZE: usize = 6 << 20;

/// `nbdinfo` reports the size of an export (Unix socket and TCP) and lists
/// every export with `--list`.
#[test]
fn nbdinfo_size_and_list() {
    require_tool("nbdinfo", "libnbd-bin");
    let dir = TempDir::new("nbdinfo");
    let a = dir.path("a.img");
    let b = dir.path("b.img");
    make_image(&a, SIZE, 1);
    make_image(&b, 1 << 20, 2);
    let server = NbdServer::start(
        &[
            NbdAddr::Unix(dir.path("nbd.sock")),
            NbdAddr::Tcp("127.0.0.1:0".parse::<SocketAddr>().unwrap()),
        ],
        vec![
            partition_export("alpha", &a, SIZE as u64),
            partition_export("beta", &b, 1 << 20).read_only(true),
        ],
    )
    .unwrap();
    for addr in server.addrs() {
        let out = run(Command::new("nbdinfo").arg("--size").arg(addr.uri("alpha")));
        assert_eq!(out.trim(), SIZE.to_string(), "nbdinfo --size {addr}");
        let out = run(Command::new("nbdinfo").arg("--size").arg(addr.uri("beta")));
        assert_eq!(out.trim(), (1 << 20).to_string());
    }
    let unix = &server.addrs()[0];
    let out = run(Command::new("nbdinfo").arg("--list").arg(unix.uri("")));
    assert!(out.contains("alpha") && out.contains("beta"), "{out}");
    let out = run(Command::new("nbdinfo").arg(unix.uri("beta")));
    assert!(out.contains("read_only: true"), "{out}");
    assert!(out.contains("block_size_minimum: 512"), "{out}");
    let out = run(Command::new("nbdinfo").arg("--json").arg(unix.uri("alpha")));
    assert!(out.contains("\"can_flush\": true"), "{out}");
    assert!(out.contains("\"can_fua\": true"), "{out}");
    assert!(out.contains("\"can_trim\": true"), "{out}");
    assert!(out.contains("\"can_zero\": true"), "{out}");
}

/// `nbdcopy` copies a random image into our export and back out; the bytes
/// match, on the backing file and in the copy.
#[test]
fn nbdcopy_in_and_out() {
    require_tool("nbdcopy", "libnbd-bin");
    let dir = TempDir::new("nbdcopy");
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; SIZE]).unwrap();
    let src = dir.path("src.img");
    let data = make_image(&src, SIZE, 77);
    let server = NbdServer::start(
        &[
            NbdAddr::Unix(dir.path("nbd.sock")),
            NbdAddr::Tcp("127.0.0.1:0".parse::<SocketAddr>().unwrap()),
        ],
        vec![partition_export("disk", &disk, SIZE as u64)],
    )
    .unwrap();
    let unix = server.addrs()[0].clone();
    let tcp = server.addrs()[1].clone();
    run(Command::new("nbdcopy")
        .arg("--flush")
        .arg(&src)
        .arg(unix.uri("disk")));
    assert!(
        std::fs::read(&disk).unwrap() == data,
        "backing file differs"
    );
    let out = dir.path("out.img");
    run(Command::new("nbdcopy").arg(tcp.uri("disk")).arg(&out));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "copied-out image differs"
    );
    // Several connections (we advertise CAN_MULTI_CONN) and a pipe.
    let out2 = dir.path("out2.img");
    run(Command::new("nbdcopy")
        .arg("--connections=4")
        .arg(unix.uri("disk"))
        .arg(&out2));
    assert!(std::fs::read(&out2).unwrap() == data);
    server.shutdown();
}
