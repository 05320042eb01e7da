//! Host benchmark: random 4 KiB and sequential 128 KiB I/O at a fixed queue
//! depth on a linear volume of two partitions of a temporary image file,
//! through LocalRing.
//!
//! `cargo run --release -p tierblk-stack --example linear_bench -- [DIR] [MiB]`

use std::time::Instant;

use tierblk_stack::uring::{join_all, LocalRing};
use tierblk_stack::{build_linear, open_alu, AlignedBuf, BlockDev, Piece};

const QD: usize = 32;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let mib: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let path = dir.join(format!("tierblk-bench-{}.img", std::process::id()));
    let size = mib << 20;
    std::fs::File::create(&path)?.set_len(size)?;
    let file = open_alu(&path)?;
    let half = size / 2;
    let ring = LocalRing::new(2 * QD as u32)?;
    let pieces = [
        Piece::local(file.clone(), 0, half),
        Piece::local(file, half, half),
    ];
    let vol = build_linear(&pieces, ring.clone());

    for (name, bs, random) in [("seq 128K", 128 << 10, false), ("rand 4K", 4096, true)] {
        for write in [true, false] {
            let blocks = vol.size() / bs as u64;
            let ops = (blocks as usize).min(if random { 50_000 } else { usize::MAX });
            let mut bufs: Vec<AlignedBuf> = (0..QD).map(|_| AlignedBuf::new(bs)).collect();
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            let start = Instant::now();
            let mut done = 0;
            while done < ops {
                let n = QD.min(ops - done);
                let offsets: Vec<u64> = (0..n)
                    .map(|i| {
                        let blk = if random {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            seed % blocks
                        } else {
                            (done + i) as u64
                        };
                        blk * bs as u64
                    })
                    .collect();
                let results = if write {
                    let futs: Vec<_> = offsets
                        .iter()
                        .zip(&bufs)
                        .map(|(&o, b)| vol.write(o, b, false))
                        .collect();
                    ring.block_on(join_all(futs))
                } else {
                    let futs: Vec<_> = offsets
                        .iter()
                        .zip(bufs.iter_mut())
                        .map(|(&o, b)| vol.read(o, b))
                        .collect();
                    ring.block_on(join_all(futs))
                };
                if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
                    eprintln!("I/O error: {e}");
                    std::process::exit(1);
                }
                done += n;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name:>9} {:<5} qd{QD}: {:>9.0} IOPS {:>8.1} MiB/s",
                if write { "write" } else { "read" },
                ops as f64 / secs,
                (ops * bs) as f64 / secs / (1 << 20) as f64
            );
        }
    }
    ring.block_on(vol.flush()).ok();
    std::fs::remove_file(&path)
}
