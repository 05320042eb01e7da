//! Peer authentication with the cluster secret: authenticated clients list,
//! read and write; clients without the secret or with a wrong one are
//! refused over TCP; a server that cannot prove the secret is refused by the
//! client; libnbd's tools are refused over TCP but work as root over the Unix
//! socket; garbage in the authentication options closes only that
//! connection.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;
use tierblk_fabric::proto::{self, AuthProof};
use tierblk_fabric::{
    auth, list_exports, list_exports_with, ClientError, NbdAddr, NbdDev, NbdServer, Secret,
    ServerConfig,
};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{AlignedBuf, BlockDev};

const SIZE: usize = 2 << 20;
const KEY: &str = "the cluster secret of these tests";

fn secret() -> Secret {
    Secret::new(KEY).unwrap()
}

fn wrong_secret() -> Secret {
    Secret::new("not the cluster secret at all!!").unwrap()
}

fn tcp_any() -> NbdAddr {
    NbdAddr::Tcp("127.0.0.1:0".parse::<SocketAddr>().unwrap())
}

/// A server with the test secret serving one partition "disk" over a Unix
/// socket (first address) and TCP (second).
fn secure_server(dir: &TempDir, trust_unix_root: bool) -> NbdServer {
    let img = dir.path("disk.img");
    make_image(&img, SIZE, 5);
    let config = ServerConfig {
        secret: Some(secret()),
        trust_unix_root,
        ..ServerConfig::default()
    };
    NbdServer::start_with(
        &[NbdAddr::Unix(dir.path("nbd.sock")), tcp_any()],
        vec![
            partition_export("disk", &img, SIZE as u64),
            partition_export("other", &img, SIZE as u64).read_only(true),
        ],
        config,
    )
    .unwrap()
}

fn expect_policy(r: Result<impl Sized, ClientError>, what: &str) {
    match r {
        Err(ClientError::Refused { reply, message, .. }) => {
            assert_eq!(reply, proto::REP_ERR_POLICY, "{what}: {message}");
            assert!(
                message.contains("authentication required"),
                "{what}: {message}"
            );
        }
        Err(e) => panic!("{what}: unexpected error {e}"),
        Ok(_) => panic!("{what}: not refused"),
    }
}

fn expect_auth_error(r: Result<impl Sized, ClientError>, what: &str, needle: &str) {
    match r {
        Err(ClientError::Auth(m)) => assert!(m.contains(needle), "{what}: {m}"),
        Err(e) => panic!("{what}: unexpected error {e}"),
        Ok(_) => panic!("{what}: not refused"),
    }
}

/// An authenticated client lists the exports and reads and writes over TCP
/// and over the Unix socket (root not trusted there, so it authenticates
/// too); the config's `Debug` does not show the secret.
#[test]
fn authenticated_client_lists_reads_and_writes() {
    let dir = TempDir::new("auth-ok");
    let server = secure_server(&dir, false);
    let s = secret();
    for addr in server.addrs() {
        assert_eq!(
            list_exports_with(addr, Some(&s)).unwrap(),
            vec!["disk", "other"],
            "{addr}"
        );
        let ring = LocalRing::new(16).unwrap();
        let dev = NbdDev::connect_with(addr, "disk", ring.clone(), Some(&s)).unwrap();
        assert_eq!(dev.size(), SIZE as u64);
        let data = AlignedBuf::from_slice(&Rng::new(8).bytes(64 * 1024));
        ring.block_on(dev.write(4096, &data, true)).unwrap();
        let mut back = AlignedBuf::new(64 * 1024);
        ring.block_on(dev.read(4096, &mut back)).unwrap();
        assert!(back[..] == data[..], "{addr}: read back differs");
        ring.block_on(dev.disconnect());
    }
    let cfg = ServerConfig {
        secret: Some(secret()),
        ..ServerConfig::default()
    };
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("cluster secret of"), "{dbg}");
}

/// Without the secret or with a wrong one, LIST, INFO, GO and EXPORT_NAME are
/// refused over TCP (and over Unix when root is not trusted); as root over
/// Unix with the default trust, a plain client works.
#[test]
fn clients_without_the_secret_are_refused() {
    let dir = TempDir::new("auth-refused");
    let server = secure_server(&dir, false);
    let ring = LocalRing::new(16).unwrap();
    for addr in server.addrs() {
        expect_policy(list_exports(addr), "LIST without secret");
        expect_policy(
            NbdDev::connect(addr, "disk", ring.clone()),
            "GO without secret",
        );
        let bad = wrong_secret();
        expect_auth_error(
            list_exports_with(addr, Some(&bad)),
            "LIST with a wrong secret",
            "wrong cluster secret",
        );
        expect_auth_error(
            NbdDev::connect_with(addr, "disk", ring.clone(), Some(&bad)),
            "GO with a wrong secret",
            "wrong cluster secret",
        );
    }
    // Raw sessions over TCP: INFO refused with POLICY, ABORT acknowledged;
    // EXPORT_NAME closes without a reply; a wrong proof leaves LIST refused.
    let tcp = tcp_port(&server);
    let mut info = flags();
    info.extend(opt(
        proto::OPT_INFO,
        &proto::encode_info_request("disk", &[]),
    ));
    info.extend(opt(proto::OPT_ABORT, &[]));
    let out = tcp_session(tcp, &info, false);
    assert_eq!(
        reply_types(&out),
        vec![
            (proto::OPT_INFO, proto::REP_ERR_POLICY),
            (proto::OPT_ABORT, proto::REP_ACK)
        ]
    );
    let mut en = flags();
    en.extend(opt(proto::OPT_EXPORT_NAME, b"disk"));
    let out = tcp_session(tcp, &en, true);
    assert!(out.is_empty(), "EXPORT_NAME answered: {out:02x?}");

    let out = wrong_proof_then_list(tcp);
    assert_eq!(
        reply_types(&out),
        vec![
            (proto::OPT_TIERBLK_AUTH_CHALLENGE, proto::REP_TIERBLK_AUTH),
            (proto::OPT_TIERBLK_AUTH_PROOF, proto::REP_ERR_POLICY),
            (proto::OPT_LIST, proto::REP_ERR_POLICY),
            (proto::OPT_ABORT, proto::REP_ACK),
        ]
    );
    drop(server);

    // Default trust: root on the Unix socket needs no secret; TCP still does.
    let dir = TempDir::new("auth-root");
    let server = secure_server(&dir, true);
    let (unix, tcp) = (&server.addrs()[0], &server.addrs()[1]);
    let root = unsafe_geteuid() == 0;
    let listed = list_exports(unix);
    assert_eq!(
        listed.is_ok(),
        root,
        "Unix LIST as euid {}",
        unsafe_geteuid()
    );
    if root {
        let dev = NbdDev::connect(unix, "disk", ring.clone()).unwrap();
        let mut b = AlignedBuf::new(4096);
        ring.block_on(dev.read(0, &mut b)).unwrap();
        // An authenticating client works there too.
        NbdDev::connect_with(unix, "disk", ring.clone(), Some(&secret())).unwrap();
    }
    expect_policy(list_exports(tcp), "TCP LIST without secret");
}

/// A client with a secret refuses a server that cannot prove it holds it: a
/// fake server answering a random proof, one reflecting the client's own
/// MAC, one with another secret; and a server without any secret (our
/// options unsupported).
#[test]
fn client_refuses_a_server_with_a_wrong_proof() {
    let ring = LocalRing::new(16).unwrap();
    let s = secret();
    for mode in [Fake::Random, Fake::Reflect, Fake::OtherSecret] {
        let (addr, t) = fake_server(mode);
        expect_auth_error(
            NbdDev::connect_with(&addr, "disk", ring.clone(), Some(&s)),
            &format!("{mode:?}"),
            "server's proof is wrong",
        );
        t.join().unwrap();
    }
    let (addr, t) = fake_server(Fake::Random);
    expect_auth_error(
        list_exports_with(&addr, Some(&s)),
        "list from a fake server",
        "server's proof is wrong",
    );
    t.join().unwrap();

    // A server with no secret does not know our options.
    let dir = TempDir::new("auth-plain");
    let img = dir.path("disk.img");
    make_image(&img, SIZE, 1);
    let plain = NbdServer::start(
        &[tcp_any()],
        vec![partition_export("disk", &img, SIZE as u64)],
    )
    .unwrap();
    let addr = &plain.addrs()[0];
    expect_auth_error(
        NbdDev::connect_with(addr, "disk", ring.clone(), Some(&s)),
        "server without secret",
        "does not support",
    );
    // And a plain client still works there, as before.
    NbdDev::connect(addr, "disk", ring.clone()).unwrap();
    assert_eq!(list_exports_with(addr, None).unwrap(), vec!["disk"]);
}

/// libnbd's `nbdinfo` cannot list or query a secret-protected server over
/// TCP; over the Unix socket, run as root, it works (and fails when root is
/// not trusted).
#[test]
fn nbdinfo_refused_over_tcp_works_as_root_over_unix() {
    require_tool("nbdinfo", "libnbd-bin");
    let dir = TempDir::new("auth-nbdinfo");
    let server = secure_server(&dir, true);
    let (unix, tcp) = (&server.addrs()[0], &server.addrs()[1]);
    // libnbd reports our NBD_REP_ERR_POLICY as "server replied with error to
    // list request" and "server policy prevents NBD_OPT_GO".
    for (args, why) in [
        (["--list".to_string(), tcp.uri("")], "list request"),
        (["--size".to_string(), tcp.uri("disk")], "policy"),
    ] {
        let out = Command::new("nbdinfo").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "nbdinfo {args:?} succeeded over TCP: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains(why), "nbdinfo {args:?}: {err}");
    }
    let root = unsafe_geteuid() == 0;
    let out = Command::new("nbdinfo")
        .arg("--list")
        .arg(unix.uri(""))
        .output()
        .unwrap();
    assert_eq!(
        out.status.success(),
        root,
        "nbdinfo --list over Unix as euid {}: {}{}",
        unsafe_geteuid(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if root {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("disk") && text.contains("other"), "{text}");
        let size = run(Command::new("nbdinfo").arg("--size").arg(unix.uri("disk")));
        assert_eq!(size.trim(), SIZE.to_string());
    }
    drop(server);

    let dir = TempDir::new("auth-nbdinfo-untrusted");
    let server = secure_server(&dir, false);
    let out = Command::new("nbdinfo")
        .arg("--list")
        .arg(server.addrs()[0].uri(""))
        .output()
        .unwrap();
    assert!(!out.status.success(), "nbdinfo listed an untrusting server");
}

/// Malformed, unsolicited and repeated wrong authentication options: the
/// server answers them with errors and closes that connection after
/// [`tierblk_fabric::server::MAX_AUTH_FAILURES`]; it keeps serving an
/// authenticated client, and every garbage connection ends.
#[test]
fn garbage_in_auth_options_closes_only_that_connection() {
    let dir = TempDir::new("auth-garbage");
    let server = secure_server(&dir, false);
    let tcp = tcp_port(&server);
    let s = secret();
    let ring = LocalRing::new(16).unwrap();
    let good = NbdDev::connect_with(&server.addrs()[1], "disk", ring.clone(), Some(&s)).unwrap();

    let challenge = opt(proto::OPT_TIERBLK_AUTH_CHALLENGE, &[]);
    let proof_junk = opt(
        proto::OPT_TIERBLK_AUTH_PROOF,
        &[0xee; proto::AUTH_PROOF_LEN],
    );
    let three = |one: &[u8]| [one, one, one].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("proof without challenge x3", three(&proof_junk)),
        (
            "challenge with payload x3",
            three(&opt(proto::OPT_TIERBLK_AUTH_CHALLENGE, &[1, 2, 3])),
        ),
        (
            "short proof x3",
            three(&opt(proto::OPT_TIERBLK_AUTH_PROOF, &[0; 10])),
        ),
        (
            "long proof x3",
            three(&opt(proto::OPT_TIERBLK_AUTH_PROOF, &[0; 65])),
        ),
        (
            "wrong proof x3",
            three(&[&challenge[..], &proof_junk[..]].concat()),
        ),
    ];
    for (what, body) in &cases {
        let mut bytes = flags();
        bytes.extend_from_slice(body);
        // The server closes by itself after the third failure.
        let out = tcp_session(tcp, &bytes, true);
        let types = reply_types(&out);
        let errors: Vec<u32> = types
            .iter()
            .map(|t| t.1)
            .filter(|r| r & proto::REP_FLAG_ERROR != 0)
            .collect();
        assert_eq!(errors.len(), 3, "{what}: {types:x?}");
    }
    // Truncated and mutated sessions: the connection ends either way.
    let mut rng = Rng::new(11);
    let mut valid = flags();
    valid.extend(&challenge);
    valid.extend(&proof_junk);
    valid.extend(opt(proto::OPT_LIST, &[]));
    for i in 0..150 {
        let mut b = valid.clone();
        match i % 3 {
            0 => b.truncate(4 + rng.below(b.len() as u64 - 4) as usize),
            1 => {
                let p = 4 + rng.below(b.len() as u64 - 4) as usize;
                b[p] ^= 1 << rng.below(8);
            }
            _ => {
                let p = 4 + rng.below(b.len() as u64 - 4) as usize;
                let n = 1 + rng.below(40) as usize;
                let junk = rng.bytes(n);
                b.splice(p..p, junk);
            }
        }
        tcp_session(tcp, &b, false);
    }
    // The authenticated connection is untouched; a new one works.
    let mut buf = AlignedBuf::new(4096);
    ring.block_on(good.read(0, &mut buf)).unwrap();
    assert!(!good.is_broken());
    assert_eq!(
        list_exports_with(&server.addrs()[1], Some(&s)).unwrap(),
        vec!["disk", "other"]
    );
    ring.block_on(good.disconnect());
    wait_until(10, "garbage connections to close", || {
        server.live_connections() == 0
    });
}

// ------------------------------------------------------------------ helpers

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() }
}

fn tcp_port(server: &NbdServer) -> SocketAddr {
    match &server.addrs()[1] {
        NbdAddr::Tcp(a) => *a,
        other => panic!("not TCP: {other}"),
    }
}

fn flags() -> Vec<u8> {
    proto::encode_client_flags(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_vec()
}

fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    proto::encode_option(option, data, &mut v);
    v
}

/// Connect over TCP, read the greeting, send `bytes`; unless
/// `server_closes`, close our sending side. Read until EOF (the server must
/// close); returns what it sent after the greeting.
fn tcp_session(addr: SocketAddr, bytes: &[u8], server_closes: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g).unwrap();
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

/// `(option, reply type)` of every option reply in `out`.
fn reply_types(mut out: &[u8]) -> Vec<(u32, u32)> {
    let mut v = Vec::new();
    while let Ok(h) = proto::decode_option_reply_header(out) {
        v.push((h.option, h.reply));
        let end = (proto::OPTION_REPLY_HEADER_LEN + h.len as usize).min(out.len());
        out = &out[end..];
    }
    v
}

/// Challenge, a proof made with the wrong secret over the real nonce, then
/// LIST and ABORT.
fn wrong_proof_then_list(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    s.write_all(&flags()).unwrap();
    s.write_all(&opt(proto::OPT_TIERBLK_AUTH_CHALLENGE, &[]))
        .unwrap();
    let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let hdr = proto::decode_option_reply_header(&h).unwrap();
    let mut nonce = vec![0u8; hdr.len as usize];
    s.read_exact(&mut nonce).unwrap();
    let sn = proto::decode_auth_reply(&nonce).unwrap();
    let cn = auth::nonce().unwrap();
    let p = AuthProof {
        client_nonce: cn,
        mac: wrong_secret().client_proof(&sn, &cn),
    };
    s.write_all(&opt(
        proto::OPT_TIERBLK_AUTH_PROOF,
        &proto::encode_auth_proof(&p),
    ))
    .unwrap();
    s.write_all(&opt(proto::OPT_LIST, &[])).unwrap();
    s.write_all(&opt(proto::OPT_ABORT, &[])).unwrap();
    let mut out = h.to_vec();
    out.extend(&nonce);
    s.read_to_end(&mut out).unwrap();
    out
}

/// How a fake server answers the client's proof.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// Random bytes.
    Random,
    /// The client's own MAC sent back.
    Reflect,
    /// A correct proof, but under another secret.
    OtherSecret,
}

/// A one-connection fake server on TCP that runs the challenge-response
/// without the right secret, then waits for the client to close.
fn fake_server(mode: Fake) -> (NbdAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = NbdAddr::Tcp(l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&proto::encode_greeting(
            proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES,
        ))
        .unwrap();
        let mut cf = [0u8; 4];
        s.read_exact(&mut cf).unwrap();
        let read_opt = |s: &mut TcpStream| {
            let mut h = [0u8; proto::OPTION_HEADER_LEN];
            s.read_exact(&mut h).unwrap();
            let h = proto::decode_option_header(&h).unwrap();
            let mut d = vec![0u8; h.len as usize];
            s.read_exact(&mut d).unwrap();
            (h.option, d)
        };
        let (o, _) = read_opt(&mut s);
        assert_eq!(o, proto::OPT_TIERBLK_AUTH_CHALLENGE);
        let sn = auth::nonce().unwrap();
        let mut out = Vec::new();
        proto::encode_option_reply(o, proto::REP_TIERBLK_AUTH, &sn, &mut out);
        s.write_all(&out).unwrap();
        let (o, d) = read_opt(&mut s);
        assert_eq!(o, proto::OPT_TIERBLK_AUTH_PROOF);
        let p = proto::decode_auth_proof(&d).unwrap();
        let answer = match mode {
            Fake::Random => auth::nonce().unwrap(),
            Fake::Reflect => p.mac,
            Fake::OtherSecret => wrong_secret().server_proof(&sn, &p.client_nonce),
        };
        let mut out = Vec::new();
        proto::encode_option_reply(o, proto::REP_TIERBLK_AUTH, &answer, &mut out);
        s.write_all(&out).unwrap();
        // The client must hang up without sending any further option.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "client went on after a wrong proof: {rest:02x?}"
        );
    });
    (addr, t)
}
