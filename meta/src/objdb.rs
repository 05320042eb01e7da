//! The object database (the spec's "VSM object data region", [059]): per-ALU records
//! describing the ALU object, the partition objects stored on this ALU, and a full copy
//! of the top (volume) object of every volume with a partition on this ALU ([056]).
//! Two slots; a commit writes the slot not holding the live copy and flushes, so the
//! live copy is never overwritten; a reader takes the valid slot with the highest sequence.

use crate::codec::{is_zero, put_u32, round_up, Rd, Wr};
use crate::disk::Disk;
use crate::error::FormatError;
use crate::types::{
    valid_volume_name, Layout, LayoutKind, MemberHealth, Segment, SnapshotOf, Uuid, VolumeDef,
};

pub const OBJDB_MAGIC: [u8; 8] = *b"TBLKOBJD";
pub const OBJDB_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
/// CRC field offset; the CRC covers header bytes 0..60 followed by the payload.
pub const CRC_OFFSET: usize = 60;

pub const REC_ALU: u16 = 1;
pub const REC_PARTITION: u16 = 2;
pub const REC_VOLUME: u16 = 3;
/// Record flag: a reader that does not know the record type may skip it.
pub const REC_FLAG_MAY_SKIP: u16 = 1;

/// The ALU object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AluObj {
    pub uuid: Uuid,
    pub wwn: [u8; 16],
    pub size: u64,
    pub data_start: u64,
    pub data_end: u64,
}

/// A partition object (stored only on its own ALU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionObj {
    pub id: u64,
    pub alu: Uuid,
    pub start: u64,
    pub len: u64,
    pub volume: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Alu(AluObj),
    Partition(PartitionObj),
    Volume(VolumeDef),
    /// Unknown record with the may-skip flag; preserved verbatim.
    Unknown {
        ty: u16,
        flags: u16,
        data: Vec<u8>,
    },
}

/// One decoded slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjDb {
    pub seq: u64,
    pub records: Vec<Record>,
}

/// Bytes of the fixed part of a volume record.
pub const VOLUME_HEADER_LEN: usize = 112;
/// Bytes per segment entry of a volume record.
pub const SEGMENT_LEN: usize = 48;
/// Bytes of the snapshot extension at the end of a snapshot volume's record.
pub const SNAPSHOT_EXT_LEN: usize = 24;
/// Bytes of the fixed part of the write-intent extension (mirror and raid10 records).
pub const WI_EXT_HEADER_LEN: usize = 8;
/// Bytes per member entry of the write-intent extension.
pub const WI_EXT_ENTRY_LEN: usize = 4;

/// Encode a volume record payload (also the input of the boot list's definition CRC).
/// Member health is not part of it.
pub fn encode_volume(v: &VolumeDef) -> Vec<u8> {
    let mut w = Wr::new();
    w.u64(v.id);
    w.u64(v.size);
    w.bytes(&v.wwn);
    w.u8(v.layout.kind.code());
    w.u8(v.name.len().min(63) as u8);
    w.u16(v.layout.stripes);
    w.u16(v.layout.copies);
    // A move in progress: the source member + 1 (0: none).
    w.u16(v.moving.map_or(0, |m| m.saturating_add(1)));
    w.name(&v.name, 64);
    w.u32(v.segments.len() as u32);
    w.u32(v.layout.chunk);
    for s in &v.segments {
        w.u64(s.partition_id);
        w.bytes(&s.alu.0);
        w.u64(s.start);
        w.u64(s.len);
        w.u16(s.member);
        w.zeros(6);
    }
    // Snapshot extension: present only on snapshot volumes.
    if let Some(sn) = &v.snapshot {
        w.u64(sn.origin);
        w.u64(sn.origin_size);
        w.u32(sn.chunk);
        w.u32(0);
    }
    // Write-intent extension: present only on mirror/raid10 volumes with slots.
    if !v.wi_slots.is_empty() {
        w.u32(v.wi_slots.len() as u32);
        w.u32(0);
        for &slot in &v.wi_slots {
            w.u16(slot);
            w.u16(0);
        }
    }
    w.v
}

/// Decode and check the write-intent extension of a mirror/raid10 record: one slot
/// per member, each below `WI_SLOTS`, no two members sharing a slot on the ALU of
/// their first segment.
fn decode_wi_ext(
    r: &mut Rd,
    segments: &[Segment],
    members: usize,
) -> Result<Vec<u16>, FormatError> {
    let bad = || FormatError::Invalid("write-intent extension".into());
    let count = r.u32()? as usize;
    if count != members || r.u32()? != 0 || r.remaining() != count * WI_EXT_ENTRY_LEN {
        return Err(bad());
    }
    let mut slots = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::new();
    for m in 0..count {
        let slot = r.u16()?;
        if r.u16()? != 0 || u64::from(slot) >= crate::mdr::WI_SLOTS {
            return Err(bad());
        }
        let alu = segments
            .iter()
            .find(|s| usize::from(s.member) == m)
            .map(|s| s.alu);
        if !seen.insert((alu, slot)) {
            return Err(bad());
        }
        slots.push(slot);
    }
    Ok(slots)
}

/// CRC32C of the encoded volume definition.
pub fn def_crc(v: &VolumeDef) -> u32 {
    crc32c::crc32c(&encode_volume(v))
}

/// Decode a volume record; the members' health is returned as all `Ok` (the boot
/// list holds the real health).
pub fn decode_volume(b: &[u8]) -> Result<VolumeDef, FormatError> {
    let mut r = Rd::new(b);
    let id = r.u64()?;
    let size = r.u64()?;
    let wwn = r.arr16()?;
    let code = r.u8()?;
    let kind = LayoutKind::from_code(code)
        .ok_or_else(|| FormatError::Invalid(format!("volume layout {code}")))?;
    let name_len = r.u8()? as usize;
    let stripes = r.u16()?;
    let copies = r.u16()?;
    let moving = r.u16()?.checked_sub(1);
    let name = r.name(64, "volume name")?;
    if name.len() != name_len || !valid_volume_name(&name) {
        return Err(FormatError::Invalid("volume name".into()));
    }
    let n = r.u32()? as usize;
    let chunk = r.u32()?;
    let layout = Layout {
        kind,
        stripes,
        copies,
        chunk,
    };
    layout
        .validate()
        .and_then(|()| layout.check_size(size))
        .map_err(|e| FormatError::Invalid(format!("volume layout: {e}")))?;
    if n > r.remaining() / SEGMENT_LEN {
        return Err(FormatError::Truncated);
    }
    // A move's target is one member more (stripe and raid10 only; see VolumeDef::moving).
    if let Some(src) = moving {
        if !matches!(layout.kind, LayoutKind::Stripe | LayoutKind::Raid10)
            || usize::from(src) >= layout.members()
        {
            return Err(FormatError::Invalid(format!("volume move source {src}")));
        }
    }
    let members = layout.members() + usize::from(moving.is_some());
    let mut totals = vec![0u64; members];
    let mut segments = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Segment {
            partition_id: r.u64()?,
            alu: Uuid(r.arr16()?),
            start: r.u64()?,
            len: r.u64()?,
            member: r.u16()?,
        };
        r.skip(6)?;
        let t = totals
            .get_mut(usize::from(s.member))
            .ok_or_else(|| FormatError::Invalid(format!("segment member {}", s.member)))?;
        *t = t
            .checked_add(s.len)
            .ok_or_else(|| FormatError::Invalid("segment length".into()))?;
        segments.push(s);
    }
    let want = layout.member_size(size);
    if totals.iter().any(|&t| t != want) {
        return Err(FormatError::Invalid("volume size/segments".into()));
    }
    let redundant = matches!(layout.kind, LayoutKind::Mirror | LayoutKind::Raid10);
    let wi_slots = if redundant && r.remaining() > 0 {
        decode_wi_ext(&mut r, &segments, members)?
    } else {
        Vec::new()
    };
    let snapshot = match r.remaining() {
        0 => None,
        SNAPSHOT_EXT_LEN => {
            let sn = SnapshotOf {
                origin: r.u64()?,
                origin_size: r.u64()?,
                chunk: r.u32()?,
            };
            if r.u32()? != 0 || sn.origin == id || layout.kind != LayoutKind::Linear {
                return Err(FormatError::Invalid("snapshot extension".into()));
            }
            sn.validate()
                .map_err(|e| FormatError::Invalid(format!("snapshot extension: {e}")))?;
            Some(sn)
        }
        _ => return Err(FormatError::Invalid("volume size/segments".into())),
    };
    Ok(VolumeDef {
        id,
        name,
        size,
        wwn,
        segments,
        layout,
        members: vec![MemberHealth::Ok; members],
        snapshot,
        wi_slots,
        moving,
    })
}

impl ObjDb {
    pub fn volumes(&self) -> impl Iterator<Item = &VolumeDef> {
        self.records.iter().filter_map(|r| match r {
            Record::Volume(v) => Some(v),
            _ => None,
        })
    }
    pub fn partitions(&self) -> impl Iterator<Item = &PartitionObj> {
        self.records.iter().filter_map(|r| match r {
            Record::Partition(p) => Some(p),
            _ => None,
        })
    }
    pub fn alu(&self) -> Option<&AluObj> {
        self.records.iter().find_map(|r| match r {
            Record::Alu(a) => Some(a),
            _ => None,
        })
    }

    fn encode_payload(&self) -> Vec<u8> {
        let mut w = Wr::new();
        for rec in &self.records {
            let (ty, flags, body) = match rec {
                Record::Alu(a) => {
                    let mut b = Wr::new();
                    b.bytes(&a.uuid.0);
                    b.bytes(&a.wwn);
                    b.u64(a.size);
                    b.u64(a.data_start);
                    b.u64(a.data_end);
                    (REC_ALU, 0, b.v)
                }
                Record::Partition(p) => {
                    let mut b = Wr::new();
                    b.u64(p.id);
                    b.bytes(&p.alu.0);
                    b.u64(p.start);
                    b.u64(p.len);
                    b.u64(p.volume);
                    (REC_PARTITION, 0, b.v)
                }
                Record::Volume(v) => (REC_VOLUME, 0, encode_volume(v)),
                Record::Unknown { ty, flags, data } => (*ty, *flags, data.clone()),
            };
            w.u16(ty);
            w.u16(flags);
            w.u32(body.len() as u32);
            w.bytes(&body);
        }
        w.v
    }

    /// Encode as written at `own_offset`; padded to a multiple of 4 KiB.
    pub fn encode(&self, own_offset: u64) -> Vec<u8> {
        let payload = self.encode_payload();
        let mut w = Wr::new();
        w.bytes(&OBJDB_MAGIC);
        w.u32(OBJDB_VERSION);
        w.u32(0);
        w.u64(self.seq);
        w.u64(payload.len() as u64);
        w.u64(own_offset);
        w.pad_to(HEADER_LEN);
        w.bytes(&payload);
        let used = w.v.len();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&w.v[..CRC_OFFSET]), &payload);
        w.pad_to(round_up(used, 4096));
        let mut b = w.v;
        put_u32(&mut b, CRC_OFFSET, crc);
        b
    }

    /// Bytes to read for a slot whose first block is `head`.
    pub fn needed_len(head: &[u8], region_len: u64) -> Result<usize, FormatError> {
        let mut r = Rd::new(head);
        if r.take(8)? != OBJDB_MAGIC {
            return Err(if head.get(..HEADER_LEN).is_some_and(is_zero) {
                FormatError::Blank
            } else {
                FormatError::BadMagic
            });
        }
        r.skip(16)?;
        let len = r.u64()?;
        if len > region_len.saturating_sub(HEADER_LEN as u64) {
            return Err(FormatError::Invalid(format!("payload length {len}")));
        }
        Ok(round_up(HEADER_LEN + len as usize, 4096))
    }

    pub fn decode(b: &[u8], read_offset: u64, region_len: u64) -> Result<ObjDb, FormatError> {
        let need = Self::needed_len(b, region_len)?;
        let b = b.get(..need).ok_or(FormatError::Truncated)?;
        let mut r = Rd::at(b, 8);
        let version = r.u32()?;
        r.u32()?;
        let seq = r.u64()?;
        let len = r.u64()? as usize;
        let own = r.u64()?;
        let payload = b
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(FormatError::Truncated)?;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(b.get(..CRC_OFFSET).ok_or(FormatError::Truncated)?),
            payload,
        );
        if crc != Rd::at(b, CRC_OFFSET).u32()? {
            return Err(FormatError::BadChecksum);
        }
        if version != OBJDB_VERSION {
            return Err(FormatError::Version(version));
        }
        if own != read_offset {
            return Err(FormatError::WrongOffset {
                found: read_offset,
                claimed: own,
            });
        }
        let mut records = Vec::new();
        let mut r = Rd::new(payload);
        while r.remaining() > 0 {
            let ty = r.u16()?;
            let flags = r.u16()?;
            let n = r.u32()? as usize;
            let body = r.take(n)?;
            let mut br = Rd::new(body);
            let rec = match ty {
                REC_ALU => Record::Alu(AluObj {
                    uuid: Uuid(br.arr16()?),
                    wwn: br.arr16()?,
                    size: br.u64()?,
                    data_start: br.u64()?,
                    data_end: br.u64()?,
                }),
                REC_PARTITION => Record::Partition(PartitionObj {
                    id: br.u64()?,
                    alu: Uuid(br.arr16()?),
                    start: br.u64()?,
                    len: br.u64()?,
                    volume: br.u64()?,
                }),
                REC_VOLUME => Record::Volume(decode_volume(body)?),
                _ if flags & REC_FLAG_MAY_SKIP != 0 => Record::Unknown {
                    ty,
                    flags,
                    data: body.to_vec(),
                },
                _ => return Err(FormatError::Invalid(format!("unknown record type {ty}"))),
            };
            records.push(rec);
        }
        Ok(ObjDb { seq, records })
    }

    pub fn read(disk: &mut dyn Disk, offset: u64, region_len: u64) -> Result<ObjDb, FormatError> {
        let mut head = vec![0u8; 4096];
        disk.read_at(offset, &mut head)
            .map_err(|e| FormatError::Io(e.to_string()))?;
        let need = Self::needed_len(&head, region_len)?;
        let mut b = vec![0u8; need];
        disk.read_at(offset, &mut b)
            .map_err(|e| FormatError::Io(e.to_string()))?;
        Self::decode(&b, offset, region_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ObjDb {
        let alu = Uuid([3; 16]);
        ObjDb {
            seq: 9,
            records: vec![
                Record::Alu(AluObj {
                    uuid: alu,
                    wwn: [0x60; 16],
                    size: 64 << 20,
                    data_start: 8 << 20,
                    data_end: 63 << 20,
                }),
                Record::Partition(PartitionObj {
                    id: 2,
                    alu,
                    start: 8 << 20,
                    len: 4 << 20,
                    volume: 1,
                }),
                Record::Volume(VolumeDef {
                    id: 1,
                    name: "vol.a".into(),
                    size: 6 << 20,
                    wwn: [0x61; 16],
                    segments: vec![
                        Segment {
                            partition_id: 2,
                            alu,
                            start: 8 << 20,
                            len: 4 << 20,
                            member: 0,
                        },
                        Segment {
                            partition_id: 3,
                            alu: Uuid([4; 16]),
                            start: 8 << 20,
                            len: 2 << 20,
                            member: 0,
                        },
                    ],
                    layout: Layout::linear(),
                    members: vec![MemberHealth::Ok],
                    snapshot: None,
                    wi_slots: vec![],
                    moving: None,
                }),
                Record::Volume(raid10_sample()),
                Record::Unknown {
                    ty: 99,
                    flags: REC_FLAG_MAY_SKIP,
                    data: vec![1, 2, 3],
                },
            ],
        }
    }

    pub(crate) fn raid10_sample() -> VolumeDef {
        let layout = Layout {
            kind: LayoutKind::Raid10,
            stripes: 2,
            copies: 2,
            chunk: 65536,
        };
        let segments = (0..4u16)
            .flat_map(|m| {
                (0..2u64).map(move |j| Segment {
                    partition_id: 10 + u64::from(m) * 2 + j,
                    alu: Uuid([20 + m as u8; 16]),
                    start: (8 + j) << 20,
                    len: 1 << 20,
                    member: m,
                })
            })
            .collect();
        VolumeDef {
            id: 7,
            name: "r10".into(),
            size: 4 << 20,
            wwn: [0x62; 16],
            segments,
            layout,
            members: vec![MemberHealth::Ok; 4],
            snapshot: None,
            wi_slots: vec![],
            moving: None,
        }
    }

    #[test]
    fn snapshot_extension_round_trips_and_is_checked() {
        let seg = Segment {
            partition_id: 9,
            alu: Uuid([3; 16]),
            start: 8 << 20,
            len: 2 << 20,
            member: 0,
        };
        let v = VolumeDef {
            id: 8,
            name: "snap1".into(),
            size: 2 << 20,
            wwn: [0x63; 16],
            segments: vec![seg],
            layout: Layout::linear(),
            members: vec![MemberHealth::Ok],
            snapshot: Some(SnapshotOf {
                origin: 7,
                origin_size: 64 << 20,
                chunk: 64 << 10,
            }),
            wi_slots: vec![],
            moving: None,
        };
        let b = encode_volume(&v);
        assert_eq!(b.len(), VOLUME_HEADER_LEN + SEGMENT_LEN + SNAPSHOT_EXT_LEN);
        assert_eq!(decode_volume(&b).unwrap(), v);
        // The snapshot is part of the definition: its CRC changes with it.
        let plain = VolumeDef {
            snapshot: None,
            ..v.clone()
        };
        assert_ne!(def_crc(&plain), def_crc(&v));
        for bad in [
            SnapshotOf {
                chunk: 3000,
                ..v.snapshot.unwrap()
            },
            SnapshotOf {
                origin: 8,
                ..v.snapshot.unwrap()
            },
            SnapshotOf {
                origin_size: 0,
                ..v.snapshot.unwrap()
            },
        ] {
            let w = VolumeDef {
                snapshot: Some(bad),
                ..v.clone()
            };
            assert!(decode_volume(&encode_volume(&w)).is_err(), "{bad:?}");
        }
        // A truncated or padded extension is rejected.
        assert!(decode_volume(&b[..b.len() - 4]).is_err());
        let mut long = b.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(decode_volume(&long).is_err());
    }

    #[test]
    fn a_move_in_progress_round_trips_and_is_checked() {
        let plain = raid10_sample();
        let mut v = plain.clone();
        v.moving = Some(3);
        v.members.push(MemberHealth::Ok);
        v.segments.extend((0..2u64).map(|j| Segment {
            partition_id: 30 + j,
            alu: Uuid([40; 16]),
            start: (8 + j) << 20,
            len: 1 << 20,
            member: 4,
        }));
        let b = encode_volume(&v);
        assert_eq!(
            u16::from_le_bytes([b[38], b[39]]),
            4,
            "source + 1 at offset 38"
        );
        assert_eq!(decode_volume(&b).unwrap(), v);
        assert_ne!(def_crc(&plain), def_crc(&v));
        // with write-intent slots: one for the target too
        let w = VolumeDef {
            wi_slots: vec![0, 1, 2, 3, 4],
            ..v.clone()
        };
        assert_eq!(decode_volume(&encode_volume(&w)).unwrap(), w);
        let short = VolumeDef {
            wi_slots: vec![0, 1, 2, 3],
            ..v.clone()
        };
        assert!(decode_volume(&encode_volume(&short)).is_err());
        // the target must be whole; no target at all is not a move
        let mut half = v.clone();
        half.segments.pop();
        assert!(decode_volume(&encode_volume(&half)).is_err());
        let mut none = b[..b.len() - 2 * SEGMENT_LEN].to_vec();
        none[104..108].copy_from_slice(&8u32.to_le_bytes());
        assert!(decode_volume(&none).is_err());
        // a source beyond the layout, or a move on a mirror or linear record
        let mut r = b.clone();
        r[38..40].copy_from_slice(&5u16.to_le_bytes());
        assert!(decode_volume(&r).is_err());
        let mut lin = sample();
        let Record::Volume(l) = &mut lin.records[2] else {
            panic!("sample layout")
        };
        let mut l = l.clone();
        l.moving = Some(0);
        assert!(decode_volume(&encode_volume(&l)).is_err());
    }

    #[test]
    fn write_intent_extension_round_trips_and_is_checked() {
        let plain = raid10_sample();
        let v = VolumeDef {
            wi_slots: vec![0, 3, 511, 7],
            moving: None,
            ..plain.clone()
        };
        let b = encode_volume(&v);
        assert_eq!(
            b.len(),
            VOLUME_HEADER_LEN + 8 * SEGMENT_LEN + WI_EXT_HEADER_LEN + 4 * WI_EXT_ENTRY_LEN
        );
        assert_eq!(decode_volume(&b).unwrap(), v);
        // Part of the definition; a record without it (written before write-intent
        // bitmaps) still decodes, with no slots.
        assert_ne!(def_crc(&plain), def_crc(&v));
        assert_eq!(decode_volume(&encode_volume(&plain)).unwrap(), plain);
        assert_eq!(
            v.wi_location(2),
            Some((Uuid([22; 16]), 0x50_0000 + 511 * 4096))
        );
        assert_eq!(plain.wi_location(2), None);
        assert_eq!(v.wi_location(4), None);
        let bad = |slots: Vec<u16>| VolumeDef {
            wi_slots: slots,
            moving: None,
            ..plain.clone()
        };
        // wrong count, slot out of the area
        for w in [bad(vec![0, 1, 2]), bad(vec![0, 1, 2, 512])] {
            assert!(
                decode_volume(&encode_volume(&w)).is_err(),
                "{:?}",
                w.wi_slots
            );
        }
        // two members sharing a slot on one ALU
        let mut shared = bad(vec![5, 5, 1, 2]);
        assert!(
            decode_volume(&encode_volume(&shared)).is_ok(),
            "different ALUs"
        );
        for s in shared.segments.iter_mut().filter(|s| s.member == 1) {
            s.alu = Uuid([20; 16]);
        }
        assert!(decode_volume(&encode_volume(&shared)).is_err());
        // non-zero reserved bytes, truncation, trailing bytes
        let mut r = b.clone();
        let ext = VOLUME_HEADER_LEN + 8 * SEGMENT_LEN;
        r[ext + 4] = 1;
        assert!(decode_volume(&r).is_err());
        let mut r = b.clone();
        r[ext + WI_EXT_HEADER_LEN + 2] = 1;
        assert!(decode_volume(&r).is_err());
        assert!(decode_volume(&b[..b.len() - 2]).is_err());
        let mut long = b.clone();
        long.extend_from_slice(&[0; 4]);
        assert!(decode_volume(&long).is_err());
        // not allowed on linear or stripe records
        let mut lin = sample();
        let Record::Volume(l) = &mut lin.records[2] else {
            unreachable!()
        };
        l.wi_slots = vec![0];
        assert!(decode_volume(&encode_volume(l)).is_err());
    }

    #[test]
    fn volume_roundtrip_and_checks() {
        let v = raid10_sample();
        let b = encode_volume(&v);
        assert_eq!(b.len(), VOLUME_HEADER_LEN + 8 * SEGMENT_LEN);
        assert_eq!(b[32], LayoutKind::Raid10.code());
        assert_eq!(decode_volume(&b).unwrap(), v);
        // health is not part of the definition
        let mut f = v.clone();
        f.members[1] = MemberHealth::Failed { fail_seq: 3 };
        assert_eq!(def_crc(&f), def_crc(&v));
        assert_eq!(decode_volume(&encode_volume(&f)).unwrap(), v);
        assert_eq!(f.definition(), v);
        // a member of the wrong size
        let mut w = v.clone();
        w.segments[7].len = 2 << 20;
        assert!(decode_volume(&encode_volume(&w)).is_err());
        // member out of range
        let mut w = v.clone();
        w.segments[7].member = 4;
        assert!(decode_volume(&encode_volume(&w)).is_err());
        // invalid layouts
        let mut w = v.clone();
        w.layout.chunk = 1000;
        assert!(decode_volume(&encode_volume(&w)).is_err());
        let mut bad = b.clone();
        bad[32] = 9;
        assert!(decode_volume(&bad).is_err());
        // every mirror/stripe kind round trips
        let mut m = v.clone();
        m.layout = Layout {
            kind: LayoutKind::Mirror,
            stripes: 1,
            copies: 4,
            chunk: 0,
        };
        m.size = 2 << 20;
        assert_eq!(decode_volume(&encode_volume(&m)).unwrap(), m);
        let mut s = v.clone();
        s.layout = Layout {
            kind: LayoutKind::Stripe,
            stripes: 4,
            copies: 1,
            chunk: 4096,
        };
        s.size = 8 << 20;
        assert_eq!(decode_volume(&encode_volume(&s)).unwrap(), s);
    }

    #[test]
    fn roundtrip() {
        let o = sample();
        let b = o.encode(0x100000);
        assert_eq!(ObjDb::decode(&b, 0x100000, 0x100000).unwrap(), o);
        let e = ObjDb {
            seq: 1,
            records: vec![],
        };
        assert_eq!(
            ObjDb::decode(&e.encode(0x200000), 0x200000, 0x100000).unwrap(),
            e
        );
    }

    #[test]
    fn rejects() {
        let o = sample();
        let b = o.encode(0x100000);
        assert!(matches!(
            ObjDb::decode(&b, 0x200000, 0x100000),
            Err(FormatError::WrongOffset { .. })
        ));
        let mut c = b.clone();
        c[70] ^= 1;
        assert_eq!(
            ObjDb::decode(&c, 0x100000, 0x100000),
            Err(FormatError::BadChecksum)
        );
        // unknown record without may-skip
        let mut u = o.clone();
        u.records.push(Record::Unknown {
            ty: 77,
            flags: 0,
            data: vec![],
        });
        assert!(matches!(
            ObjDb::decode(&u.encode(0x100000), 0x100000, 0x100000),
            Err(FormatError::Invalid(_))
        ));
    }
}
