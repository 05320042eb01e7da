//! The metadata archive ring and `Store::restore` (LVM's vgcfgrestore): history
//! lists what commits replaced; a restore brings removed volumes back with their
//! extents and refuses, writing nothing, whenever the result would lose data.

mod common;
use common::*;
use std::io;
use tierblk_meta::disk::{Disk, MemDisk};
use tierblk_meta::mdr::{ARCHIVE_OFFSET, ARCHIVE_SLOT, ARCHIVE_SLOTS};
use tierblk_meta::store::Store;
use tierblk_meta::testing::SharedDisk;
use tierblk_meta::{Layout, LayoutKind, MemberHealth, MetaError};

fn setup(n: usize) -> (Vec<SharedDisk>, Store) {
    let disks = share((0..n).map(|_| MemDisk::new(SIZE)).collect());
    let (mut st, _) = open_shared(&disks, true);
    claim_all(&mut st);
    (disks, st)
}

fn data(disks: &[SharedDisk]) -> Vec<Vec<u8>> {
    disks.iter().map(|d| d.lock().data.clone()).collect()
}

/// The newest archived configuration listing `name`.
fn seq_with(st: &mut Store, name: &str) -> u64 {
    st.history()
        .into_iter()
        .find(|e| e.volumes.iter().any(|v| v == name))
        .unwrap_or_else(|| panic!("no archived configuration lists {name}"))
        .seq
}

/// Refused, and not a byte written anywhere.
fn refused(disks: &[SharedDisk], st: &mut Store, seq: u64, force: bool, want: &str) {
    let before = data(disks);
    let img = st.image().cloned();
    let e = st.restore(seq, force).unwrap_err();
    assert!(matches!(e, MetaError::Refused(_)), "{e}");
    assert!(e.to_string().contains(want), "{e}");
    let p = st.restore_plan(seq, force).unwrap_err();
    assert_eq!(p.to_string(), e.to_string());
    assert!(data(disks) == before, "a refused restore wrote");
    assert_eq!(st.image().cloned(), img);
}

#[test]
fn history_lists_replaced_configurations_newest_first() {
    let (disks, mut st) = setup(2);
    let a0 = alu_uuid(&st, 0);
    st.create_volume("v1", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    let with_v1 = st.image().unwrap().seq;
    st.create_volume("v2", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    st.remove_volume("v1").unwrap();
    let cur = st.image().unwrap().seq;
    let h = st.history();
    assert!(h.windows(2).all(|w| w[0].seq > w[1].seq), "{h:?}");
    assert!(h.iter().all(|e| e.seq < cur));
    assert_eq!(h[0].volumes, vec!["v1", "v2"]);
    let e = h.iter().find(|e| e.seq == with_v1).unwrap();
    assert_eq!(
        (e.volumes.clone(), e.alus, e.copies),
        (vec!["v1".into()], 2, 2)
    );
    assert!(st.archive_problems().is_empty());
    // The archive survives a reopen, and holds the full definitions.
    drop(st);
    let (mut st, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty() && rep.problems.is_empty());
    assert_eq!(st.history(), h);
    let rec = st.archived(with_v1).unwrap();
    assert_eq!(rec.volumes.len(), 1);
    assert_eq!(rec.volumes[0].segments.len(), 1);
    assert!(st.archived(cur).is_none());
}

#[test]
fn restore_brings_back_a_removed_volume_without_touching_data() {
    let (disks, mut st) = setup(2);
    let (a0, a1) = (alu_uuid(&st, 0), alu_uuid(&st, 1));
    st.create_volume("keep", 2 * MIB, &[(a1, 2 * MIB)]).unwrap();
    st.create_volume_with(
        "m",
        2 * MIB,
        Layout {
            kind: LayoutKind::Mirror,
            stripes: 1,
            copies: 2,
            chunk: 0,
        },
        &[(0, a0, 2 * MIB), (1, a1, 2 * MIB)],
    )
    .unwrap();
    let m = st.image().unwrap().volumes[1].clone();
    // Put data in the volume's extents.
    for g in &m.segments {
        let i = if g.alu == a0 { 0 } else { 1 };
        let mut d = disks[i].lock();
        for (k, b) in d.data[g.start as usize..(g.start + g.len) as usize]
            .iter_mut()
            .enumerate()
        {
            *b = (k % 251) as u8;
        }
    }
    st.remove_volume("m").unwrap();
    assert_eq!(st.image().unwrap().volumes.len(), 1);
    let seq = seq_with(&mut st, "m");
    let before = data(&disks);
    let plan = st.restore_plan(seq, false).unwrap();
    assert_eq!(
        (plan.restored.clone(), plan.unchanged.clone()),
        (vec!["m".to_string()], vec!["keep".to_string()])
    );
    assert!(data(&disks) == before, "restore_plan wrote");
    let done = st.restore(seq, false).unwrap();
    assert_eq!(done, plan);
    let back = st
        .image()
        .unwrap()
        .volumes
        .iter()
        .find(|v| v.name == "m")
        .cloned()
        .unwrap();
    assert_eq!(back.definition(), m.definition());
    assert_eq!(back.members, vec![MemberHealth::Ok; 2]);
    check_healthy(&st);
    // Only metadata changed: every byte of the data areas is as it was.
    let after = data(&disks);
    for (b, a) in before.iter().zip(&after) {
        let r = 0x80_0000..(SIZE - MIB) as usize;
        assert!(b[r.clone()] == a[r], "data area written");
    }
    // Reopened: the same image, no problems, and the pre-restore state archived.
    let img = st.image().cloned();
    drop(st);
    let (mut st, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty() && rep.problems.is_empty(), "{rep:?}");
    assert_eq!(st.image().cloned(), img);
    assert_eq!(st.history()[0].volumes, vec!["keep"]);
    // Restoring the same configuration again changes nothing.
    let again = st.restore(seq, false).unwrap();
    assert!(again.restored.is_empty() && again.dropped.is_empty());
}

#[test]
fn restore_refuses_what_would_lose_data() {
    let (disks, mut st) = setup(3);
    let (a0, a1, a2) = (alu_uuid(&st, 0), alu_uuid(&st, 1), alu_uuid(&st, 2));
    st.create_volume("v1", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    st.create_volume("onalu2", 2 * MIB, &[(a2, 2 * MIB)])
        .unwrap();
    let s1 = st.image().unwrap().seq;
    // A volume created since would be dropped: refused without force.
    st.create_volume("later", 2 * MIB, &[(a1, 2 * MIB)])
        .unwrap();
    refused(&disks, &mut st, s1, false, "would drop volume(s) later");
    // Unknown or current sequence numbers.
    assert!(matches!(
        st.restore(10_000, true),
        Err(MetaError::Invalid(_))
    ));
    assert!(matches!(st.restore(0, true), Err(MetaError::NotFound(_))));
    // v1's extents handed to another volume now: refused, even with force.
    st.remove_volume("v1").unwrap();
    st.create_volume("thief", 2 * MIB, &[(a0, 2 * MIB)])
        .unwrap();
    refused(&disks, &mut st, s1, true, "now allocated to volume thief");
    // ... and after that volume is gone too (its data overwrote v1's).
    st.remove_volume("thief").unwrap();
    refused(
        &disks,
        &mut st,
        s1,
        true,
        "was allocated to volume thief since",
    );
    // A name taken by a different volume.
    let s2 = seq_with(&mut st, "onalu2");
    st.remove_volume("onalu2").unwrap();
    st.create_volume("onalu2", 2 * MIB, &[(a1, 2 * MIB)])
        .unwrap();
    refused(
        &disks,
        &mut st,
        s2,
        true,
        "the name now belongs to a different volume",
    );
    // An ALU that left the cluster.
    st.remove_volume("onalu2").unwrap();
    st.release(&path(2)).unwrap();
    refused(
        &disks,
        &mut st,
        s2,
        true,
        "is no longer part of the cluster",
    );
    // With force, a restore that only drops newer volumes goes through.
    st.create_volume("newest", 2 * MIB, &[(a1, 2 * MIB)])
        .unwrap();
    let s4 = seq_with(&mut st, "later");
    assert_eq!(st.history()[0].volumes, vec!["later"]);
    let p = st.restore(s4, true).unwrap();
    assert_eq!(p.dropped, vec!["newest"]);
    let names: Vec<_> = st
        .image()
        .unwrap()
        .volumes
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(names, vec!["later"]);
    check_healthy(&st);
}

/// A disk whose archive area cannot be written.
struct NoArchive(MemDisk);

impl Disk for NoArchive {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if (ARCHIVE_OFFSET..ARCHIVE_OFFSET + ARCHIVE_SLOT * ARCHIVE_SLOTS).contains(&offset) {
            return Err(io::Error::other("archive area unwritable"));
        }
        self.0.write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn a_failed_archive_write_never_fails_the_commit() {
    let v: Vec<(String, Box<dyn Disk>)> = vec![(
        path(0),
        Box::new(NoArchive(MemDisk::new(SIZE))) as Box<dyn Disk>,
    )];
    let mut st = Store::open(v, Some(CLUSTER), true).unwrap().0;
    claim_all(&mut st);
    let a0 = alu_uuid(&st, 0);
    st.create_volume("v1", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    st.remove_volume("v1").unwrap();
    assert!(st.image().unwrap().volumes.is_empty());
    let p = st.archive_problems();
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("archive area unwritable"), "{p:?}");
    assert!(st.history().is_empty());
    // Not poisoned: further commits work.
    st.create_volume("v2", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Damaged archive rings (bit flips, garbage, zeroed ranges) never make history,
/// archived or restore panic, and never change the committed image.
#[test]
fn random_archive_corruption_never_panics() {
    let (disks, mut st) = setup(2);
    let (a0, a1) = (alu_uuid(&st, 0), alu_uuid(&st, 1));
    st.create_volume("v1", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    st.create_volume("v2", 2 * MIB, &[(a1, 2 * MIB)]).unwrap();
    st.remove_volume("v1").unwrap();
    let img = st.image().cloned();
    drop(st);
    let base = data(&disks);
    let mut rng = Rng(0x0a2c_417e);
    let lo = ARCHIVE_OFFSET as usize;
    let span = (ARCHIVE_SLOT * ARCHIVE_SLOTS) as usize;
    for case in 0..300 {
        let ds: Vec<SharedDisk> = base
            .iter()
            .map(|b| {
                let mut m = MemDisk::new(SIZE);
                m.data = b.clone();
                SharedDisk::new(m)
            })
            .collect();
        for _ in 0..1 + rng.next() % 8 {
            let mut d = ds[(rng.next() % 2) as usize].lock();
            // mostly within record headers and bodies of the used slots
            let slot = (rng.next() % ARCHIVE_SLOTS) as usize * ARCHIVE_SLOT as usize;
            let s = lo + slot + (rng.next() % 4096) as usize;
            let e = (s + 1 + (rng.next() % 64) as usize).min(lo + span);
            match rng.next() % 3 {
                0 => d.data[s] ^= 1 << (rng.next() % 8),
                1 => d.data[s..e].iter_mut().for_each(|b| *b = rng.next() as u8),
                _ => d.data[s..e].fill(0),
            }
        }
        let (mut st, _) = open_shared(&ds, case % 2 == 0);
        assert_eq!(st.image().cloned(), img);
        let h = st.history();
        for e in &h {
            let _ = st.archived(e.seq);
        }
        if let Some(e) = h.last() {
            let _ = st.restore(e.seq, case % 3 == 0);
        }
    }
}
