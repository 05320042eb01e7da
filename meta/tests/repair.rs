//! Repair rules: single bad copies are reported and (with repair=true) rewritten from
//! the good copy; an ALU whose regions are bad on every copy is Damaged, its volumes
//! are held offline and its bytes are never written.

mod common;
use common::*;
use tierblk_meta::store::AluState;
use tierblk_meta::testing::{flip_bits, replay, Recorder, SharedDisk, XorShift};

const LABEL_A: usize = 0x10000;
const LABEL_B: usize = 0x50000;
const PTR_A: usize = 0x2000;
const PTR_B: usize = 0x3000;

/// Two ALUs, volume "v1" spanning both, volume "v0" on ALU 0 only.
fn setup() -> Vec<SharedDisk> {
    let rec = Recorder::new();
    let mut st = open_rec(&rec, 2, SIZE);
    st.claim(&path(0), CLUSTER, false).unwrap();
    st.claim(&path(1), CLUSTER, false).unwrap();
    let (a0, a1) = (alu_uuid(&st, 0), alu_uuid(&st, 1));
    st.create_volume("v0", 2 * MIB, &[(a0, 2 * MIB)]).unwrap();
    st.create_volume("v1", 6 * MIB, &[(a0, 4 * MIB), (a1, 2 * MIB)])
        .unwrap();
    let log = rec.log();
    share(replay(&[SIZE; 2], &log, write_count(&log), false))
}

fn bytes(d: &SharedDisk) -> Vec<u8> {
    d.lock().data.clone()
}

#[test]
fn single_bad_copies_are_repaired() {
    let disks = setup();
    let (st, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty() && rep.problems.is_empty(), "{rep:?}");
    let good = st.image().cloned();
    drop(st);
    let mut rng = XorShift::new(7);
    // One label copy on ALU 0, both boot pointers of ALU 1 (a boot set member).
    flip_bits(
        &mut disks[0].lock().data,
        LABEL_A..LABEL_A + 100,
        5,
        &mut rng,
    );
    disks[1].lock().data[PTR_A + 40] ^= 0xff;
    disks[1].lock().data[PTR_B + 40] ^= 0xff;
    let before: Vec<Vec<u8>> = disks.iter().map(bytes).collect();
    let (st, rep) = open_shared(&disks, false);
    assert_eq!(st.image().cloned(), good);
    assert!(st.volume_problems().is_empty());
    assert_eq!(rep.repairs.len(), 2, "{rep:?}");
    assert!(
        rep.repairs
            .iter()
            .any(|r| r.contains("/dev/vda: label directory: copy A")),
        "{rep:?}"
    );
    assert!(
        rep.repairs.iter().any(|r| r.contains("/dev/vdb: boot set")),
        "{rep:?}"
    );
    drop(st);
    let after: Vec<Vec<u8>> = disks.iter().map(bytes).collect();
    assert!(before == after, "read-only open wrote to disk");

    let (st, rep) = open_shared(&disks, true);
    assert_eq!(rep.repairs.len(), 2);
    assert!(
        rep.repairs.iter().all(|r| r.ends_with("(repaired)")),
        "{rep:?}"
    );
    assert_eq!(st.image().cloned(), good);
    drop(st);
    let (st, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty(), "{rep:?}");
    assert_eq!(st.image().cloned(), good);
    check_healthy(&st);
}

#[test]
fn directory_restored_from_backup() {
    let disks = setup();
    let good = open_shared(&disks, false).0.image().cloned();
    disks[0].lock().data[0x1000..0x2000].fill(0);
    let (st, rep) = open_shared(&disks, false);
    assert_eq!(st.image().cloned(), good);
    assert!(
        rep.repairs
            .iter()
            .any(|r| r.contains("directory: primary copy invalid")),
        "{rep:?}"
    );
    drop(st);
    let (_, rep) = open_shared(&disks, true);
    assert_eq!(rep.repairs.len(), 1);
    let (st, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty(), "{rep:?}");
    assert_eq!(st.image().cloned(), good);
}

#[test]
fn all_label_copies_bad_means_damaged_and_untouched() {
    let disks = setup();
    disks[1].lock().data[LABEL_A + 20] ^= 1;
    disks[1].lock().data[LABEL_B + 20] ^= 1;
    let damaged_before = bytes(&disks[1]);
    let (mut st, rep) = open_shared(&disks, true);
    assert!(
        matches!(st.alus()[1].state, AluState::Damaged { .. }),
        "{:?}",
        st.alus()[1]
    );
    let probs = st.volume_problems();
    assert_eq!(probs.len(), 1, "{probs:?}");
    assert_eq!(probs[0].0, "v1");
    assert!(probs[0].1.contains("damaged"), "{probs:?}");
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("/dev/vdb: label directory: both copies invalid")),
        "{rep:?}"
    );
    let a1 = st.image().unwrap().alus[1].uuid;
    let a0 = st.image().unwrap().alus[0].uuid;
    assert!(st.create_volume("x", MIB, &[(a1, MIB)]).is_err());
    assert!(st.claim(&path(1), CLUSTER, true).is_err());
    assert!(st.release(&path(1)).is_err());
    // Operations not involving the damaged ALU still work, and never write it.
    st.create_volume("y", MIB, &[(a0, MIB)]).unwrap();
    st.remove_volume("v1").unwrap();
    drop(st);
    assert!(
        bytes(&disks[1]) == damaged_before,
        "damaged ALU was written"
    );
    let (st, _) = open_shared(&disks, true);
    let names: Vec<String> = st
        .image()
        .unwrap()
        .volumes
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(names, vec!["v0".to_string(), "y".to_string()]);
    drop(st);
    assert!(
        bytes(&disks[1]) == damaged_before,
        "damaged ALU was written"
    );
}

#[test]
fn boot_set_unreadable_everywhere_holds_volumes_offline() {
    let disks = setup();
    for d in &disks {
        let mut g = d.lock();
        g.data[PTR_A + 20] ^= 0x55;
        g.data[PTR_B + 20] ^= 0x55;
    }
    let before: Vec<Vec<u8>> = disks.iter().map(bytes).collect();
    let (mut st, rep) = open_shared(&disks, true);
    let img = st.image().cloned().expect("signature still derivable");
    assert_eq!(img.sig.name, CLUSTER);
    assert_eq!(img.alus.len(), 2);
    let mut probs = st.volume_problems();
    probs.sort();
    assert_eq!(probs.len(), 2, "{probs:?}");
    for (_, why) in &probs {
        assert_eq!(why, "boot set unreadable on every ALU; volume held offline");
    }
    assert!(!rep.problems.is_empty());
    let a0 = img.alus[0].uuid;
    let e = st.create_volume("x", MIB, &[(a0, MIB)]).unwrap_err();
    assert!(e.to_string().contains("boot set unreadable"), "{e}");
    assert!(st.remove_volume("v0").is_err());
    assert!(st.release(&path(0)).is_err());
    assert!(st.claim(&path(0), CLUSTER, true).is_err());
    drop(st);
    let after: Vec<Vec<u8>> = disks.iter().map(bytes).collect();
    assert!(before == after, "nothing may be written");
}

#[test]
fn stale_member_loses_and_is_healed() {
    // ALU 1 keeps an old boot list (simulated by restoring its old bytes).
    let disks = setup();
    let old1 = bytes(&disks[1]);
    let (mut st, _) = open_shared(&disks, true);
    let a0 = st.image().unwrap().alus[0].uuid;
    st.create_volume("later", MIB, &[(a0, MIB)]).unwrap();
    let want = st.image().cloned();
    drop(st);
    disks[1].lock().data = old1;
    let (st, rep) = open_shared(&disks, true);
    assert_eq!(st.image().cloned(), want);
    assert!(
        rep.repairs
            .iter()
            .any(|r| r.contains("/dev/vdb: boot set: stale copy")),
        "{rep:?}"
    );
    drop(st);
    let (st, rep) = open_shared(&disks, false);
    assert!(rep.repairs.is_empty(), "{rep:?}");
    assert_eq!(st.image().cloned(), want);
}

#[test]
fn volume_hidden_by_damage_names_the_damaged_region() {
    let disks = setup();
    // v0 lives on ALU 0 only: with both of its label copies bad, no copy of
    // v0's definition is readable anywhere.
    disks[0].lock().data[LABEL_A + 20] ^= 1;
    disks[0].lock().data[LABEL_B + 20] ^= 1;
    let (st, _rep) = open_shared(&disks, true);
    let probs = st.volume_problems();
    let v0 = probs
        .iter()
        .find(|(n, _)| n == "v0")
        .expect("v0 held offline");
    assert!(
        v0.1.contains("/dev/vda: label directory: both copies invalid"),
        "{probs:?}"
    );
}
