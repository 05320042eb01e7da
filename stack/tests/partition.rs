//! Partition object over temporary image files, driven by LocalRing.

mod common;

use std::path::Path;

use common::{Rng, TempImage};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{open_alu, AlignedBuf, BlockDev, Partition};

const MIB: usize = 1 << 20;
const IMG: usize = 4 * MIB;
const START: usize = MIB;
const LEN: usize = 2 * MIB;
const FILL: u8 = 0xAA;

fn setup(dir: Option<&Path>) -> (TempImage, LocalRing, Partition<LocalRing>) {
    let img = TempImage::new(IMG, FILL, dir);
    let file = open_alu(&img.path).unwrap();
    let ring = LocalRing::new(32).unwrap();
    let part = Partition::new(file, START as u64, LEN as u64, ring.clone());
    (img, ring, part)
}

/// Check the image outside the partition still holds FILL.
fn assert_outside_untouched(img: &TempImage) {
    let data = img.contents();
    assert_eq!(data.len(), IMG, "image size changed");
    assert!(
        data[..START].iter().all(|&b| b == FILL),
        "bytes before partition changed"
    );
    assert!(
        data[START + LEN..].iter().all(|&b| b == FILL),
        "bytes after partition changed"
    );
}

fn pattern(seed: u64, len: usize) -> AlignedBuf {
    let mut b = AlignedBuf::new(len);
    Rng::new(seed).fill(&mut b);
    b
}

#[test]
fn write_then_read_back() {
    let (img, ring, part) = setup(None);
    assert_eq!(part.size(), LEN as u64);
    let cases = [
        (0usize, 4096usize),
        (512, 4096),
        (12288, 65536),
        (LEN - 4096, 4096),
        (100 * 512, 512 * 3),
    ];
    ring.block_on(async {
        for (i, &(off, len)) in cases.iter().enumerate() {
            let data = pattern(i as u64 + 1, len);
            part.write(off as u64, &data, false).await.unwrap();
            let mut back = AlignedBuf::new(len);
            part.read(off as u64, &mut back).await.unwrap();
            assert!(back[..] == data[..], "case {i}");
        }
    });
    // The file itself holds the last-written data at start + offset.
    let file = img.contents();
    let (off, len) = cases[3];
    assert!(file[START + off..START + off + len] == pattern(4, len)[..]);
    assert_outside_untouched(&img);
}

#[test]
fn out_of_range_requests_fail_with_einval() {
    let (img, ring, part) = setup(None);
    ring.block_on(async {
        let mut buf = AlignedBuf::new(1024);
        let len = LEN as u64;
        assert_eq!(
            part.read(len - 512, &mut buf).await.unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            part.write(len, &buf[..512], false)
                .await
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            part.read(u64::MAX - 100, &mut buf)
                .await
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            part.discard(len - 512, 1024).await.unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(
            part.write_zeroes(u64::MAX, 2).await.unwrap_err().errno(),
            libc::EINVAL
        );
        // Zero-length at the end is fine.
        part.read(len, &mut buf[..0]).await.unwrap();
        // The exact last block works.
        part.write(len - 512, &buf[..512], false).await.unwrap();
    });
    assert_outside_untouched(&img);
}

#[test]
fn fua_write_and_flush() {
    let (img, ring, part) = setup(None);
    let data = pattern(99, 8192);
    ring.block_on(async {
        part.write(4096, &data, true).await.unwrap();
        part.flush().await.unwrap();
        let mut back = AlignedBuf::new(8192);
        part.read(4096, &mut back).await.unwrap();
        assert!(back[..] == data[..]);
    });
    assert!(img.contents()[START + 4096..START + 4096 + 8192] == data[..]);
    assert_outside_untouched(&img);
}

fn discard_and_write_zeroes(dir: Option<&Path>) {
    let (img, ring, part) = setup(dir);
    let data = pattern(7, LEN);
    ring.block_on(async {
        part.write(0, &data, false).await.unwrap();
        // Unaligned-to-4K but 512-aligned ranges, across pages.
        part.discard(8192 + 512, 65536).await.unwrap();
        part.write_zeroes(200 * 1024 + 1024, 100 * 1024 + 512)
            .await
            .unwrap();
        let mut back = AlignedBuf::new(LEN);
        part.read(0, &mut back).await.unwrap();
        let mut expect = data.to_vec();
        expect[8192 + 512..8192 + 512 + 65536].fill(0);
        expect[200 * 1024 + 1024..300 * 1024 + 1536].fill(0);
        assert!(
            back[..] == expect[..],
            "volume contents differ from expected"
        );
        assert!(img.contents()[START..START + LEN] == expect[..]);
    });
    assert_outside_untouched(&img);
}

#[test]
fn discard_and_write_zeroes_on_default_fs() {
    discard_and_write_zeroes(None);
}

/// tmpfs refuses FALLOC_FL_ZERO_RANGE, so write_zeroes falls back to writing
/// zeroes (and before Linux 6.6 it also refuses O_DIRECT: open_alu falls back).
#[test]
fn discard_and_write_zeroes_on_tmpfs_fallbacks() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm; skipping");
        return;
    }
    discard_and_write_zeroes(Some(shm));
}

#[test]
fn concurrent_io_on_one_partition() {
    let (img, ring, part) = setup(None);
    let n = 32;
    let chunk = LEN / n;
    let bufs: Vec<AlignedBuf> = (0..n).map(|i| pattern(1000 + i as u64, chunk)).collect();
    let futs: Vec<_> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| part.write((i * chunk) as u64, b, i % 2 == 0))
        .collect();
    for r in ring.block_on(tierblk_stack::uring::join_all(futs)) {
        r.unwrap();
    }
    let file = img.contents();
    for (i, b) in bufs.iter().enumerate() {
        assert!(
            file[START + i * chunk..START + (i + 1) * chunk] == b[..],
            "chunk {i}"
        );
    }
    assert_outside_untouched(&img);
}

/// Open flags of `file` as reported by /proc/self/fdinfo.
fn open_flags(file: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap();
    let line = info.lines().find(|l| l.starts_with("flags:")).unwrap();
    i32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn open_alu_uses_o_direct_when_possible() {
    let img = TempImage::new(4096, 0, None);
    let f = open_alu(&img.path).unwrap();
    let flags = open_flags(&f);
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
    // The default temp dir here is a disk filesystem; tmpfs would refuse.
    let on_tmpfs = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/tmp") && l.contains("tmpfs"))
        })
        .unwrap_or(false);
    if !on_tmpfs {
        assert_ne!(flags & libc::O_DIRECT, 0, "expected O_DIRECT");
    }
    if Path::new("/dev/shm").is_dir() {
        let img = TempImage::new(4096, 0, Some(Path::new("/dev/shm")));
        // tmpfs supports O_DIRECT since Linux 6.6; older kernels refuse it
        // and open_alu must fall back to buffered I/O. Either way it opens.
        let f = open_alu(&img.path).unwrap();
        assert_eq!(open_flags(&f) & libc::O_ACCMODE, libc::O_RDWR);
    }
    assert!(open_alu(Path::new("/nonexistent/tierblk.img")).is_err());
}

/// A ring that fails every other submission with -EAGAIN or -EINTR without
/// submitting it: Partition must retry transparently.
struct FlakyRing {
    inner: LocalRing,
    count: std::cell::Cell<u32>,
}

impl tierblk_stack::Ring for FlakyRing {
    fn submit(&self, sqe: io_uring::squeue::Entry) -> impl std::future::Future<Output = i32> {
        let n = self.count.get();
        self.count.set(n + 1);
        async move {
            match n % 4 {
                0 => -libc::EAGAIN,
                2 => -libc::EINTR,
                _ => self.inner.submit(sqe).await,
            }
        }
    }
}

#[test]
fn eagain_and_eintr_are_retried() {
    let img = TempImage::new(IMG, FILL, None);
    let ring = LocalRing::new(8).unwrap();
    let flaky = FlakyRing {
        inner: ring.clone(),
        count: std::cell::Cell::new(0),
    };
    let part = Partition::new(
        open_alu(&img.path).unwrap(),
        START as u64,
        LEN as u64,
        &flaky,
    );
    let data = pattern(42, 16384);
    ring.block_on(async {
        part.write(8192, &data, true).await.unwrap();
        part.flush().await.unwrap();
        let mut back = AlignedBuf::new(16384);
        part.read(8192, &mut back).await.unwrap();
        assert!(back[..] == data[..]);
        part.write_zeroes(8192, 4096).await.unwrap();
        part.discard(12288, 4096).await.unwrap();
        part.read(8192, &mut back).await.unwrap();
        assert!(back[..8192].iter().all(|&b| b == 0));
        assert!(back[8192..] == data[8192..]);
    });
    assert!(flaky.count.get() >= 12, "ring was not exercised");
    assert_outside_untouched(&img);
}

/// Buffered fd on an image that ends inside the partition: the first read is
/// short, the remainder is resubmitted and hits EOF, which reads as zeroes.
#[test]
fn short_read_is_resubmitted_and_eof_reads_zeroes() {
    let img = TempImage::new(6000, 0x33, None);
    let file = std::sync::Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img.path)
            .unwrap(),
    );
    let ring = LocalRing::new(8).unwrap();
    let part = Partition::new(file, 1000, 8192, ring.clone());
    let mut back = vec![0xFFu8; 8192];
    ring.block_on(part.read(0, &mut back)).unwrap();
    assert!(back[..5000].iter().all(|&b| b == 0x33));
    assert!(back[5000..].iter().all(|&b| b == 0));
}
