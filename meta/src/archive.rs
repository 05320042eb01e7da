//! The metadata archive ring (LVM's `/etc/lvm/archive`, kept on the disks): before
//! every boot set commit, each boot set member receives a copy of the configuration
//! the commit replaces — the boot list and the definition of every volume it lists —
//! in one of [`ARCHIVE_SLOTS`] fixed slots of the archive area (`mdr::ARCHIVE_*`).
//! `Store::history`, `Store::archived` and `Store::restore` read it back.
//!
//! A record is written whole in one write; a torn or stale record fails its CRC or
//! its checks and is ignored. Nothing in the commit protocol depends on the ring:
//! losing it only loses history. See `docs/FORMAT.md`, "Metadata archive".

use crate::bootset::BootList;
use crate::codec::{put_u32, round_up, Rd, Wr};
use crate::error::FormatError;
use crate::mdr::{ARCHIVE_OFFSET, ARCHIVE_SLOT, ARCHIVE_SLOTS, BLOCK};
use crate::objdb::{decode_volume, def_crc, encode_volume};
use crate::types::VolumeDef;

pub const ARCHIVE_MAGIC: [u8; 8] = *b"TBLKARCV";
pub const ARCHIVE_VERSION: u32 = 1;
/// Bytes of the record header.
pub const ARCHIVE_HEADER_LEN: usize = 64;
/// Offset of the CRC field; the CRC covers header bytes 0..60 followed by the body.
pub const ARCHIVE_CRC_OFFSET: usize = 60;
/// Bytes before each definition in the body: length u32, reserved u32.
pub const ARCHIVE_DEF_HEADER_LEN: usize = 8;

/// One archived configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveRecord {
    /// Unix seconds at which it was archived (when the commit replacing it began).
    pub time: u64,
    /// The boot list as it was committed (its `seq` is the record's sequence).
    pub list: BootList,
    /// The definitions of the listed volumes (health all Ok: health is in the
    /// list). A volume whose definition was unavailable then has none.
    pub volumes: Vec<VolumeDef>,
}

/// Slot index of the record archiving boot list sequence `seq`.
pub fn slot_of(seq: u64) -> u64 {
    seq % ARCHIVE_SLOTS
}

/// Byte offset on the ALU of slot `slot`.
pub fn slot_offset(slot: u64) -> u64 {
    ARCHIVE_OFFSET + slot * ARCHIVE_SLOT
}

impl ArchiveRecord {
    /// Encode for its slot (padded to 4 KiB); `Err(len)` when the record would not
    /// fit in a slot (it is then not archived).
    pub fn encode(&self) -> Result<Vec<u8>, usize> {
        let list = self.list.encode();
        let mut defs = Wr::new();
        for v in &self.volumes {
            let b = encode_volume(&v.definition());
            defs.u32(b.len() as u32);
            defs.u32(0);
            defs.bytes(&b);
        }
        let total = ARCHIVE_HEADER_LEN + list.len() + defs.v.len();
        if total as u64 > ARCHIVE_SLOT {
            return Err(total);
        }
        let own = slot_offset(slot_of(self.list.seq));
        let mut w = Wr::new();
        w.bytes(&ARCHIVE_MAGIC);
        w.u32(ARCHIVE_VERSION);
        w.u32(0);
        w.u64(self.list.seq);
        w.u64(self.time);
        w.u64(own);
        w.u32(list.len() as u32);
        w.u32(self.volumes.len() as u32);
        w.u32(defs.v.len() as u32);
        w.pad_to(ARCHIVE_HEADER_LEN);
        w.bytes(&list);
        w.bytes(&defs.v);
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&w.v[..ARCHIVE_CRC_OFFSET]),
            &w.v[ARCHIVE_HEADER_LEN..],
        );
        w.pad_to(round_up(total, BLOCK as usize));
        let mut b = w.v;
        put_u32(&mut b, ARCHIVE_CRC_OFFSET, crc);
        Ok(b)
    }

    /// Bytes to read for the record whose first block is `head`: `Err` when the
    /// header is not one of ours (blank, garbage, lengths out of the slot).
    pub fn needed_len(head: &[u8]) -> Result<usize, FormatError> {
        let mut r = Rd::new(head);
        if r.take(8)? != ARCHIVE_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let mut r = Rd::at(head, 40);
        let l = r.u32()? as u64;
        r.u32()?;
        let d = r.u32()? as u64;
        let total = ARCHIVE_HEADER_LEN as u64 + l + d;
        if total > ARCHIVE_SLOT {
            return Err(FormatError::Invalid("archive record length".into()));
        }
        Ok(round_up(total as usize, BLOCK as usize))
    }

    /// Decode the record read at `read_offset`. Every field is checked: magic,
    /// version, flags, own offset (the slot its sequence selects), lengths, CRC,
    /// reserved bytes, the boot list (same sequence), and each definition (decodes,
    /// listed in the boot list with the definition CRC recorded there, once).
    pub fn decode(b: &[u8], read_offset: u64) -> Result<ArchiveRecord, FormatError> {
        let need = Self::needed_len(b)?;
        let b = b.get(..need).ok_or(FormatError::Truncated)?;
        let mut r = Rd::at(b, 8);
        let version = r.u32()?;
        let flags = r.u32()?;
        let seq = r.u64()?;
        let time = r.u64()?;
        let own = r.u64()?;
        let l = r.u32()? as usize;
        let n = r.u32()? as usize;
        let d = r.u32()? as usize;
        let body = b
            .get(ARCHIVE_HEADER_LEN..ARCHIVE_HEADER_LEN + l + d)
            .ok_or(FormatError::Truncated)?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..ARCHIVE_CRC_OFFSET]), body);
        if crc != Rd::at(b, ARCHIVE_CRC_OFFSET).u32()? {
            return Err(FormatError::BadChecksum);
        }
        if version != ARCHIVE_VERSION {
            return Err(FormatError::Version(version));
        }
        let bad = |s: &str| FormatError::Invalid(format!("archive record: {s}"));
        if flags != 0 || b[52..ARCHIVE_CRC_OFFSET].iter().any(|&x| x != 0) {
            return Err(bad("flags or reserved bytes"));
        }
        if own != read_offset || own != slot_offset(slot_of(seq)) {
            return Err(FormatError::WrongOffset {
                found: read_offset,
                claimed: own,
            });
        }
        let list = BootList::decode(&body[..l])?;
        if list.seq != seq {
            return Err(bad("sequence differs from its boot list's"));
        }
        let mut r = Rd::new(&body[l..]);
        let mut volumes: Vec<VolumeDef> = Vec::with_capacity(n.min(list.volumes.len()));
        for _ in 0..n {
            let len = r.u32()? as usize;
            if r.u32()? != 0 {
                return Err(bad("definition reserved bytes"));
            }
            let v = decode_volume(r.take(len)?)?;
            let listed = list
                .volumes
                .iter()
                .any(|bv| bv.id == v.id && bv.def_crc == def_crc(&v));
            if !listed || volumes.iter().any(|x| x.id == v.id) {
                return Err(bad("definition not in its boot list"));
            }
            volumes.push(v);
        }
        if r.remaining() != 0 {
            return Err(bad("definitions length"));
        }
        Ok(ArchiveRecord {
            time,
            list,
            volumes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootset::BootVol;
    use crate::types::{ClusterSig, Layout, MemberHealth, Segment, Uuid};

    fn sample() -> ArchiveRecord {
        let v = VolumeDef {
            id: 3,
            name: "v1".into(),
            size: 2 << 20,
            wwn: [0x61; 16],
            segments: vec![Segment {
                partition_id: 4,
                alu: Uuid([6; 16]),
                start: 8 << 20,
                len: 2 << 20,
                member: 0,
            }],
            layout: Layout::linear(),
            members: vec![MemberHealth::Ok],
            snapshot: None,
            wi_slots: vec![],
            moving: None,
        };
        let list = BootList {
            sig: ClusterSig {
                name: "clu".into(),
                uuid: Uuid([5; 16]),
            },
            seq: 21,
            next_id: 5,
            next_fail_seq: 1,
            alus: vec![crate::types::AluRecord {
                uuid: Uuid([6; 16]),
                wwn: [0x60; 16],
                size: 64 << 20,
                data_start: 8 << 20,
                data_end: 63 << 20,
                boot_member: true,
            }],
            volumes: vec![BootVol {
                id: 3,
                name: "v1".into(),
                size: 2 << 20,
                wwn: [0x61; 16],
                def_crc: def_crc(&v),
                layout: Layout::linear(),
                health: vec![MemberHealth::Ok],
            }],
            failed: vec![],
            jobs: vec![],
            flags: 0,
            schedules: vec![],
            legacy: vec![],
            exposures: vec![],
        };
        ArchiveRecord {
            time: 1_700_000_000,
            list,
            volumes: vec![v],
        }
    }

    #[test]
    fn roundtrip_and_checks() {
        let a = sample();
        let b = a.encode().unwrap();
        assert_eq!(b.len(), 4096);
        let off = slot_offset(21 % ARCHIVE_SLOTS);
        assert_eq!(ArchiveRecord::decode(&b, off).unwrap(), a);
        // another slot, a flipped bit, a blank block
        assert!(ArchiveRecord::decode(&b, slot_offset(0)).is_err());
        let mut c = b.clone();
        c[100] ^= 1;
        assert_eq!(
            ArchiveRecord::decode(&c, off),
            Err(FormatError::BadChecksum)
        );
        assert!(ArchiveRecord::decode(&[0u8; 4096], off).is_err());
        // a definition that does not match the list's CRC
        let mut w = a.clone();
        w.volumes[0].size = 4 << 20;
        w.volumes[0].segments[0].len = 4 << 20;
        let e = w.encode().unwrap();
        assert!(ArchiveRecord::decode(&e, off).is_err());
        // too large for a slot: not encoded
        let mut big = a.clone();
        big.volumes = (0..1500).map(|_| a.volumes[0].clone()).collect();
        assert!(big.encode().is_err());
    }

    /// Randomly corrupted records (bit flips, garbage, truncation, forged lengths
    /// with a recomputed CRC) are rejected or decoded, never a panic.
    #[test]
    fn random_corruption_never_panics() {
        let a = sample();
        let b = a.encode().unwrap();
        let off = slot_offset(slot_of(a.list.seq));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut c = b.clone();
            for _ in 0..1 + next() % 6 {
                let p = (next() % c.len() as u64) as usize;
                c[p] = next() as u8;
            }
            if i % 3 == 0 {
                // recompute the CRC so the decoders behind it see the damage
                if let Ok(need) = ArchiveRecord::needed_len(&c) {
                    if need <= c.len() {
                        let l = u32::from_le_bytes(c[40..44].try_into().unwrap()) as usize;
                        let d = u32::from_le_bytes(c[48..52].try_into().unwrap()) as usize;
                        let body = &c[ARCHIVE_HEADER_LEN..ARCHIVE_HEADER_LEN + l + d];
                        let crc =
                            crc32c::crc32c_append(crc32c::crc32c(&c[..ARCHIVE_CRC_OFFSET]), body);
                        put_u32(&mut c, ARCHIVE_CRC_OFFSET, crc);
                    }
                }
            }
            if i % 7 == 0 {
                c.truncate((next() % c.len() as u64) as usize);
            }
            let _ = ArchiveRecord::decode(&c, off);
        }
    }

    /// docs/FORMAT.md documents the record as encoded here.
    #[test]
    fn format_doc_matches_archive() {
        let doc = include_str!("../../docs/FORMAT.md");
        for row in [
            format!(
                "| {ARCHIVE_OFFSET:#x} | {:#x} | metadata archive ({ARCHIVE_SLOTS} slots of {} KiB) |",
                ARCHIVE_SLOT * ARCHIVE_SLOTS,
                ARCHIVE_SLOT >> 10
            ),
            format!(
                "Slot s (0 ≤ s < {ARCHIVE_SLOTS}) is the {ARCHIVE_SLOT:#x}-byte area at {ARCHIVE_OFFSET:#x} + s·{ARCHIVE_SLOT:#x}"
            ),
            "| 0 | 8 | magic | `TBLKARCV` |".to_string(),
            format!(
                "| {ARCHIVE_CRC_OFFSET} | 4 | crc | crc32c of header bytes 0..{ARCHIVE_CRC_OFFSET} followed by the body |"
            ),
            format!("| {ARCHIVE_HEADER_LEN} | L | boot list |"),
        ] {
            assert!(doc.contains(&row), "FORMAT.md lacks {row}");
        }
        // field offsets of an encoded header
        let a = sample();
        let b = a.encode().unwrap();
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(&b[..8], &ARCHIVE_MAGIC);
        assert_eq!(u32at(8), ARCHIVE_VERSION);
        assert_eq!((u64at(16), u64at(24)), (21, 1_700_000_000));
        assert_eq!(u64at(32), slot_offset(21 % ARCHIVE_SLOTS));
        let l = a.list.encode().len();
        assert_eq!(u32at(40) as usize, l);
        assert_eq!(u32at(44), 1);
        let d = u32at(48) as usize;
        assert_eq!(
            u32at(ARCHIVE_HEADER_LEN + l) as usize + ARCHIVE_DEF_HEADER_LEN,
            d
        );
        assert_eq!(
            &b[ARCHIVE_HEADER_LEN..ARCHIVE_HEADER_LEN + l],
            &a.list.encode()[..]
        );
    }
}
