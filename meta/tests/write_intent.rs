//! Write-intent slots: every leg of a mirror or raid10 volume gets a slot in the
//! write-intent area of the ALU holding its first segment; allocation is derived from
//! the committed definitions (lowest free slot), survives a reopen, is freed by a
//! volume removal, moves with a replaced leg, and is refused when an ALU is full.

mod common;
use common::*;
use tierblk_meta::mdr::{WI_OFFSET, WI_SLOT, WI_SLOTS};
use tierblk_meta::store::Store;
use tierblk_meta::testing::SharedDisk;
use tierblk_meta::{Layout, LayoutKind, MemDisk, MetaError, Uuid};

fn mirror(k: u16) -> Layout {
    Layout {
        kind: LayoutKind::Mirror,
        stripes: 1,
        copies: k,
        chunk: 0,
    }
}

fn raid10(n: u16, k: u16) -> Layout {
    Layout {
        kind: LayoutKind::Raid10,
        stripes: n,
        copies: k,
        chunk: 4096,
    }
}

fn cluster(n: usize, size: u64) -> (Vec<SharedDisk>, Store, Vec<Uuid>) {
    let disks = share((0..n).map(|_| MemDisk::new(size)).collect());
    let (mut st, _) = open_shared(&disks, true);
    claim_all(&mut st);
    let a = (0..n).map(|i| alu_uuid(&st, i)).collect();
    (disks, st, a)
}

fn at(slot: u64) -> u64 {
    WI_OFFSET + slot * WI_SLOT
}

fn mirror2(st: &mut Store, name: &str, a: Uuid, b: Uuid) -> tierblk_meta::VolumeDef {
    st.create_volume_with(name, MIB, mirror(2), &[(0, a, MIB), (1, b, MIB)])
        .unwrap()
}

#[test]
fn legs_get_the_lowest_free_slot_on_their_first_alu() {
    let (disks, mut st, a) = cluster(4, SIZE);
    // Linear and stripe volumes have no slots.
    let lin = st.create_volume("lin", MIB, &[(a[0], MIB)]).unwrap();
    assert!(lin.wi_slots.is_empty());
    assert_eq!(st.wi_location("lin", 0), None);
    let m1 = mirror2(&mut st, "m1", a[0], a[1]);
    assert_eq!(m1.wi_slots, vec![0, 0]);
    assert_eq!(st.wi_location("m1", 0), Some((a[0], at(0))));
    assert_eq!(st.wi_location("m1", 1), Some((a[1], at(0))));
    assert_eq!(st.wi_location("m1", 2), None);
    assert_eq!(st.wi_location("nope", 0), None);
    // A leg made of several pieces: its slot is on the ALU of the first piece.
    let m2 = st
        .create_volume_with(
            "m2",
            2 * MIB,
            mirror(3),
            &[
                (0, a[1], 2 * MIB),
                (1, a[2], MIB),
                (1, a[3], MIB),
                (2, a[0], 2 * MIB),
            ],
        )
        .unwrap();
    assert_eq!(m2.wi_slots, vec![1, 0, 1]);
    assert_eq!(m2.wi_location(1), Some((a[2], at(0))));
    assert_eq!(m2.wi_location(2), Some((a[0], at(1))));
    // raid10: members of different mirrors on one ALU get different slots.
    let r = st
        .create_volume_with(
            "r",
            2 * MIB,
            raid10(2, 2),
            &[
                (0, a[0], MIB),
                (1, a[1], MIB),
                (2, a[0], MIB),
                (3, a[2], MIB),
            ],
        )
        .unwrap();
    assert_eq!(r.wi_slots, vec![2, 2, 3, 1]);
    // Persisted in the definition: a reopen sees the same slots.
    drop(st);
    let (st, _) = open_shared(&disks, false);
    let img = st.image().unwrap();
    let slots = |n: &str| {
        img.volumes
            .iter()
            .find(|v| v.name == n)
            .unwrap()
            .wi_slots
            .clone()
    };
    assert_eq!(slots("m1"), vec![0, 0]);
    assert_eq!(slots("m2"), vec![1, 0, 1]);
    assert_eq!(slots("r"), vec![2, 2, 3, 1]);
    assert!(slots("lin").is_empty());
    check_healthy(&st);
}

#[test]
fn removing_a_volume_frees_its_slots() {
    let (_disks, mut st, a) = cluster(2, SIZE);
    mirror2(&mut st, "m1", a[0], a[1]);
    mirror2(&mut st, "m2", a[0], a[1]);
    mirror2(&mut st, "m3", a[1], a[0]);
    assert_eq!(st.wi_location("m3", 0), Some((a[1], at(2))));
    st.remove_volume("m1").unwrap();
    // Slot 0 is free again on both ALUs: the next legs take it.
    let m4 = mirror2(&mut st, "m4", a[0], a[1]);
    assert_eq!(m4.wi_slots, vec![0, 0]);
    let m5 = mirror2(&mut st, "m5", a[0], a[1]);
    assert_eq!(m5.wi_slots, vec![3, 3]);
    check_healthy(&st);
}

#[test]
fn a_replaced_leg_gets_a_slot_on_its_new_alu() {
    let (disks, mut st, a) = cluster(3, SIZE);
    mirror2(&mut st, "x", a[2], a[1]);
    mirror2(&mut st, "y", a[2], a[0]);
    let m = mirror2(&mut st, "m", a[0], a[1]);
    assert_eq!(m.wi_slots, vec![1, 1]);
    // a[2] has slots 0 and 1 in use: the new leg takes 2; leg 0 keeps its slot.
    let (def, _job) = st.replace_member("m", 1, a[2]).unwrap();
    assert_eq!(def.wi_slots, vec![1, 2]);
    assert_eq!(st.wi_location("m", 1), Some((a[2], at(2))));
    assert_eq!(st.wi_location("m", 0), Some((a[0], at(1))));
    // The old slot on a[1] is free: a new leg there takes it.
    let z = mirror2(&mut st, "z", a[1], a[0]);
    assert_eq!(z.wi_slots, vec![1, 2]);
    drop(st);
    let (st, _) = open_shared(&disks, false);
    assert_eq!(st.wi_location("m", 1), Some((a[2], at(2))));
}

#[test]
fn a_full_alu_refuses_new_legs_without_writing() {
    // Two raid10 volumes of 256 mirrors fill every slot of ALU 0 (legs 0) and of
    // ALU 1 (legs 1): 512 legs of 1 MiB on each.
    let size = 1200 * MIB;
    let (disks, mut st, a) = cluster(3, size);
    let plan = |alus: [Uuid; 2]| -> Vec<(u16, Uuid, u64)> {
        (0..512u16)
            .map(|m| (m, alus[usize::from(m % 2)], MIB))
            .collect()
    };
    let r1 = st
        .create_volume_with("r1", 256 * MIB, raid10(256, 2), &plan([a[0], a[1]]))
        .unwrap();
    assert_eq!(r1.wi_slots[510], 255);
    let r2 = st
        .create_volume_with("r2", 256 * MIB, raid10(256, 2), &plan([a[0], a[1]]))
        .unwrap();
    assert_eq!(r2.wi_slots[511], (WI_SLOTS - 1) as u16);
    let before: Vec<Vec<u8>> = disks.iter().map(|d| d.lock().data.clone()).collect();
    // A create with a leg on a full ALU is refused with a clear error, whichever leg.
    for (name, plan) in [
        ("m", [(0, a[2], MIB), (1, a[0], MIB)]),
        ("m", [(0, a[1], MIB), (1, a[2], MIB)]),
    ] {
        let e = st
            .create_volume_with(name, MIB, mirror(2), &plan)
            .unwrap_err();
        assert!(matches!(e, MetaError::NoSpace(_)), "{e}");
        let msg = e.to_string();
        let full = if plan[0].1 == a[2] { a[0] } else { a[1] };
        assert!(
            msg.contains("no free write-intent slot") && msg.contains(&full.to_string()),
            "{msg}"
        );
    }
    // ... and writes nothing.
    for (d, b) in disks.iter().zip(&before) {
        assert!(d.lock().data == *b, "a refused create wrote");
    }
    // Linear volumes need no slot and still fit.
    st.create_volume("lin", MIB, &[(a[0], MIB)]).unwrap();
    // Removing one raid10 frees its slots.
    st.remove_volume("r1").unwrap();
    let m = st
        .create_volume_with("m", MIB, mirror(2), &[(0, a[2], MIB), (1, a[0], MIB)])
        .unwrap();
    assert_eq!(m.wi_slots, vec![0, 0]);
    check_healthy(&st);
}

#[test]
fn replace_onto_a_full_alu_is_refused() {
    let (_disks, mut st, a) = cluster(3, 600 * MIB);
    // ALU 2 holds the legs 1 of two raid10 volumes of 256 mirrors: full.
    let plan = |alus: [Uuid; 2]| -> Vec<(u16, Uuid, u64)> {
        (0..512u16)
            .map(|m| (m, alus[usize::from(m % 2)], MIB))
            .collect()
    };
    st.create_volume_with("r1", 256 * MIB, raid10(256, 2), &plan([a[1], a[2]]))
        .unwrap();
    st.create_volume_with("r2", 256 * MIB, raid10(256, 2), &plan([a[0], a[2]]))
        .unwrap();
    let m = mirror2(&mut st, "m", a[0], a[1]);
    assert_eq!(m.wi_slots, vec![256, 256]);
    let e = st.replace_member("m", 0, a[2]).unwrap_err();
    assert!(matches!(e, MetaError::NoSpace(_)), "{e}");
    assert!(e.to_string().contains("no free write-intent slot"), "{e}");
    // After a removal the replace succeeds and takes the lowest freed slot.
    st.remove_volume("r2").unwrap();
    let (def, _) = st.replace_member("m", 0, a[2]).unwrap();
    assert_eq!(def.wi_location(0), Some((a[2], at(256))));
    check_healthy(&st);
}
