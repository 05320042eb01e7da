//! Registered buffers (zero copy, docs/benchmarks/copy.md, *Zero copy on a
//! newer kernel*): every layout over image partitions reads into and writes
//! from buffers registered with the ring, as a zero-copy ublk request's pages
//! are, checked against a model and the images; a short image reads as
//! zeroes past its end into such a buffer; and a device that needs the bytes
//! refuses them without failing a mirror leg.

mod common;

use std::sync::{Arc, Mutex};

use common::memdev::MemDev;
use common::workload::{KIB, MIB};
use common::{Rng, TempImage};
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, Layout, MemberDesc, Mirror, MirrorHealth,
    MirrorState, Partition, ReadBuf, Stripe, VolumeDesc, WriteBuf,
};

/// Registered buffers: 0 is written from, 1 read into.
const SRC: u16 = 0;
const DST: u16 = 1;
const BUF: usize = MIB as usize;

fn ring_with_buffers() -> LocalRing {
    let ring = LocalRing::new(64).unwrap();
    ring.register_buffers(vec![AlignedBuf::new(BUF), AlignedBuf::new(BUF)])
        .unwrap();
    ring
}

type Calls = Arc<Mutex<Vec<(usize, i32)>>>;

fn health(legs: usize, calls: &Calls) -> Arc<MirrorHealth> {
    let c = calls.clone();
    Arc::new(MirrorHealth::new(
        legs,
        0,
        Box::new(move |leg, e| c.lock().unwrap().push((leg, e))),
    ))
}

/// A 512-byte aligned length in `[512, max]`.
fn sectors(rng: &mut Rng, max: u64) -> u64 {
    (1 + rng.below(max / 512)) * 512
}

#[test]
fn every_layout_reads_and_writes_registered_buffers() {
    let chunk = 32 * KIB as u32;
    let cases: [(&str, Layout, usize, usize); 4] = [
        ("linear", Layout::Linear, 1, 2),
        ("stripe", Layout::Stripe { chunk }, 1, 2),
        ("mirror", Layout::Mirror, 2, 2),
        ("raid10", Layout::Raid10 { chunk }, 2, 4),
    ];
    for (name, layout, copies, members) in cases {
        let leg = 768 * KIB;
        let imgs: Vec<TempImage> = (0..members)
            .map(|_| TempImage::new(MIB as usize, 0, None))
            .collect();
        let files: Vec<_> = imgs.iter().map(|i| open_alu(&i.path).unwrap()).collect();
        let calls: Calls = Arc::default();
        let mirrors = if copies > 1 { members / copies } else { 0 };
        let desc = VolumeDesc {
            layout,
            copies,
            members: if name == "linear" {
                // One member: a piece of each image, end to end.
                vec![MemberDesc {
                    pieces: files
                        .iter()
                        .map(|f| (f.clone(), 4096, leg).into())
                        .collect(),
                }]
            } else {
                files
                    .iter()
                    .map(|f| MemberDesc {
                        pieces: vec![(f.clone(), 4096, leg).into()],
                    })
                    .collect()
            },
            health: (0..mirrors).map(|_| health(copies, &calls)).collect(),
            moving: None,
        };
        let ring = ring_with_buffers();
        let vol = build_volume(&desc, ring.clone()).unwrap();
        assert!(vol.fixed(), "{name}: a tree of local partitions takes them");
        let size = vol.size();
        let mut model = vec![0u8; size as usize];
        let mut rng = Rng::new(0xf1_4ed0 + members as u64);
        for i in 0..200 {
            // Requests up to 256 KiB anywhere (across chunks and members), at
            // any sector of the registered buffer.
            let len = sectors(&mut rng, 256 * KIB);
            let off = rng.below((size - len) / 512 + 1) * 512;
            let at = (rng.below((BUF as u64 - len) / 512 + 1) * 512) as usize;
            let (off_u, len_u) = (off as usize, len as usize);
            if i % 2 == 0 {
                rng.fill(&mut ring.registered(SRC)[at..at + len_u]);
                let data = WriteBuf::Fixed(ring.fixed(SRC, at, len_u));
                ring.block_on(vol.write_from(off, data, i % 7 == 0))
                    .unwrap_or_else(|e| panic!("{name}: write {i}: {e}"));
                model[off_u..off_u + len_u].copy_from_slice(&ring.registered(SRC)[at..at + len_u]);
            } else {
                ring.registered(DST).fill(0xa5);
                let data = ReadBuf::Fixed(ring.fixed(DST, at, len_u));
                ring.block_on(vol.read_to(off, data))
                    .unwrap_or_else(|e| panic!("{name}: read {i}: {e}"));
                let got = ring.registered(DST);
                assert!(
                    got[at..at + len_u] == model[off_u..off_u + len_u],
                    "{name}: read {i} of {len} at {off} differs from the model"
                );
                // Nothing outside the range was touched.
                assert!(got[..at]
                    .iter()
                    .chain(&got[at + len_u..])
                    .all(|&b| b == 0xa5));
            }
        }
        // The memory path reads back what the registered buffers wrote.
        let mut all = AlignedBuf::new(size as usize);
        ring.block_on(vol.read(0, &mut all)).unwrap();
        assert!(
            all[..] == model[..],
            "{name}: memory read differs from the model"
        );
        if copies > 1 {
            // Both copies of each column are equal on disk.
            for pair in imgs.chunks(copies) {
                assert!(
                    pair[0].contents() == pair[1].contents(),
                    "{name}: copies differ"
                );
            }
        }
        assert!(calls.lock().unwrap().is_empty(), "{name}: a leg failed");
    }
}

#[test]
fn a_short_image_reads_zeroes_into_a_registered_buffer() {
    let img = TempImage::new(64 * KIB as usize, 7, None);
    let ring = ring_with_buffers();
    // The partition runs 64 KiB past the end of its image file.
    let part = Partition::new(open_alu(&img.path).unwrap(), 0, 128 * KIB, ring.clone());
    ring.registered(DST).fill(0xee);
    let len = 128 * KIB as usize;
    ring.block_on(part.read_to(0, ReadBuf::Fixed(ring.fixed(DST, 4096, len))))
        .unwrap();
    let got = ring.registered(DST);
    let half = 4096 + len / 2;
    assert!(got[4096..half].iter().all(|&b| b == 7), "the image's bytes");
    assert!(
        got[half..4096 + len].iter().all(|&b| b == 0),
        "zeroes past its end"
    );
    assert!(
        got[..4096].iter().all(|&b| b == 0xee),
        "before the range: untouched"
    );
    drop(got);
    // Out of range: refused like any request, nothing issued.
    let e = ring
        .block_on(part.read_to(64 * KIB, ReadBuf::Fixed(ring.fixed(DST, 0, len))))
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(!e.is_needs_bytes());
}

#[test]
fn a_device_that_needs_the_bytes_refuses_them_and_fails_no_leg() {
    let calls: Calls = Arc::default();
    let legs = (0..2).map(|_| MemDev::new(MIB as usize)).collect();
    let m = Mirror::new(legs, health(2, &calls)).unwrap();
    let ring = ring_with_buffers();
    // MemDev keeps the default: memory only, like a remote reference.
    assert!(!m.fixed());
    let data = WriteBuf::Fixed(ring.fixed(SRC, 0, 8192));
    let e = ring.block_on(m.write_from(4096, data, false)).unwrap_err();
    assert!(e.is_needs_bytes(), "{e}");
    assert_eq!(
        (e.errno(), e.op(), e.offset()),
        (libc::EOPNOTSUPP, "write", 4096)
    );
    let e = ring
        .block_on(m.read_to(4096, ReadBuf::Fixed(ring.fixed(DST, 0, 8192))))
        .unwrap_err();
    assert!(e.is_needs_bytes(), "{e}");
    // A refusal is not a failure: no leg was failed, and the same request
    // from memory is served.
    assert!(calls.lock().unwrap().is_empty());
    assert_eq!(m.state(), MirrorState::Optimal);
    ring.block_on(m.write(4096, &[3u8; 8192], false)).unwrap();
    assert!(m
        .legs()
        .iter()
        .all(|l| l.bytes(4096, 8192).iter().all(|&b| b == 3)));
    // A stripe over such mirrors passes the refusal up as one, relabelled
    // with its own request.
    let calls2: Calls = Arc::default();
    let mirrors = (0..2)
        .map(|_| {
            let legs = (0..2).map(|_| MemDev::new(MIB as usize)).collect();
            Mirror::new(legs, health(2, &calls2)).unwrap()
        })
        .collect();
    let s = Stripe::new(mirrors, 32 * KIB as u32).unwrap();
    let data = WriteBuf::Fixed(ring.fixed(SRC, 0, 96 * KIB as usize));
    let e = ring
        .block_on(s.write_from(16 * KIB, data, false))
        .unwrap_err();
    assert!(e.is_needs_bytes(), "{e}");
    assert_eq!((e.offset(), e.request_len()), (16 * KIB, 96 * KIB));
    assert!(calls2.lock().unwrap().is_empty());
}
