//! Our client (`NbdDev`) against our server (`NbdServer`), over Unix sockets
//! and TCP.

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;

use common::*;
use tierblk_fabric::{list_exports, ClientError, Export, NbdAddr, NbdDev, NbdServer};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{AlignedBuf, BlockDev, IoError, IoResult, Limits};

const SIZE: usize = 8 << 20;

fn loopback_random_io(addr: NbdAddr, tag: &str) {
    let dir = TempDir::new(tag);
    let img = dir.path("disk.img");
    let data = make_image(&img, SIZE, 1);
    let listen = match &addr {
        NbdAddr::Unix(_) => NbdAddr::Unix(dir.path("nbd.sock")),
        tcp => tcp.clone(),
    };
    let server =
        NbdServer::start(&[listen], vec![partition_export("disk", &img, SIZE as u64)]).unwrap();
    let addr = server.addrs()[0].clone();
    let ring = LocalRing::new(64).unwrap();
    let dev = NbdDev::connect(&addr, "disk", ring.clone()).unwrap();
    assert_eq!(dev.size(), SIZE as u64);
    assert!(!dev.read_only());
    assert_eq!(dev.limits().logical_block, 512);
    let model = RefCell::new(Model::new(data));
    let max = random_io(&ring, &dev, &|| dev.in_flight(), &model, 8, 150, 42, true);
    assert!(max >= 2, "never had two requests in flight (max {max})");
    verify_all(&ring, &dev, &model.borrow());
    ring.block_on(dev.flush()).unwrap();
    ring.block_on(dev.disconnect());
    server.shutdown();
    // The server wrote through to the image file.
    let on_disk = std::fs::read(&img).unwrap();
    model.borrow().check(0, &on_disk, "image file");
}

/// Random I/O (read, write, FUA write, trim, write-zeroes, flush) from 8
/// concurrent tasks over one Unix socket connection matches the model, and
/// more than one request is in flight at a time.
#[test]
fn unix_random_io_matches_model() {
    loopback_random_io(NbdAddr::Unix("unused".into()), "unix");
}

/// Same over TCP (ephemeral port on 127.0.0.1).
#[test]
fn tcp_random_io_matches_model() {
    loopback_random_io(
        NbdAddr::Tcp("127.0.0.1:0".parse::<SocketAddr>().unwrap()),
        "tcp",
    );
}

/// Requests larger than the server's maximum block size are split; many
/// connections (each with its own ring and export instance) work at once.
#[test]
fn large_requests_and_parallel_connections() {
    let dir = TempDir::new("large");
    let img = dir.path("disk.img");
    let size = 40usize << 20;
    make_image(&img, size, 3);
    let sock = dir.path("nbd.sock");
    let server = NbdServer::start(
        &[NbdAddr::Unix(sock.clone())],
        vec![partition_export("big", &img, size as u64)],
    )
    .unwrap();
    let ring = LocalRing::new(64).unwrap();
    let dev = NbdDev::connect(&NbdAddr::Unix(sock.clone()), "big", ring.clone()).unwrap();
    assert_eq!(dev.limits().max_io_bytes, 32 << 20);
    let mut rng = Rng::new(9);
    let payload = AlignedBuf::from_slice(&rng.bytes(36 << 20));
    ring.block_on(dev.write(1 << 20, &payload, true)).unwrap();
    let mut back = AlignedBuf::new(36 << 20);
    ring.block_on(dev.read(1 << 20, &mut back)).unwrap();
    assert!(back[..] == payload[..], "36 MiB round trip differs");

    // Four threads, each with its own ring and connection, on disjoint ranges.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let ring = LocalRing::new(32).unwrap();
                let dev = NbdDev::connect(&NbdAddr::Unix(sock), "big", ring.clone()).unwrap();
                let mut rng = Rng::new(100 + t);
                for i in 0..50u64 {
                    let off = t * (1 << 20) + (i % 16) * 65536;
                    let buf = AlignedBuf::from_slice(&rng.bytes(65536));
                    ring.block_on(dev.write(off, &buf, false)).unwrap();
                    let mut r = AlignedBuf::new(65536);
                    ring.block_on(dev.read(off, &mut r)).unwrap();
                    assert!(r[..] == buf[..]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(server.accepted_connections() >= 5);
    drop(dev);
    wait_until(10, "connections to close", || {
        server.live_connections() == 0
    });
}

/// A device whose writes fail with ENOSPC: errors cross the wire as errnos.
struct Failing(u64);

impl BlockDev for Failing {
    fn size(&self) -> u64 {
        self.0
    }
    fn limits(&self) -> Limits {
        tierblk_stack::partition::DEFAULT_LIMITS
    }
    async fn read(&self, _offset: u64, buf: &mut [u8]) -> IoResult<()> {
        buf.fill(0xab);
        Ok(())
    }
    async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> IoResult<()> {
        Err(IoError::new(
            libc::ENOSPC,
            "write",
            offset,
            buf.len() as u64,
        ))
    }
    async fn flush(&self) -> IoResult<()> {
        Err(IoError::new(libc::EIO, "flush", 0, 0))
    }
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        Err(IoError::new(libc::EOPNOTSUPP, "discard", offset, len))
    }
    async fn write_zeroes(&self, _offset: u64, _len: u64) -> IoResult<()> {
        Ok(())
    }
}

/// Export list, read-only exports, out-of-range requests, device errors,
/// unknown exports and failing factories all map to the right errors, and
/// shutting the server down breaks live clients cleanly.
#[test]
fn errors_and_export_list() {
    let dir = TempDir::new("errors");
    let sock = dir.path("nbd.sock");
    let addr = NbdAddr::Unix(sock.clone());
    let server = NbdServer::start(
        std::slice::from_ref(&addr),
        vec![
            Export::new("fail", 1 << 20, |_: &LocalRing| Ok(Failing(1 << 20))),
            Export::new("ro", 1 << 20, |_: &LocalRing| Ok(Failing(1 << 20))).read_only(true),
            Export::new("broken", 1 << 20, |_: &LocalRing| {
                Err::<Failing, _>("ALU offline".to_string())
            }),
        ],
    )
    .unwrap();
    assert_eq!(list_exports(&addr).unwrap(), vec!["fail", "ro", "broken"]);

    let ring = LocalRing::new(16).unwrap();
    let dev = NbdDev::connect(&addr, "fail", ring.clone()).unwrap();
    let mut buf = vec![0u8; 4096];
    ring.block_on(dev.read(0, &mut buf)).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab));
    let e = ring.block_on(dev.write(0, &buf, false)).unwrap_err();
    assert_eq!((e.errno(), e.op()), (libc::ENOSPC, "write"));
    assert_eq!(ring.block_on(dev.flush()).unwrap_err().errno(), libc::EIO);
    assert_eq!(
        ring.block_on(dev.discard(0, 4096)).unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
    ring.block_on(dev.write_zeroes(0, 4096)).unwrap();
    // Out of range: refused locally, before the wire.
    assert_eq!(
        ring.block_on(dev.read(1 << 20, &mut buf))
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert!(!dev.is_broken());

    let ro = NbdDev::connect(&addr, "ro", ring.clone()).unwrap();
    assert!(ro.read_only());
    assert_eq!(
        ring.block_on(ro.write(0, &buf, true)).unwrap_err().errno(),
        libc::EPERM
    );
    assert_eq!(
        ring.block_on(ro.write_zeroes(0, 512)).unwrap_err().errno(),
        libc::EPERM
    );
    ring.block_on(ro.read(0, &mut buf)).unwrap();

    match NbdDev::connect(&addr, "nope", ring.clone()) {
        Err(ClientError::Refused { message, .. }) => assert!(message.contains("nope")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to a missing export"),
    }
    match NbdDev::connect(&addr, "broken", ring.clone()) {
        Err(ClientError::Refused { message, .. }) => {
            assert!(message.contains("ALU offline"), "{message}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to an export whose factory fails"),
    }

    // Shutdown closes live connections: the client sees EIO and is broken.
    server.shutdown();
    assert!(!sock.exists(), "socket path not removed");
    let e = ring.block_on(dev.read(0, &mut buf)).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(dev.is_broken());
    assert_eq!(
        ring.block_on(dev.read(0, &mut buf)).unwrap_err().errno(),
        libc::EIO
    );
}
