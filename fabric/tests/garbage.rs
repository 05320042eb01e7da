//! Peers sending garbage or truncated frames at every stage of a session:
//! that connection closes, the server survives and keeps serving a
//! well-behaved client.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use tierblk_fabric::proto;
use tierblk_fabric::{NbdAddr, NbdDev, NbdServer};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::BlockDev;

const SIZE: usize = 4 << 20;

fn flags() -> Vec<u8> {
    proto::encode_client_flags(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_vec()
}

fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    proto::encode_option(option, data, &mut v);
    v
}

/// Client flags + NBD_OPT_GO "disk": a session in transmission.
fn in_transmission() -> Vec<u8> {
    let mut v = flags();
    v.extend(opt(
        proto::OPT_GO,
        &proto::encode_info_request("disk", &[proto::INFO_BLOCK_SIZE]),
    ));
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Connect, read the greeting, send `bytes`; unless `server_closes`, close
/// our sending side. Then read until EOF: the server must close the
/// connection. Returns everything the server sent after the greeting.
fn session(sock: &Path, bytes: &[u8], server_closes: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    assert_eq!(
        proto::decode_greeting(&g),
        Ok(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES)
    );
    // The server may close mid-way: ignore EPIPE / ECONNRESET.
    let _ = s.write_all(bytes);
    if !server_closes {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server did not close the connection: {e} (sent {bytes:02x?})"),
    }
    out
}

/// Option reply types found in `out` (a sequence of option replies).
fn option_replies(mut out: &[u8]) -> Vec<u32> {
    let mut v = Vec::new();
    while let Ok(h) = proto::decode_option_reply_header(out) {
        v.push(h.reply);
        out = &out[(proto::OPTION_REPLY_HEADER_LEN + h.len as usize).min(out.len())..];
    }
    v
}

/// Check the server still serves a well-behaved client correctly.
fn healthy(sock: &Path, seed: u64) {
    let ring = LocalRing::new(32).unwrap();
    let dev = NbdDev::connect(&NbdAddr::Unix(sock.to_path_buf()), "disk", ring.clone()).unwrap();
    let mut rng = Rng::new(seed);
    let data = rng.bytes(8192);
    ring.block_on(dev.write(4096, &data, true)).unwrap();
    let mut back = vec![0u8; 8192];
    ring.block_on(dev.read(4096, &mut back)).unwrap();
    assert!(back == data, "well-behaved client reads wrong data");
    ring.block_on(dev.disconnect());
}

fn start(dir: &TempDir) -> (NbdServer, std::path::PathBuf) {
    let img = dir.path("disk.img");
    make_image(&img, SIZE, 1);
    let sock = dir.path("nbd.sock");
    let server = NbdServer::start(
        &[NbdAddr::Unix(sock.clone())],
        vec![partition_export("disk", &img, SIZE as u64)],
    )
    .unwrap();
    (server, sock)
}

/// Hand-written malformed and truncated frames at each stage: client flags,
/// option headers and payloads, export selection, request headers, write
/// payloads; requests the server must refuse without closing. Every session
/// ends with the connection closed; a good client works after each.
#[test]
fn malformed_frames_at_every_stage_close_only_that_connection() {
    let dir = TempDir::new("garbage");
    let (server, sock) = start(&dir);
    let t = in_transmission();
    let bad_magic_opt = {
        let mut v = opt(proto::OPT_LIST, &[]);
        v[0] ^= 0xff;
        v
    };
    let huge_opt = {
        let mut v = opt(proto::OPT_GO, &[]);
        v[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        v
    };
    let mut bad_req = req(proto::CMD_READ, 0, 1, 0, 512);
    bad_req[0] = 0;
    let many_lists: Vec<u8> = cat(&[
        &flags(),
        &(0..300)
            .flat_map(|_| opt(proto::OPT_LIST, &[]))
            .collect::<Vec<_>>(),
    ]);
    // (name, bytes sent after the greeting, whether the server closes by
    // itself)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("nothing", vec![], false),
        ("truncated client flags", vec![0, 0], false),
        ("unknown client flags", vec![0xff; 4], true),
        ("bad option magic", cat(&[&flags(), &bad_magic_opt]), true),
        (
            "truncated option header",
            cat(&[&flags(), &opt(proto::OPT_LIST, &[])[..10]]),
            false,
        ),
        (
            "option length over limit",
            cat(&[&flags(), &huge_opt]),
            true,
        ),
        (
            "truncated option payload",
            cat(&[&flags(), &opt(proto::OPT_GO, &[0; 100])[..40]]),
            false,
        ),
        (
            "EXPORT_NAME of unknown export",
            cat(&[&flags(), &opt(proto::OPT_EXPORT_NAME, b"nope")]),
            true,
        ),
        (
            "EXPORT_NAME with NUL",
            cat(&[&flags(), &opt(proto::OPT_EXPORT_NAME, b"di\0sk")]),
            true,
        ),
        ("too many options", many_lists, true),
        ("bad request magic", cat(&[&t, &bad_req]), true),
        (
            "truncated request header",
            cat(&[&t, &req(proto::CMD_READ, 0, 1, 0, 512)[..20]]),
            false,
        ),
        (
            "truncated write payload",
            cat(&[&t, &req(proto::CMD_WRITE, 0, 1, 0, 4096), &[7; 100]]),
            false,
        ),
        (
            "write payload over limit",
            cat(&[
                &t,
                &req(proto::CMD_WRITE, 0, 1, 0, proto::MAX_REQUEST_LEN + 1),
            ]),
            true,
        ),
        (
            "structured reply magic",
            cat(&[&t, &[0x66, 0x8e, 0x33, 0xef], &[0; 24]]),
            true,
        ),
        (
            "random bytes in transmission",
            cat(&[&t, &Rng::new(3).bytes(200)]),
            true,
        ),
        (
            "random bytes in negotiation",
            cat(&[&flags(), &Rng::new(4).bytes(200)]),
            true,
        ),
    ];
    for (i, (name, bytes, closes)) in cases.iter().enumerate() {
        let out = session(&sock, bytes, *closes);
        if *name == "too many options" {
            assert_eq!(option_replies(&out).len(), 512, "{name}: LIST replies");
        }
        healthy(&sock, i as u64);
    }

    // Malformed options the server answers with an error and survives:
    // the session goes on to transmission afterwards.
    let mut go_bad = proto::encode_info_request("disk", &[1, 2]);
    go_bad.pop();
    let bytes = cat(&[
        &flags(),
        &opt(proto::OPT_GO, &go_bad),
        &opt(proto::OPT_LIST, b"x"),
        &opt(proto::OPT_INFO, &proto::encode_info_request("zzz", &[])),
        &opt(proto::OPT_STRUCTURED_REPLY, &[]),
        &opt(proto::OPT_STARTTLS, &[]),
        &opt(proto::OPT_ABORT, &[]),
    ]);
    let out = session(&sock, &bytes, true);
    assert_eq!(
        option_replies(&out),
        vec![
            proto::REP_ERR_INVALID,
            proto::REP_ERR_INVALID,
            proto::REP_ERR_UNKNOWN,
            proto::REP_ERR_UNSUP,
            proto::REP_ERR_UNSUP,
            proto::REP_ACK
        ]
    );

    // Requests refused with an NBD error, connection kept: unknown command,
    // bad flags, out of range read and write (payload skipped), then a valid
    // read, then DISC.
    let go_reply_len = {
        let out = session(&sock, &cat(&[&t, &req(proto::CMD_DISC, 0, 0, 0, 0)]), true);
        out.len()
    };
    let bytes = cat(&[
        &t,
        &req(99, 0, 1, 0, 0),
        &req(proto::CMD_FLUSH, proto::CMD_FLAG_FUA, 2, 0, 0),
        &req(proto::CMD_READ, 0, 3, SIZE as u64, 512),
        &req(proto::CMD_WRITE, 0, 4, u64::MAX - 10, 512),
        &[9u8; 512],
        &req(proto::CMD_READ, 0, 5, 0, proto::MAX_REQUEST_LEN + 512),
        &req(proto::CMD_READ, 0, 6, 0, 512),
        &req(proto::CMD_DISC, 0, 0, 0, 0),
    ]);
    let out = session(&sock, &bytes, true);
    let mut replies = &out[go_reply_len..];
    let mut got = Vec::new();
    while replies.len() >= proto::REPLY_LEN {
        let r = proto::SimpleReply::decode(replies).unwrap();
        replies = &replies[proto::REPLY_LEN..];
        if r.cookie == 6 {
            assert_eq!(r.error, 0);
            replies = &replies[512..];
        }
        got.push((r.cookie, r.error));
    }
    assert!(replies.is_empty());
    // Replies may come in any order (the server pipelines requests).
    got.sort();
    assert_eq!(
        got,
        vec![
            (1, proto::NBD_EINVAL),
            (2, proto::NBD_EINVAL),
            (3, proto::NBD_EINVAL),
            (4, proto::NBD_ENOSPC),
            (5, proto::NBD_EOVERFLOW),
            (6, 0)
        ]
    );
    healthy(&sock, 1000);
    wait_until(10, "connections to close", || {
        server.live_connections() == 0
    });
    server.shutdown();
}

/// Hundreds of valid sessions with random mutations (flipped bytes,
/// truncation, inserted garbage): every connection ends, the server
/// never dies, and a good client is served correctly at the end.
#[test]
fn mutated_sessions_never_kill_the_server() {
    let dir = TempDir::new("mutate");
    let (server, sock) = start(&dir);
    let mut rng = Rng::new(0xfeed);
    let base = cat(&[
        &flags(),
        &opt(proto::OPT_LIST, &[]),
        &opt(
            proto::OPT_INFO,
            &proto::encode_info_request("disk", &[proto::INFO_NAME]),
        ),
        &opt(
            proto::OPT_GO,
            &proto::encode_info_request("disk", &[proto::INFO_BLOCK_SIZE]),
        ),
        &req(proto::CMD_WRITE, proto::CMD_FLAG_FUA, 1, 8192, 1024),
        &[0x5a; 1024],
        &req(proto::CMD_READ, 0, 2, 0, 4096),
        &req(proto::CMD_FLUSH, 0, 3, 0, 0),
        &req(proto::CMD_TRIM, 0, 4, 65536, 4096),
        &req(
            proto::CMD_WRITE_ZEROES,
            proto::CMD_FLAG_NO_HOLE,
            5,
            131072,
            4096,
        ),
        &req(proto::CMD_DISC, 0, 6, 0, 0),
    ]);
    // The unmutated session works.
    let out = session(&sock, &base, true);
    assert!(!out.is_empty());
    for i in 0..400 {
        let mut b = base.clone();
        match rng.below(4) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let p = rng.below(b.len() as u64) as usize;
                    b[p] = rng.next() as u8;
                }
            }
            1 => b.truncate(rng.below(b.len() as u64) as usize),
            2 => {
                let p = rng.below(b.len() as u64) as usize;
                let n = 1 + rng.below(64) as usize;
                let junk = rng.bytes(n);
                b.splice(p..p, junk);
            }
            _ => {
                // Corrupt a length field region specifically (bytes 8..16 of
                // some frame are often lengths).
                let p = rng.below(b.len() as u64) as usize;
                let end = (p + 4).min(b.len());
                for x in &mut b[p..end] {
                    *x = 0xff;
                }
            }
        }
        // Closing our side always ends the session, whatever the server is
        // waiting for.
        session(&sock, &b, false);
        if i % 100 == 0 {
            healthy(&sock, i);
        }
    }
    healthy(&sock, 7);
    wait_until(10, "connections to close", || {
        server.live_connections() == 0
    });

    // And the image is still usable for model-checked I/O.
    let ring = LocalRing::new(32).unwrap();
    let dev = NbdDev::connect(&NbdAddr::Unix(sock.clone()), "disk", ring.clone()).unwrap();
    let mut cur = vec![0u8; SIZE];
    ring.block_on(dev.read(0, &mut cur)).unwrap();
    let model = RefCell::new(Model::new(cur));
    random_io(&ring, &dev, &|| dev.in_flight(), &model, 4, 50, 3, true);
    verify_all(&ring, &dev, &model.borrow());
    server.shutdown();
}
