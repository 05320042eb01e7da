//! The server pipelines each connection: it reads requests while earlier
//! ones are in flight, runs them concurrently (bounded by
//! `ServerConfig::max_in_flight`) and replies as each completes, out of
//! order when a later request finishes first. Flushes wait for the writes
//! received before them; `DISC` and a client going away with requests in
//! flight let those requests complete; the server never hangs or dies.
//!
//! The export here is a partition over an image file behind [`Slow`], which
//! delays chosen requests on the connection's ring (an io_uring timeout) and
//! records how many ran at once and in which order they started and ended.

mod common;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use io_uring::{opcode, types};
use tierblk_fabric::proto::{self, SimpleReply};
use tierblk_fabric::{Export, NbdAddr, NbdDev, NbdServer, ServerConfig};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{open_alu, AlignedBuf, BlockDev, IoResult, Limits, Partition, Ring};

const SIZE: usize = 8 << 20;
/// Requests at offsets below this are delayed by `Slow` (unless a test
/// says otherwise).
const SLOW_BELOW: u64 = 1 << 20;

/// What `Slow` saw, shared with the test (test code: a `Mutex` is fine).
#[derive(Default)]
struct Stats {
    now: AtomicUsize,
    max: AtomicUsize,
    /// ("read"/"write"/"flush"/..., "start"/"end", offset), in order.
    log: Mutex<Vec<(&'static str, &'static str, u64)>>,
}

impl Stats {
    fn enter(&self, op: &'static str, offset: u64) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        self.log.lock().unwrap().push((op, "start", offset));
    }
    fn leave(&self, op: &'static str, offset: u64) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.log.lock().unwrap().push((op, "end", offset));
    }
    fn log(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.log.lock().unwrap().clone()
    }
}

/// A partition whose requests at offsets below `slow_below` (and flushes,
/// when `slow_flush`) first wait `delay` on the ring.
struct Slow {
    inner: Partition<LocalRing>,
    ring: LocalRing,
    slow_below: u64,
    delay: Duration,
    slow_flush: bool,
    stats: Arc<Stats>,
}

impl Slow {
    async fn pause(&self, slow: bool) {
        if !slow || self.delay.is_zero() {
            return;
        }
        let ts = types::Timespec::new()
            .sec(self.delay.as_secs())
            .nsec(self.delay.subsec_nanos());
        // `ts` lives until the timeout's CQE (-ETIME) arrives.
        let r = self
            .ring
            .submit(opcode::Timeout::new(&ts as *const types::Timespec).build())
            .await;
        assert_eq!(r, -libc::ETIME);
    }
}

impl BlockDev for Slow {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.stats.enter("read", offset);
        self.pause(offset < self.slow_below).await;
        let r = self.inner.read(offset, buf).await;
        self.stats.leave("read", offset);
        r
    }
    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.stats.enter("write", offset);
        self.pause(offset < self.slow_below).await;
        let r = self.inner.write(offset, buf, fua).await;
        self.stats.leave("write", offset);
        r
    }
    async fn flush(&self) -> IoResult<()> {
        self.stats.enter("flush", 0);
        self.pause(self.slow_flush).await;
        let r = self.inner.flush().await;
        self.stats.leave("flush", 0);
        r
    }
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.stats.enter("trim", offset);
        self.pause(offset < self.slow_below).await;
        let r = self.inner.discard(offset, len).await;
        self.stats.leave("trim", offset);
        r
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        self.stats.enter("zero", offset);
        self.pause(offset < self.slow_below).await;
        let r = self.inner.write_zeroes(offset, len).await;
        self.stats.leave("zero", offset);
        r
    }
}

struct Setup {
    _dir: TempDir,
    img: PathBuf,
    sock: PathBuf,
    data: Vec<u8>,
    stats: Arc<Stats>,
    server: NbdServer,
}

/// An image of [`SIZE`] random bytes served as "disk" through [`Slow`].
fn setup(tag: &str, delay: Duration, slow_flush: bool, config: ServerConfig) -> Setup {
    setup_below(tag, SLOW_BELOW, delay, slow_flush, config)
}

fn setup_below(
    tag: &str,
    slow_below: u64,
    delay: Duration,
    slow_flush: bool,
    config: ServerConfig,
) -> Setup {
    let dir = TempDir::new(tag);
    let img = dir.path("disk.img");
    let data = make_image(&img, SIZE, 77);
    let sock = dir.path("nbd.sock");
    let stats = Arc::new(Stats::default());
    let alu = open_alu(&img).unwrap();
    let st = stats.clone();
    let export = Export::new("disk", SIZE as u64, move |ring: &LocalRing| {
        Ok(Slow {
            inner: Partition::new(alu.clone(), 0, SIZE as u64, ring.clone()),
            ring: ring.clone(),
            slow_below,
            delay,
            slow_flush,
            stats: st.clone(),
        })
    });
    let server =
        NbdServer::start_with(&[NbdAddr::Unix(sock.clone())], vec![export], config).unwrap();
    Setup {
        _dir: dir,
        img,
        sock,
        data,
        stats,
        server,
    }
}

/// A raw session in transmission on "disk" (fixed newstyle, `GO`).
fn raw_session(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut g = [0u8; proto::GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    let mut hello =
        proto::encode_client_flags(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_vec();
    proto::encode_option(
        proto::OPT_GO,
        &proto::encode_info_request("disk", &[proto::INFO_BLOCK_SIZE]),
        &mut hello,
    );
    s.write_all(&hello).unwrap();
    loop {
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let h = proto::decode_option_reply_header(&h).unwrap();
        let mut body = vec![0u8; h.len as usize];
        s.read_exact(&mut body).unwrap();
        if h.reply == proto::REP_ACK {
            return s;
        }
        assert_eq!(h.reply, proto::REP_INFO, "GO refused");
    }
}

/// Read one reply; `read_len` gives the payload length of a read's cookie.
fn reply(s: &mut UnixStream, read_len: &HashMap<u64, usize>) -> (SimpleReply, Vec<u8>) {
    let mut h = [0u8; proto::REPLY_LEN];
    s.read_exact(&mut h).unwrap();
    let r = SimpleReply::decode(&h).unwrap();
    let mut data = Vec::new();
    if r.error == 0 {
        if let Some(&n) = read_len.get(&r.cookie) {
            data = vec![0u8; n];
            s.read_exact(&mut data).unwrap();
        }
    }
    (r, data)
}

fn assert_eof(s: &mut UnixStream) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("more data after the last reply"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed: {e}"),
    }
}

/// A slow read sent first and 31 fast ones behind it, all before reading
/// any reply: the fast ones are answered first (out of order), every reply
/// carries the right data, and the requests ran concurrently.
#[test]
fn replies_come_back_out_of_order_with_the_right_data() {
    let t = setup(
        "ooo",
        Duration::from_millis(300),
        false,
        ServerConfig::default(),
    );
    let mut s = raw_session(&t.sock);
    let mut out = req(proto::CMD_READ, 0, 1000, 4096, 4096);
    let mut lens = HashMap::from([(1000u64, 4096usize)]);
    let mut rng = Rng::new(5);
    let mut offsets = HashMap::from([(1000u64, 4096u64)]);
    for c in 1..32u64 {
        let len = 512 * (1 + rng.below(16)) as usize;
        let off = SLOW_BELOW + rng.below((SIZE as u64 - SLOW_BELOW - len as u64) / 512) * 512;
        out.extend(req(proto::CMD_READ, 0, c, off, len as u32));
        lens.insert(c, len);
        offsets.insert(c, off);
    }
    s.write_all(&out).unwrap();
    let mut order = Vec::new();
    for _ in 0..32 {
        let (r, data) = reply(&mut s, &lens);
        assert_eq!(r.error, 0, "cookie {}", r.cookie);
        let off = offsets[&r.cookie] as usize;
        assert!(
            data == t.data[off..off + lens[&r.cookie]],
            "cookie {}: wrong data",
            r.cookie
        );
        order.push(r.cookie);
    }
    assert_eq!(order.iter().collect::<HashSet<_>>().len(), 32, "{order:?}");
    assert_eq!(
        order.last(),
        Some(&1000),
        "the slow first request must be answered last: {order:?}"
    );
    assert!(
        t.stats.max.load(Ordering::SeqCst) >= 2,
        "requests never overlapped"
    );
    s.write_all(&req(proto::CMD_DISC, 0, 0, 0, 0)).unwrap();
    assert_eof(&mut s);
}

/// Requests sent at once run concurrently, but never more than
/// `max_in_flight` of them: the rest wait in the socket.
#[test]
fn concurrency_is_bounded_by_max_in_flight() {
    for (limit, sent) in [(4usize, 24u64), (64, 48)] {
        let t = setup(
            "bound",
            Duration::from_millis(50),
            false,
            ServerConfig {
                max_in_flight: limit,
                ..ServerConfig::default()
            },
        );
        let mut s = raw_session(&t.sock);
        let mut out = Vec::new();
        let mut lens = HashMap::new();
        for c in 0..sent {
            out.extend(req(proto::CMD_READ, 0, c, c * 4096, 4096));
            lens.insert(c, 4096);
        }
        s.write_all(&out).unwrap();
        let mut seen = HashSet::new();
        for _ in 0..sent {
            let (r, data) = reply(&mut s, &lens);
            assert_eq!(r.error, 0);
            let off = r.cookie as usize * 4096;
            assert!(data == t.data[off..off + 4096]);
            assert!(seen.insert(r.cookie));
        }
        let max = t.stats.max.load(Ordering::SeqCst);
        assert!(max <= limit, "{max} in flight, limit {limit}");
        let expect = limit.min(sent as usize);
        assert!(
            max >= expect / 2,
            "only {max} requests ran at once (limit {limit}, {sent} sent)"
        );
        drop(s);
    }
}

/// Our client (which pipelines) drives many writes at once, small ones and
/// ones larger than the slot buffer (which share the connection's large
/// buffer), then reads everything back concurrently, in small and in large
/// pieces: the data is right and the server ran many requests at once.
#[test]
fn many_in_flight_writes_then_reads_verify_data() {
    let t = setup_below(
        "wr",
        u64::MAX,
        Duration::from_millis(5),
        false,
        ServerConfig {
            slot_buffer: 16 * 1024,
            ..ServerConfig::default()
        },
    );
    let ring = LocalRing::new(256).unwrap();
    let dev = NbdDev::connect(&NbdAddr::Unix(t.sock.clone()), "disk", ring.clone()).unwrap();
    let model = RefCell::new(t.data.clone());
    // 64 tasks, each owning a 128 KiB region: 4 writes of 4 KiB, then 4 of
    // 4 or 64 KiB. (A request larger than the slot buffer waits for the
    // connection's large buffer, and the requests behind it wait in the
    // socket meanwhile: the small ones first show the concurrency.)
    let region = (SIZE / 64) as u64;
    let futs: Vec<_> = (0..64u64)
        .map(|task| {
            let dev = &dev;
            let model = &model;
            async move {
                let mut rng = Rng::new(task + 1);
                for i in 0..8 {
                    let len = if i >= 4 && (task + i) % 2 == 0 {
                        65536
                    } else {
                        4096
                    };
                    let off = task * region + rng.below((region - len) / 512) * 512;
                    let buf = AlignedBuf::from_slice(&rng.bytes(len as usize));
                    dev.write(off, &buf, i % 4 == 1).await.unwrap();
                    model.borrow_mut()[off as usize..(off + len) as usize].copy_from_slice(&buf);
                }
            }
        })
        .collect();
    ring.block_on(tierblk_stack::uring::join_all(futs));
    let writes_at_once = t.stats.max.swap(0, Ordering::SeqCst);
    assert!(
        writes_at_once >= 8,
        "only {writes_at_once} writes ran at once"
    );
    ring.block_on(dev.flush()).unwrap();
    for piece in [8192usize, 65536] {
        let mut back: Vec<AlignedBuf> = (0..SIZE / piece).map(|_| AlignedBuf::new(piece)).collect();
        let futs: Vec<_> = back
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                let dev = &dev;
                async move { dev.read((i * piece) as u64, b).await.unwrap() }
            })
            .collect();
        ring.block_on(tierblk_stack::uring::join_all(futs));
        let m = model.borrow();
        for (i, b) in back.iter().enumerate() {
            assert!(
                b[..] == m[i * piece..(i + 1) * piece],
                "{piece}-byte piece {i} differs"
            );
        }
    }
    // The small reads ran concurrently (the large ones took turns).
    let reads_at_once = t.stats.max.load(Ordering::SeqCst);
    assert!(reads_at_once >= 8, "only {reads_at_once} reads ran at once");
    ring.block_on(dev.disconnect());
    drop(dev);
    wait_until(10, "connection to close", || {
        t.server.live_connections() == 0
    });
    let on_disk = std::fs::read(&t.img).unwrap();
    assert!(
        on_disk == *model.borrow(),
        "image file differs from the model"
    );
}

/// A flush completes only after the writes received before it completed
/// (even though they are slower), and before its reply none of them is
/// still running; a later write does not hold it back.
#[test]
fn flush_waits_for_the_writes_received_before_it() {
    let t = setup(
        "flush",
        Duration::from_millis(200),
        false,
        ServerConfig::default(),
    );
    let mut s = raw_session(&t.sock);
    let mut out = Vec::new();
    // Slow writes (below SLOW_BELOW), then a flush, then a fast write and
    // a fast read (above).
    for c in 0..4u64 {
        out.extend(req(proto::CMD_WRITE, 0, c, c * 8192, 4096));
        out.extend(vec![c as u8 + 1; 4096]);
    }
    out.extend(req(proto::CMD_FLUSH, 0, 10, 0, 0));
    out.extend(req(proto::CMD_WRITE, 0, 11, SLOW_BELOW + 4096, 4096));
    out.extend(vec![0xee; 4096]);
    out.extend(req(proto::CMD_READ, 0, 12, SLOW_BELOW, 512));
    s.write_all(&out).unwrap();
    let lens = HashMap::from([(12u64, 512usize)]);
    let mut order = Vec::new();
    for _ in 0..7 {
        let (r, _) = reply(&mut s, &lens);
        assert_eq!(r.error, 0, "cookie {}", r.cookie);
        order.push(r.cookie);
    }
    let pos = |c: u64| order.iter().position(|&x| x == c).unwrap();
    for c in 0..4 {
        assert!(
            pos(c) < pos(10),
            "flush answered before write {c}: {order:?}"
        );
    }
    // The fast write and read behind the flush did not wait for it.
    assert!(pos(11) < pos(10) && pos(12) < pos(10), "{order:?}");
    let log = t.stats.log();
    let at = |e: (&'static str, &'static str, u64)| log.iter().position(|&x| x == e).unwrap();
    let flush_start = at(("flush", "start", 0));
    for c in 0..4u64 {
        assert!(
            at(("write", "end", c * 8192)) < flush_start,
            "flush started before write {c} ended: {log:?}"
        );
    }
    s.write_all(&req(proto::CMD_DISC, 0, 0, 0, 0)).unwrap();
    assert_eof(&mut s);
    let img = std::fs::read(&t.img).unwrap();
    for c in 0..4usize {
        assert!(img[c * 8192..c * 8192 + 4096]
            .iter()
            .all(|&b| b == c as u8 + 1));
    }
}

/// `DISC` right behind slow requests: every one of them completes and is
/// answered before the server closes the connection.
#[test]
fn disconnect_waits_for_requests_in_flight() {
    let t = setup(
        "disc",
        Duration::from_millis(150),
        true,
        ServerConfig::default(),
    );
    let mut s = raw_session(&t.sock);
    let mut out = Vec::new();
    let mut lens = HashMap::new();
    for c in 0..8u64 {
        out.extend(req(
            proto::CMD_WRITE,
            proto::CMD_FLAG_FUA,
            c,
            c * 65536,
            65536,
        ));
        out.extend(vec![0xa0 + c as u8; 65536]);
    }
    for c in 8..12u64 {
        out.extend(req(
            proto::CMD_READ,
            0,
            c,
            (c - 8) * 4096 + 512 * 1024,
            4096,
        ));
        lens.insert(c, 4096);
    }
    out.extend(req(proto::CMD_FLUSH, 0, 12, 0, 0));
    out.extend(req(proto::CMD_DISC, 0, 13, 0, 0));
    s.write_all(&out).unwrap();
    let mut got = HashSet::new();
    for _ in 0..13 {
        let (r, data) = reply(&mut s, &lens);
        assert_eq!(r.error, 0, "cookie {}", r.cookie);
        if r.cookie >= 8 && r.cookie < 12 {
            let off = (r.cookie as usize - 8) * 4096 + 512 * 1024;
            assert!(data == t.data[off..off + 4096]);
        }
        assert!(got.insert(r.cookie));
    }
    assert_eof(&mut s);
    assert_eq!(t.stats.now.load(Ordering::SeqCst), 0);
    let img = std::fs::read(&t.img).unwrap();
    for c in 0..8usize {
        let piece = &img[c * 65536..(c + 1) * 65536];
        assert!(piece.iter().all(|&b| b == 0xa0 + c as u8), "write {c} lost");
    }
}

/// A client that sends requests and goes away (closing, or only
/// half-closing, its socket) while they are in flight: the requests still
/// complete on the server, the half-closed client gets every reply, the
/// connection ends, and the server goes on serving others.
#[test]
fn client_leaving_with_requests_in_flight() {
    let t = setup(
        "leave",
        Duration::from_millis(100),
        false,
        ServerConfig::default(),
    );
    let batch = |base: u64| {
        let mut out = Vec::new();
        for c in 0..16u64 {
            out.extend(req(proto::CMD_WRITE, 0, base + c, c * 4096, 4096));
            out.extend(vec![0x11; 4096]);
            out.extend(req(proto::CMD_READ, 0, base + 100 + c, c * 65536, 65536));
        }
        out
    };
    // Closed at once.
    for _ in 0..3 {
        let mut s = raw_session(&t.sock);
        s.write_all(&batch(0)).unwrap();
        drop(s);
    }
    // Half-closed: every reply arrives, then the server closes.
    let mut s = raw_session(&t.sock);
    s.write_all(&batch(1000)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let lens: HashMap<u64, usize> = (0..16).map(|c| (1100 + c, 65536)).collect();
    let mut got = HashSet::new();
    for _ in 0..32 {
        let (r, _) = reply(&mut s, &lens);
        assert_eq!(r.error, 0);
        assert!(got.insert(r.cookie));
    }
    assert_eof(&mut s);
    wait_until(10, "connections to close", || {
        t.server.live_connections() == 0
    });
    assert_eq!(
        t.stats.now.load(Ordering::SeqCst),
        0,
        "a request never ended"
    );
    // Still serving.
    let ring = LocalRing::new(16).unwrap();
    let dev = NbdDev::connect(&NbdAddr::Unix(t.sock.clone()), "disk", ring.clone()).unwrap();
    let mut b = AlignedBuf::new(4096);
    ring.block_on(dev.read(SLOW_BELOW, &mut b)).unwrap();
    let off = SLOW_BELOW as usize;
    assert!(b[..] == t.data[off..off + 4096]);
}

/// A client that sends far more read data than the socket buffers hold and
/// never reads a reply: the writer is stuck, the reader stops at the
/// in-flight bound; shutting the server down still ends the connection
/// promptly (its requests complete first).
#[test]
fn shutdown_ends_a_connection_whose_client_reads_nothing() {
    let t = setup(
        "stuck",
        Duration::ZERO,
        false,
        ServerConfig {
            max_in_flight: 16,
            ..ServerConfig::default()
        },
    );
    let s = raw_session(&t.sock);
    let mut out = Vec::new();
    for c in 0..200u64 {
        out.extend(req(proto::CMD_READ, 0, c, (c % 8) << 20, 1 << 20));
    }
    // The server stops reading at some point: write from another thread.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&out);
    });
    wait_until(10, "the server to fill its slots", || {
        t.stats.log().len() >= 2 * 16
    });
    std::thread::sleep(Duration::from_millis(100));
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let server = t.server;
    let stopper = std::thread::spawn(move || {
        server.shutdown();
        d.store(1, Ordering::SeqCst);
    });
    wait_until(10, "the server to shut down", || {
        done.load(Ordering::SeqCst) == 1
    });
    stopper.join().unwrap();
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
    assert_eq!(t.stats.now.load(Ordering::SeqCst), 0);
}
