//! Host benchmark of the stack in process, without ublk: one load generator
//! drives either an image file straight through the io_uring ring (one SQE
//! per request: the limit) or a tierblk volume tree (built with
//! `build_volume`, as the daemon builds it per queue) over image files on the
//! same ring, with the same jobs, one after the other. Used by
//! `scripts/bench-host`, which repeats it and computes ratios. The requests
//! in flight are a [`TaskSet`], each polled only when its own completion (or
//! its own yield) woke it, as the daemon polls a ublk queue's tags; a
//! generator that polled every request on each wake would charge the tree's
//! depth to every completion, N times over.
//!
//! ```text
//! cargo run --release -p tierblk-stack --example stackbench -- \
//!     [--dir DIR] [--size MiB] [--seconds S] [--layouts aa,linear,stripe,mirror,raid10] [--jobs NAME,...] [--rounds N] [--tag T]
//! ```
//!
//! Prints one line per measurement, in the format of tests/vm/bench.sh:
//! `BENCH group=stripe role=ours target=tierblk-stripe job=randread-4k-qd1 iops=N bw_kib=N clat_us=N`
//! (`role=raw` for the bare file). Each job's time (`--seconds`, per target)
//! is cut into `--rounds` slices (default 4) run alternately on raw and ours
//! (raw, ours, ours, raw, ...), so a drift of the machine's speed hits both
//! alike; each slice starts with a 0.2 s ramp that is not counted.
//!
//! Layout `aa` is the A/A run: *ours* is the raw file again, one SQE per
//! request, at the volumes' offset (`PIECE_START`) instead of the stack. Its
//! ratio would be 1 on a perfect rig; how far it strays is the measurement's
//! own spread, the band within which a layout's ratio says nothing.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use tierblk_stack::mirror::MirrorHealth;
use tierblk_stack::tasks::TaskSet;
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, IoError, IoResult, Layout, Limits, MemberDesc,
    Ring, VolumeDesc,
};

/// name, random, write, block size, iodepth. Writes first, so the reads find
/// written blocks.
const JOBS: &[(&str, bool, bool, usize, usize)] = &[
    ("seqwrite-128k-qd8", false, true, 128 << 10, 8),
    ("randwrite-4k-qd1", true, true, 4096, 1),
    ("randwrite-4k-qd32", true, true, 4096, 32),
    ("seqread-128k-qd8", false, false, 128 << 10, 8),
    ("randread-4k-qd1", true, false, 4096, 1),
    ("randread-4k-qd32", true, false, 4096, 32),
];

/// What `--layouts` may name: `aa`, the A/A run, then the volume layouts.
const LAYOUTS: &[&str] = &["aa", "linear", "stripe", "mirror", "raid10"];

/// Stripe and raid10 chunk, as in the VM bench.
const CHUNK: u32 = 64 << 10;
/// Where volume pieces start on an image (past a metadata area, as on an ALU).
const PIECE_START: u64 = 1 << 20;

/// A read or write CQE result `n` for `len` bytes: done only if it moved all
/// of them (a short transfer is an EIO, a negative result its errno).
fn whole(n: i32, what: &'static str, offset: u64, len: usize) -> IoResult<()> {
    if n >= 0 && n as usize == len {
        return Ok(());
    }
    Err(IoError::new(
        if n < 0 { n } else { libc::EIO },
        what,
        offset,
        len as u64,
    ))
}

/// An image file driven straight through the ring: one read or write SQE per
/// request, no stack in between (the limit). `start` is where its region
/// begins in the file.
struct RawFile {
    file: Arc<File>,
    start: u64,
    size: u64,
    ring: LocalRing,
}

impl BlockDev for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn limits(&self) -> Limits {
        tierblk_stack::partition::DEFAULT_LIMITS
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let sqe = opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
            .offset(self.start + offset)
            .build();
        whole(self.ring.submit(sqe).await, "read", offset, buf.len())
    }

    async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> IoResult<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let sqe = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
            .offset(self.start + offset)
            .build();
        whole(self.ring.submit(sqe).await, "write", offset, buf.len())
    }

    async fn flush(&self) -> IoResult<()> {
        Ok(())
    }

    async fn discard(&self, _offset: u64, _len: u64) -> IoResult<()> {
        Ok(())
    }

    async fn write_zeroes(&self, _offset: u64, _len: u64) -> IoResult<()> {
        Ok(())
    }
}

struct Args {
    dir: PathBuf,
    size: u64,
    seconds: f64,
    layouts: Vec<String>,
    jobs: Vec<String>,
    rounds: u32,
    /// Appended to each group's name (`linear-T`): tells runs on different
    /// media apart in one log.
    tag: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("/var/tmp"),
        size: 256 << 20,
        seconds: 3.0,
        layouts: LAYOUTS.iter().map(|l| l.to_string()).collect(),
        jobs: JOBS.iter().map(|j| j.0.to_string()).collect(),
        rounds: 4,
        tag: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--dir" => a.dir = val().into(),
            "--size" => a.size = val().parse::<u64>().unwrap_or_else(|_| usage("bad --size")) << 20,
            "--seconds" => a.seconds = val().parse().unwrap_or_else(|_| usage("bad --seconds")),
            "--layouts" => a.layouts = val().split(',').map(String::from).collect(),
            "--jobs" => a.jobs = val().split(',').map(String::from).collect(),
            "--tag" => a.tag = Some(val()),
            "--rounds" => {
                a.rounds = val()
                    .parse()
                    .ok()
                    .filter(|&r| r > 0)
                    .unwrap_or_else(|| usage("bad --rounds"))
            }
            "-h" | "--help" => {
                println!(
                    "usage: stackbench [--dir DIR] [--size MiB] [--seconds S] \
                     [--layouts aa,linear,stripe,mirror,raid10] [--jobs NAME,...] [--rounds N] [--tag T]"
                );
                std::process::exit(0);
            }
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    for j in &a.jobs {
        if !JOBS.iter().any(|k| k.0 == j) {
            usage(&format!("unknown job {j}"));
        }
    }
    for l in &a.layouts {
        if !LAYOUTS.contains(&l.as_str()) {
            usage(&format!("unknown layout {l}"));
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    eprintln!("stackbench: {msg} (--help)");
    std::process::exit(2)
}

/// Run one job on `dev` for `secs` seconds (after a 0.2 s ramp); returns
/// (requests, seconds, mean latency in µs).
fn run_job<D: BlockDev>(
    ring: &LocalRing,
    dev: &D,
    job: &(&str, bool, bool, usize, usize),
    region: u64,
    secs: f64,
) -> (u64, f64, f64) {
    let &(name, random, write, bs, qd) = job;
    let blocks = region / bs as u64;
    let ramp_end = Instant::now() + Duration::from_millis(200);
    let end = ramp_end + Duration::from_secs_f64(secs);
    let count = Cell::new(0u64);
    let lat_ns = Cell::new(0u128);
    let start = Cell::new(None::<Instant>);
    let futs: Vec<_> = (0..qd)
        .map(|slot| {
            let (count, lat_ns, start) = (&count, &lat_ns, &start);
            async move {
                let mut buf = AlignedBuf::new(bs);
                buf.fill(0x5a ^ slot as u8);
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((slot as u64 + 1) << 32) ^ bs as u64;
                // Sequential jobs: each slot walks its own share of the region.
                let mut next = slot as u64 * (blocks / qd as u64);
                loop {
                    let blk = if random {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed % blocks
                    } else {
                        next = (next + 1) % blocks;
                        next
                    };
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let r = if write {
                        dev.write(blk * bs as u64, &buf, false).await
                    } else {
                        dev.read(blk * bs as u64, &mut buf).await
                    };
                    if let Err(e) = r {
                        eprintln!("stackbench: {name}: I/O error: {e}");
                        std::process::exit(1);
                    }
                    let t1 = Instant::now();
                    if t0 >= ramp_end && t1 < end {
                        if start.get().is_none() {
                            start.set(Some(t0));
                        }
                        count.set(count.get() + 1);
                        lat_ns.set(lat_ns.get() + (t1 - t0).as_nanos());
                    }
                }
            }
        })
        .collect();
    ring.block_on(TaskSet::new(futs));
    let n = count.get();
    let elapsed = start.get().map_or(secs, |s| (end - s).as_secs_f64());
    let lat_us = if n > 0 {
        lat_ns.get() as f64 / n as f64 / 1000.0
    } else {
        0.0
    };
    (n, elapsed, lat_us)
}

/// Write `dev` once, 1 MiB at a time (not measured), so reads hit data.
fn fill<D: BlockDev>(ring: &LocalRing, dev: &D) {
    let size = dev.size();
    let mut buf = AlignedBuf::new(1 << 20);
    buf.fill(0xa5);
    let futs: Vec<_> = (0..8u64)
        .map(|slot| {
            let buf = &buf;
            async move {
                let mut off = slot << 20;
                while off + (1 << 20) <= size {
                    if let Err(e) = dev.write(off, buf, false).await {
                        eprintln!("stackbench: fill: {e}");
                        std::process::exit(1);
                    }
                    off += 8 << 20;
                }
            }
        })
        .collect();
    ring.block_on(TaskSet::new(futs));
}

fn image(dir: &std::path::Path, name: &str, size: u64) -> (PathBuf, Arc<File>) {
    let path = dir.join(format!("stackbench-{}-{name}.img", std::process::id()));
    let f = File::create(&path).unwrap_or_else(|e| usage(&format!("{}: {e}", path.display())));
    f.set_len(size).expect("set_len");
    let file = open_alu(&path).expect("open image");
    (path, file)
}

fn main() {
    let a = parse_args();
    let region = a.size;
    // Two images: the raw runs use the first, every volume both (linear only
    // the first), at PIECE_START, so `ours` and `raw` touch the same files.
    let img_size = region + 2 * PIECE_START;
    let (pa, fa) = image(&a.dir, "a", img_size);
    let (pb, fb) = image(&a.dir, "b", img_size);
    let _cleanup = Cleanup(vec![pa, pb]);
    let ring = LocalRing::new(256).expect("io_uring");
    let raw = RawFile {
        file: fa.clone(),
        start: 0,
        size: region,
        ring: ring.clone(),
    };
    println!(
        "BENCH-INFO kind=stack size={}M seconds={} rounds={} dir={}",
        region >> 20,
        a.seconds,
        a.rounds,
        a.dir.display()
    );
    fill(&ring, &raw);
    let on = |f: &Arc<File>, len: u64| MemberDesc::local(vec![(f.clone(), PIECE_START, len)]);
    let health = |legs: usize, leg_size: u64| {
        Arc::new(MirrorHealth::new_with_rebuild(
            legs,
            0,
            &[],
            leg_size,
            Box::new(|_, _| {}),
        ))
    };
    let mut futures_told = false;
    for layout in &a.layouts {
        let group = match &a.tag {
            Some(tag) => format!("{layout}-{tag}"),
            None => layout.clone(),
        };
        let desc = match layout.as_str() {
            "aa" => {
                // The A/A run: the raw file again, where the volumes' pieces
                // start, filled as theirs are.
                let again = RawFile {
                    file: fa.clone(),
                    start: PIECE_START,
                    size: region,
                    ring: ring.clone(),
                };
                fill(&ring, &again);
                compare(&ring, &raw, &again, "raw-file-again", &group, &a);
                continue;
            }
            "linear" => VolumeDesc {
                layout: Layout::Linear,
                copies: 1,
                members: vec![on(&fa, region)],
                health: vec![],
                moving: None,
            },
            "stripe" => VolumeDesc {
                layout: Layout::Stripe { chunk: CHUNK },
                copies: 1,
                members: vec![on(&fa, region / 2), on(&fb, region / 2)],
                health: vec![],
                moving: None,
            },
            "mirror" => VolumeDesc {
                layout: Layout::Mirror,
                copies: 2,
                members: vec![on(&fa, region), on(&fb, region)],
                health: vec![health(2, region)],
                moving: None,
            },
            "raid10" => {
                // 2 stripes x 2 copies over the two images: column c's legs
                // on a and b, the second column further in.
                let q = region / 2;
                let at = |f: &Arc<File>, c: u64| {
                    MemberDesc::local(vec![(f.clone(), PIECE_START + c * q, q)])
                };
                VolumeDesc {
                    layout: Layout::Raid10 { chunk: CHUNK },
                    copies: 2,
                    members: vec![at(&fa, 0), at(&fb, 0), at(&fa, 1), at(&fb, 1)],
                    health: vec![health(2, q), health(2, q)],
                    moving: None,
                }
            }
            other => usage(&format!("unknown layout {other}")),
        };
        let vol =
            build_volume(&desc, ring.clone()).unwrap_or_else(|e| usage(&format!("{layout}: {e}")));
        fill(&ring, &vol);
        if !futures_told {
            futures_told = true;
            // The futures a ublk queue's task holds per request (the daemon
            // keeps one per tag): the size of the `Volume` enum's futures is
            // the largest over every layout.
            let mut b = AlignedBuf::new(4096);
            let read = std::mem::size_of_val(&vol.read(0, &mut b));
            let write = std::mem::size_of_val(&vol.write(0, &b, false));
            let flush = std::mem::size_of_val(&vol.flush());
            let discard = std::mem::size_of_val(&vol.discard(0, 4096));
            let zeroes = std::mem::size_of_val(&vol.write_zeroes(0, 4096));
            println!(
                "BENCH-INFO kind=futures read={read} write={write} flush={flush} discard={discard} write_zeroes={zeroes}"
            );
        }
        compare(&ring, &raw, &vol, &format!("tierblk-{layout}"), &group, &a);
    }
}

/// Every chosen job on `raw` and on `ours` (target name `target`), in
/// alternating slices; prints a BENCH line per job and target.
fn compare<A: BlockDev, B: BlockDev>(
    ring: &LocalRing,
    raw: &A,
    ours: &B,
    target: &str,
    group: &str,
    a: &Args,
) {
    for job in JOBS.iter().filter(|j| a.jobs.iter().any(|n| n == j.0)) {
        // The job's time is cut into `rounds` slices per target, run
        // raw, ours, ours, raw, raw, ours... so that a drift of the
        // machine's speed during the job hits both alike.
        let slice = a.seconds / a.rounds as f64;
        let mut tot = [(0u64, 0f64, 0f64); 2];
        for r in 0..a.rounds {
            let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for t in order {
                let (n, secs, lat) = if t == 0 {
                    run_job(ring, raw, job, raw.size(), slice)
                } else {
                    run_job(ring, ours, job, ours.size(), slice)
                };
                tot[t].0 += n;
                tot[t].1 += secs;
                tot[t].2 += lat * n as f64;
            }
        }
        for (t, (role, target)) in [("raw", "raw-file"), ("ours", target)]
            .into_iter()
            .enumerate()
        {
            let (n, secs, lat_sum) = tot[t];
            let lat = if n > 0 { lat_sum / n as f64 } else { 0.0 };
            let iops = n as f64 / secs;
            println!(
                "BENCH group={group} role={role} target={target} job={} iops={:.0} bw_kib={:.0} clat_us={:.1}",
                job.0,
                iops,
                iops * job.3 as f64 / 1024.0,
                lat
            );
        }
    }
}

struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
