//! Randomized corruption: flipped bits, overwritten ranges and truncated devices in
//! metadata regions never make open (or later operations) panic; decoders fed random
//! bytes never panic.

mod common;
use common::*;
use tierblk_meta::bootset::{BootList, BootPtr};
use tierblk_meta::label::LabelDir;
use tierblk_meta::mdr::Directory;
use tierblk_meta::objdb::{decode_volume, ObjDb};
use tierblk_meta::store::Store;
use tierblk_meta::testing::{flip_bits, replay, Event, Recorder, XorShift};
use tierblk_meta::{Disk, MemDisk};

fn valid_state() -> (Vec<u64>, Vec<Event>) {
    let rec = Recorder::new();
    let mut st = open_rec(&rec, 3, SIZE);
    for i in 0..3 {
        st.claim(&path(i), CLUSTER, false).unwrap();
    }
    let (a0, a1, a2) = (alu_uuid(&st, 0), alu_uuid(&st, 1), alu_uuid(&st, 2));
    st.create_volume("v1", 6 * MIB, &[(a0, 4 * MIB), (a1, 2 * MIB)])
        .unwrap();
    st.create_volume("v2", 3 * MIB, &[(a2, MIB), (a0, 2 * MIB)])
        .unwrap();
    st.create_volume("v3", MIB, &[(a1, MIB)]).unwrap();
    st.remove_volume("v3").unwrap();
    (vec![SIZE; 3], rec.log())
}

/// Interesting byte ranges: the used part of every metadata region.
fn regions(size: u64) -> Vec<(usize, usize)> {
    let b = (size & !4095) as usize - 4096;
    vec![
        (0x1000, 0x1000 + 512),
        (0x2000, 0x2000 + 512),
        (0x3000, 0x3000 + 512),
        (0x10000, 0x10000 + 8192),
        (0x50000, 0x50000 + 8192),
        (0x100000, 0x100000 + 8192),
        (0x200000, 0x200000 + 8192),
        (0x300000, 0x300000 + 4096),
        (0x400000, 0x400000 + 4096),
        (b, b + 512),
    ]
}

fn open_disks(disks: Vec<MemDisk>, repair: bool) -> Store {
    let v: Vec<(String, Box<dyn Disk>)> = disks
        .into_iter()
        .enumerate()
        .map(|(i, d)| (path(i), Box::new(d) as Box<dyn Disk>))
        .collect();
    match Store::open(v, Some(CLUSTER), repair) {
        Ok((st, _)) => st,
        Err(e) => panic!("open returned error (allowed, but unexpected here): {e}"),
    }
}

#[test]
fn random_corruption_never_panics() {
    let (sizes, log) = valid_state();
    let n = write_count(&log);
    let mut rng = XorShift::new(0x5eed_1234);
    let cases = 4000;
    for case in 0..cases {
        let mut disks = replay(&sizes, &log, n, false);
        let mutations = 1 + rng.below(4);
        for _ in 0..mutations {
            let d = rng.below(disks.len() as u64) as usize;
            let regs = regions(disks[d].data.len() as u64);
            let (lo, hi) = regs[rng.below(regs.len() as u64) as usize];
            let data = &mut disks[d].data;
            let hi = hi.min(data.len());
            if lo >= hi {
                continue;
            }
            match rng.below(4) {
                0 => flip_bits(data, lo..hi, 1 + rng.below(16) as usize, &mut rng),
                1 => {
                    let s = lo + rng.below((hi - lo) as u64) as usize;
                    let e = (s + 1 + rng.below(600) as usize).min(hi);
                    rng.fill(&mut data[s..e]);
                }
                2 => {
                    let s = lo + rng.below((hi - lo) as u64) as usize;
                    let e = (s + 1 + rng.below(600) as usize).min(hi);
                    data[s..e].fill(0);
                }
                _ => {
                    // truncate the device (keeps it 512-aligned)
                    let len = (rng.below(SIZE) as usize) & !511;
                    data.truncate(len);
                }
            }
        }
        let repair = case % 2 == 0;
        let mut st = open_disks(disks, repair);
        let _ = st.image();
        let _ = st.alus();
        let _ = st.volume_problems();
        if case % 5 == 0 {
            if let Some(img) = st.image().cloned() {
                if let Some(a) = img.alus.first() {
                    let _ = st.free_extents(a.uuid);
                    let _ = st.create_volume("x", MIB, &[(a.uuid, MIB)]);
                }
                let _ = st.remove_volume("v1");
                let _ = st.release(&path(2));
                let _ = st.claim(&path(1), CLUSTER, true);
            }
        }
    }
}

#[test]
fn decoders_never_panic_on_random_bytes() {
    let (sizes, log) = valid_state();
    let n = write_count(&log);
    let disks = replay(&sizes, &log, n, false);
    let d = &disks[0].data;
    let samples: Vec<(usize, Vec<u8>)> = vec![
        (0, d[0x1000..0x2000].to_vec()),
        (1, d[0x2000..0x3000].to_vec()),
        (2, d[0x10000..0x10000 + 8192].to_vec()),
        (3, d[0x100000..0x100000 + 8192].to_vec()),
        (4, d[0x300000..0x300000 + 4096].to_vec()),
    ];
    let mut rng = XorShift::new(99);
    for i in 0..6000 {
        let (kind, base) = &samples[i % samples.len()];
        let mut b = if rng.below(3) == 0 {
            let mut r = vec![0u8; rng.below(9000) as usize];
            rng.fill(&mut r);
            r
        } else {
            let mut b = base.clone();
            let len = b.len();
            flip_bits(&mut b, 0..len.min(600), 1 + rng.below(8) as usize, &mut rng);
            if rng.below(4) == 0 {
                b.truncate(rng.below(len as u64 + 1) as usize);
            }
            b
        };
        if rng.below(10) == 0 {
            b.clear();
        }
        match kind {
            0 => {
                let _ = Directory::decode(&b, 0x1000, SIZE);
            }
            1 => {
                let _ = BootPtr::decode(&b, 0x2000, MIB);
            }
            2 => {
                let _ = LabelDir::decode(&b, 0x10000, 0x40000);
            }
            3 => {
                let _ = ObjDb::decode(&b, 0x100000, MIB);
                let _ = decode_volume(&b);
            }
            _ => {
                let _ = BootList::decode(&b);
                let _ = BootList::decode(b.get(..b.len().min(300)).unwrap_or(&[]));
            }
        }
    }
}

/// A state with every layout, member health and a failed ALU.
fn layout_state() -> (Vec<u64>, Vec<Event>) {
    use tierblk_meta::{Layout, LayoutKind, MemberHealth};
    let rec = Recorder::new();
    let mut st = open_rec(&rec, 4, SIZE);
    claim_all(&mut st);
    let a: Vec<_> = (0..4).map(|i| alu_uuid(&st, i)).collect();
    let mirror = Layout {
        kind: LayoutKind::Mirror,
        stripes: 1,
        copies: 2,
        chunk: 0,
    };
    let raid10 = Layout {
        kind: LayoutKind::Raid10,
        stripes: 2,
        copies: 2,
        chunk: 4096,
    };
    let stripe = Layout {
        kind: LayoutKind::Stripe,
        stripes: 2,
        copies: 1,
        chunk: 65536,
    };
    st.create_volume_with(
        "m",
        2 * MIB,
        mirror,
        &[(0, a[0], 2 * MIB), (1, a[1], 2 * MIB)],
    )
    .unwrap();
    st.create_volume_with(
        "r",
        4 * MIB,
        raid10,
        &[
            (0, a[0], 2 * MIB),
            (1, a[1], 2 * MIB),
            (2, a[2], MIB),
            (2, a[0], MIB),
            (3, a[3], 2 * MIB),
        ],
    )
    .unwrap();
    st.create_volume_with("s", 2 * MIB, stripe, &[(0, a[2], MIB), (1, a[3], MIB)])
        .unwrap();
    st.create_volume("v1", MIB, &[(a[3], MIB)]).unwrap();
    st.set_member_health("r", 1, MemberHealth::Failed { fail_seq: 0 })
        .unwrap();
    st.set_member_health("r", 1, MemberHealth::Rebuilding { checkpoint: MIB })
        .unwrap();
    st.fail_alu(a[1]).unwrap();
    // a replaced leg and a job table
    let (def, _job) = st.replace_member("m", 1, a[2]).unwrap();
    st.add_job(tierblk_meta::Job {
        id: 0,
        kind: tierblk_meta::JobKind::Scrub,
        volume: def.id,
        member: None,
        source: None,
        repair: true,
        state: tierblk_meta::JobState::Failed,
        checkpoint: MIB,
        total: 2 * MIB,
        mismatches: 2,
        repaired: 1,
        message: "read error".into(),
        rate: 0,
        dirty_only: false,
    })
    .unwrap();
    // a move in progress: a move job entry (kind 5, with its source member)
    let (_, mv) = st.move_member("v1", 0, a[0]).unwrap();
    assert_eq!(mv.source, Some(0));
    (vec![SIZE; 4], rec.log())
}

#[test]
fn random_corruption_with_layouts_never_panics() {
    let (sizes, log) = layout_state();
    let n = write_count(&log);
    let mut rng = XorShift::new(0xfa11_5eed);
    for case in 0..1500 {
        let mut disks = replay(&sizes, &log, n, false);
        for _ in 0..1 + rng.below(3) {
            let d = rng.below(disks.len() as u64) as usize;
            let regs = regions(disks[d].data.len() as u64);
            let (lo, hi) = regs[rng.below(regs.len() as u64) as usize];
            let data = &mut disks[d].data;
            let hi = hi.min(data.len());
            if lo >= hi {
                continue;
            }
            if rng.below(2) == 0 {
                flip_bits(data, lo..hi, 1 + rng.below(16) as usize, &mut rng);
            } else {
                let s = lo + rng.below((hi - lo) as u64) as usize;
                let e = (s + 1 + rng.below(600) as usize).min(hi);
                rng.fill(&mut data[s..e]);
            }
        }
        let mut st = open_disks(disks, case % 2 == 0);
        let _ = st.volume_problems();
        for v in ["m", "r", "s", "v1"] {
            let _ = st.degraded_members(v);
        }
        if case % 5 == 0 {
            if let Some(img) = st.image().cloned() {
                let _ = st.set_member_health("m", 0, tierblk_meta::MemberHealth::Ok);
                if let Some(a) = img.alus.get(2) {
                    let _ = st.fail_alu(a.uuid);
                }
            }
        }
    }
}

/// The boot list and the volume record have no checksum of their own inside the
/// decoders: feed them mutated encodings directly.
#[test]
fn layout_decoders_never_panic() {
    let (sizes, log) = layout_state();
    let n = write_count(&log);
    let disks = replay(&sizes, &log, n, false);
    let d = &disks[0].data;
    let obj = ObjDb::decode(&d[0x100000..0x200000], 0x100000, MIB).unwrap();
    let vols: Vec<Vec<u8>> = obj
        .volumes()
        .map(tierblk_meta::objdb::encode_volume)
        .collect();
    assert!(vols.len() >= 2);
    let ptr = BootPtr::decode(&d[0x2000..0x3000], 0x2000, MIB)
        .or_else(|_| BootPtr::decode(&d[0x3000..0x4000], 0x3000, MIB))
        .unwrap();
    let off = [0x300000usize, 0x400000][ptr.area as usize];
    let list = d[off..off + ptr.list_len as usize].to_vec();
    let parsed = BootList::decode(&list).unwrap();
    assert_eq!(parsed.failed.len(), 1);
    assert!(
        parsed.jobs.iter().any(|j| j.source.is_some()),
        "no move job to fuzz"
    );
    let mut rng = XorShift::new(7);
    for i in 0..20000 {
        let base = if i % 2 == 0 {
            &list
        } else {
            &vols[i % vols.len()]
        };
        let mut b = base.clone();
        let len = b.len();
        flip_bits(&mut b, 0..len, 1 + rng.below(4) as usize, &mut rng);
        if rng.below(4) == 0 {
            b.truncate(rng.below(len as u64 + 1) as usize);
        }
        if rng.below(8) == 0 {
            let s = rng.below(len as u64) as usize;
            let e = (s + 8).min(b.len());
            if s < e {
                b[s..e].fill(0xff);
            }
        }
        let _ = BootList::decode(&b);
        let _ = decode_volume(&b);
    }
}
