//! The MDR directory ([058]): the 4 KiB block at 0x1000 (backup in the last 4 KiB
//! block of the ALU) that carries the cluster signature (cluster name + UUID), the
//! ALU identity and the location of every other metadata region. An ALU without a
//! valid directory is not affiliated with any tierblk cluster.
//!
//! Region constants here are used only when formatting; readers take the offsets
//! from the directory. See `docs/FORMAT.md` for the byte layout.

use crate::codec::{decode_name, is_zero, put_u32, Rd, Wr};
use crate::error::FormatError;
use crate::types::{valid_cluster_name, ClusterSig, Uuid};

pub const BLOCK: u64 = 4096;
pub const MIB: u64 = 1 << 20;
pub const DIR_MAGIC: [u8; 8] = *b"TIERBLK\0";
pub const FORMAT_VERSION: u32 = 1;
/// Feature flags this build understands.
pub const KNOWN_COMPAT: u64 = 0;
pub const KNOWN_INCOMPAT: u64 = 0;

pub const DIR_OFFSET: u64 = 0x1000;
pub const BOOTPTR_A_OFFSET: u64 = 0x2000;
pub const BOOTPTR_B_OFFSET: u64 = 0x3000;
pub const LABEL_A_OFFSET: u64 = 0x1_0000;
pub const LABEL_B_OFFSET: u64 = 0x5_0000;
pub const LABEL_LEN: u64 = 0x4_0000;
pub const OBJDB_A_OFFSET: u64 = 0x10_0000;
pub const OBJDB_B_OFFSET: u64 = 0x20_0000;
pub const OBJDB_LEN: u64 = 0x10_0000;
pub const BOOTLIST_A_OFFSET: u64 = 0x30_0000;
pub const BOOTLIST_B_OFFSET: u64 = 0x40_0000;
pub const BOOTLIST_LEN: u64 = 0x10_0000;
/// Write-intent area (fixed by format version 1, not named in the directory): the
/// mirror legs' write-intent bitmaps, one [`WI_SLOT`]-byte block per leg, between the
/// boot list areas and the data area. See `docs/FORMAT.md`, "Write-intent area".
pub const WI_OFFSET: u64 = 0x50_0000;
/// Length of the write-intent area.
pub const WI_LEN: u64 = 0x20_0000;
/// One write-intent slot: one 4 KiB bitmap block.
pub const WI_SLOT: u64 = 0x1000;
/// Slots per ALU (512).
pub const WI_SLOTS: u64 = WI_LEN / WI_SLOT;
/// Metadata archive (fixed by format version 1, not named in the directory): a ring
/// of [`ARCHIVE_SLOTS`] slots of [`ARCHIVE_SLOT`] bytes, each holding one configuration
/// a boot set commit replaced, on every boot set member. See `docs/FORMAT.md`,
/// "Metadata archive", and [`crate::archive`].
pub const ARCHIVE_OFFSET: u64 = 0x70_0000;
/// One archive slot (64 KiB).
pub const ARCHIVE_SLOT: u64 = 0x1_0000;
/// Slots in the ring (16).
pub const ARCHIVE_SLOTS: u64 = 16;
pub const DATA_START: u64 = 0x80_0000;
pub const MIN_ALU_SIZE: u64 = 32 * MIB;
/// Offset of the CRC field in the directory block (CRC covers bytes 0..DIR_CRC_OFFSET).
/// All meaningful bytes live in the first 512-byte sector, so a torn 4 KiB write
/// either applies the whole directory or none of it.
pub const DIR_CRC_OFFSET: usize = 508;

/// Offset of the backup directory for a device of `size` bytes.
pub fn backup_offset(size: u64) -> u64 {
    (size & !(BLOCK - 1)).saturating_sub(BLOCK)
}

/// End (exclusive) of the data area for a device of `size` bytes.
pub fn data_end_for(size: u64) -> u64 {
    (size & !(MIB - 1)).saturating_sub(MIB)
}

/// Decoded MDR directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    pub compat: u64,
    pub incompat: u64,
    /// Byte offset this copy was written at (0x1000 or the backup offset).
    pub own_offset: u64,
    pub alu_uuid: Uuid,
    pub wwn: [u8; 16],
    pub cluster: ClusterSig,
    pub alu_size: u64,
    pub label: [u64; 2],
    pub label_len: u64,
    pub objdb: [u64; 2],
    pub objdb_len: u64,
    pub bootptr: [u64; 2],
    pub bootlist: [u64; 2],
    pub bootlist_len: u64,
    pub data_start: u64,
    pub data_end: u64,
    pub backup_offset: u64,
}

impl Directory {
    /// Standard v1 layout for a new ALU of `size` bytes.
    pub fn new_v1(alu_uuid: Uuid, wwn: [u8; 16], cluster: ClusterSig, size: u64) -> Directory {
        Directory {
            compat: 0,
            incompat: 0,
            own_offset: DIR_OFFSET,
            alu_uuid,
            wwn,
            cluster,
            alu_size: size,
            label: [LABEL_A_OFFSET, LABEL_B_OFFSET],
            label_len: LABEL_LEN,
            objdb: [OBJDB_A_OFFSET, OBJDB_B_OFFSET],
            objdb_len: OBJDB_LEN,
            bootptr: [BOOTPTR_A_OFFSET, BOOTPTR_B_OFFSET],
            bootlist: [BOOTLIST_A_OFFSET, BOOTLIST_B_OFFSET],
            bootlist_len: BOOTLIST_LEN,
            data_start: DATA_START,
            data_end: data_end_for(size),
            backup_offset: backup_offset(size),
        }
    }

    /// The same directory as it is written at `offset`.
    pub fn at(&self, offset: u64) -> Directory {
        Directory {
            own_offset: offset,
            ..self.clone()
        }
    }

    /// Equal apart from the own-offset field.
    pub fn same_content(&self, other: &Directory) -> bool {
        self.at(0) == other.at(0)
    }

    /// `(offset, length)` of every region the directory names.
    fn regions(&self) -> [(u64, u64); 8] {
        [
            (self.label[0], self.label_len),
            (self.label[1], self.label_len),
            (self.objdb[0], self.objdb_len),
            (self.objdb[1], self.objdb_len),
            (self.bootptr[0], BLOCK),
            (self.bootptr[1], BLOCK),
            (self.bootlist[0], self.bootlist_len),
            (self.bootlist[1], self.bootlist_len),
        ]
    }

    /// Whether this ALU has the write-intent area: it is fixed by format version 1
    /// rather than named in the directory, so check that it lies below the data
    /// area and overlaps none of the regions the directory names (true for every
    /// directory written by [`Directory::new_v1`]).
    pub fn has_wi_area(&self) -> bool {
        self.has_fixed_area(WI_OFFSET, WI_OFFSET + WI_LEN)
    }

    /// Whether this ALU has the metadata archive area (fixed by format version 1,
    /// like the write-intent area; true for every directory written by
    /// [`Directory::new_v1`]).
    pub fn has_archive_area(&self) -> bool {
        self.has_fixed_area(
            ARCHIVE_OFFSET,
            ARCHIVE_OFFSET + ARCHIVE_SLOT * ARCHIVE_SLOTS,
        )
    }

    /// `lo..hi` lies below the data area and overlaps no region the directory names.
    fn has_fixed_area(&self, lo: u64, hi: u64) -> bool {
        let regions = self.regions();
        hi <= self.data_start
            && regions
                .iter()
                .all(|&(off, len)| off.saturating_add(len) <= lo || off >= hi)
    }

    /// Encode into one 4 KiB block.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Wr::new();
        w.bytes(&DIR_MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(0);
        w.u64(self.compat);
        w.u64(self.incompat);
        w.u64(self.own_offset);
        w.bytes(&self.alu_uuid.0);
        w.bytes(&self.wwn);
        w.name(&self.cluster.name, 64);
        w.bytes(&self.cluster.uuid.0);
        w.u64(self.alu_size);
        for x in [
            self.label[0],
            self.label[1],
            self.label_len,
            self.objdb[0],
            self.objdb[1],
            self.objdb_len,
            self.bootptr[0],
            self.bootptr[1],
            self.bootlist[0],
            self.bootlist[1],
            self.bootlist_len,
            self.data_start,
            self.data_end,
            self.backup_offset,
        ] {
            w.u64(x);
        }
        w.pad_to(BLOCK as usize);
        let mut b = w.v;
        let crc = crc32c::crc32c(&b[..DIR_CRC_OFFSET]);
        put_u32(&mut b, DIR_CRC_OFFSET, crc);
        b
    }

    /// Decode a block read at `read_offset` of a device of `dev_size` bytes.
    pub fn decode(b: &[u8], read_offset: u64, dev_size: u64) -> Result<Directory, FormatError> {
        let blk = b.get(..BLOCK as usize).ok_or(FormatError::Truncated)?;
        if is_zero(blk) {
            return Err(FormatError::Blank);
        }
        let mut r = Rd::new(blk);
        if r.take(8)? != DIR_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let stored = Rd::at(blk, DIR_CRC_OFFSET).u32()?;
        if crc32c::crc32c(blk.get(..DIR_CRC_OFFSET).ok_or(FormatError::Truncated)?) != stored {
            return Err(FormatError::BadChecksum);
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        r.u32()?;
        let compat = r.u64()?;
        let incompat = r.u64()?;
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(FormatError::Incompat(incompat & !KNOWN_INCOMPAT));
        }
        let own_offset = r.u64()?;
        if own_offset != read_offset {
            return Err(FormatError::WrongOffset {
                found: read_offset,
                claimed: own_offset,
            });
        }
        let alu_uuid = Uuid(r.arr16()?);
        let wwn = r.arr16()?;
        let name = decode_name(r.take(64)?, "cluster name")?;
        if !valid_cluster_name(&name) {
            return Err(FormatError::Invalid("cluster name".into()));
        }
        let cuuid = Uuid(r.arr16()?);
        let alu_size = r.u64()?;
        let mut f = [0u64; 14];
        for x in f.iter_mut() {
            *x = r.u64()?;
        }
        let d = Directory {
            compat,
            incompat,
            own_offset,
            alu_uuid,
            wwn,
            cluster: ClusterSig { name, uuid: cuuid },
            alu_size,
            label: [f[0], f[1]],
            label_len: f[2],
            objdb: [f[3], f[4]],
            objdb_len: f[5],
            bootptr: [f[6], f[7]],
            bootlist: [f[8], f[9]],
            bootlist_len: f[10],
            data_start: f[11],
            data_end: f[12],
            backup_offset: f[13],
        };
        d.validate(dev_size)?;
        Ok(d)
    }

    fn validate(&self, dev_size: u64) -> Result<(), FormatError> {
        let inv = |s: &str| Err(FormatError::Invalid(s.to_string()));
        if self.alu_size > dev_size {
            return inv("ALU size (device is smaller than at claim time)");
        }
        for (off, len) in self.regions() {
            if off % BLOCK != 0 || len % BLOCK != 0 || len == 0 {
                return inv("region alignment");
            }
            match off.checked_add(len) {
                Some(end) if end <= self.data_start && off >= 2 * BLOCK => {}
                _ => return inv("region placement"),
            }
        }
        if self.label_len < 64 + 1000 * 64 {
            return inv("label directory length");
        }
        if !self.data_start.is_multiple_of(MIB)
            || !self.data_end.is_multiple_of(MIB)
            || self.data_start >= self.data_end
            || self.data_end > self.backup_offset
            || self.backup_offset != backup_offset(self.alu_size)
        {
            return inv("data area");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Directory {
        Directory::new_v1(
            Uuid([1; 16]),
            [0x61; 16],
            ClusterSig {
                name: "c1".into(),
                uuid: Uuid([2; 16]),
            },
            64 * MIB,
        )
    }

    #[test]
    fn roundtrip_primary_and_backup() {
        let d = sample();
        let b = d.encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(Directory::decode(&b, DIR_OFFSET, 64 * MIB).unwrap(), d);
        let bk = d.at(backup_offset(64 * MIB));
        let bb = bk.encode();
        assert_eq!(Directory::decode(&bb, bk.own_offset, 64 * MIB).unwrap(), bk);
        assert!(bk.same_content(&d));
        assert_eq!(d.data_end, 63 * MIB);
        assert_eq!(d.backup_offset, 64 * MIB - 4096);
    }

    /// docs/FORMAT.md must match the constants used by the code.
    #[test]
    fn format_doc_matches_constants() {
        let doc = include_str!("../../docs/FORMAT.md");
        let rows = [
            (DIR_OFFSET, BLOCK, "MDR directory (primary)"),
            (BOOTPTR_A_OFFSET, BLOCK, "boot pointer sector A"),
            (BOOTPTR_B_OFFSET, BLOCK, "boot pointer sector B"),
            (LABEL_A_OFFSET, LABEL_LEN, "label directory copy A"),
            (LABEL_B_OFFSET, LABEL_LEN, "label directory copy B"),
            (OBJDB_A_OFFSET, OBJDB_LEN, "object database slot A"),
            (OBJDB_B_OFFSET, OBJDB_LEN, "object database slot B"),
            (BOOTLIST_A_OFFSET, BOOTLIST_LEN, "boot list area A"),
            (BOOTLIST_B_OFFSET, BOOTLIST_LEN, "boot list area B"),
            (WI_OFFSET, WI_LEN, "write-intent area (512 slots of 4 KiB)"),
        ];
        for (off, len, name) in rows {
            let row = format!("| {off:#x} | {len:#x} | {name} |");
            assert!(doc.contains(&row), "FORMAT.md lacks {row}");
        }
        assert!(doc.contains(&format!("| {DATA_START:#x} | up to data end |")));
        // The write-intent area: fixed by version 1, right after the boot list areas
        // and below the data area, slot s at WI_OFFSET + s * WI_SLOT.
        assert_eq!(WI_SLOTS, 512);
        assert_eq!(WI_OFFSET, BOOTLIST_B_OFFSET + BOOTLIST_LEN);
        const { assert!(WI_OFFSET + WI_LEN <= DATA_START) };
        assert!(doc.contains(&format!(
            "Slot s (0 ≤ s < {WI_SLOTS}) is the {WI_SLOT:#x}-byte block at {WI_OFFSET:#x} + s·{WI_SLOT:#x}"
        )));
        assert!(doc.contains(&format!(
            "Type 3 write-intent extension ({} + {}·m bytes)",
            crate::objdb::WI_EXT_HEADER_LEN,
            crate::objdb::WI_EXT_ENTRY_LEN
        )));
        assert!(sample().has_wi_area());
        // The archive ring: right after the write-intent area, ending at the data area.
        assert_eq!(ARCHIVE_OFFSET, WI_OFFSET + WI_LEN);
        assert_eq!(ARCHIVE_OFFSET + ARCHIVE_SLOT * ARCHIVE_SLOTS, DATA_START);
        assert!(sample().has_archive_area());
        assert!(doc.contains(&format!(
            "| {DIR_CRC_OFFSET} | 4 | crc | crc32c of bytes 0..{DIR_CRC_OFFSET} |"
        )));
        assert!(doc.contains(&format!(
            "| {} | 4 | crc | crc32c of header bytes 0..{} followed by the `64·count` entry bytes |",
            crate::label::CRC_OFFSET,
            crate::label::CRC_OFFSET
        )));
        assert!(doc.contains(&format!(
            "| {} | 4 | crc | crc32c of header bytes 0..{} followed by the payload |",
            crate::objdb::CRC_OFFSET,
            crate::objdb::CRC_OFFSET
        )));
        assert!(doc.contains(&format!(
            "| {} | 4 | crc | crc32c of bytes 0..{} |",
            crate::bootset::PTR_CRC_OFFSET,
            crate::bootset::PTR_CRC_OFFSET
        )));
        assert!(doc.contains(&format!(
            "Maximum {} entries",
            crate::label::max_entries(LABEL_LEN)
        )));
        assert!(doc.contains("Minimum ALU size: 32 MiB"));
        assert_eq!(MIN_ALU_SIZE, 32 * MIB);
        // layout sizes stated in the doc
        let v = crate::types::VolumeDef {
            id: 1,
            name: "a".into(),
            size: 0,
            wwn: [0; 16],
            segments: vec![],
            layout: crate::types::Layout::linear(),
            members: vec![crate::types::MemberHealth::Ok],
            snapshot: None,
            wi_slots: vec![],
            moving: None,
        };
        assert_eq!(crate::objdb::encode_volume(&v).len(), 112);
        assert!(doc.contains(&format!(
            "Type 3, volume (top) object, {} + {}·n bytes",
            crate::objdb::VOLUME_HEADER_LEN,
            crate::objdb::SEGMENT_LEN
        )));
        assert!(doc.contains(&format!(
            "Volume entry ({} + {}·m bytes)",
            crate::bootset::LIST_VOL_LEN,
            crate::bootset::LIST_MEMBER_LEN
        )));
        assert!(doc.contains(&format!(
            "| {} | {}·a | ALU entries |",
            crate::bootset::LIST_HEADER_LEN,
            crate::bootset::LIST_ALU_LEN
        )));
        assert!(doc.contains(&format!(
            "| … | {}·f | failed ALU entries |",
            crate::bootset::LIST_FAILED_LEN
        )));
        assert_eq!(
            Directory::new_v1(
                Uuid::NIL,
                [0; 16],
                ClusterSig {
                    name: "x".into(),
                    uuid: Uuid::NIL
                },
                MIN_ALU_SIZE
            )
            .data_end
                - DATA_START,
            23 * MIB
        );
    }

    #[test]
    fn rejects() {
        let d = sample();
        let b = d.encode();
        assert!(matches!(
            Directory::decode(&b, backup_offset(64 * MIB), 64 * MIB),
            Err(FormatError::WrongOffset { .. })
        ));
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert_eq!(
            Directory::decode(&bad, DIR_OFFSET, 64 * MIB),
            Err(FormatError::BadChecksum)
        );
        let mut inc = d.clone();
        inc.incompat = 1 << 7;
        assert_eq!(
            Directory::decode(&inc.encode(), DIR_OFFSET, 64 * MIB),
            Err(FormatError::Incompat(1 << 7))
        );
        let mut comp = d.clone();
        comp.compat = 1 << 3;
        assert!(Directory::decode(&comp.encode(), DIR_OFFSET, 64 * MIB).is_ok());
        assert_eq!(
            Directory::decode(&[0u8; 4096], DIR_OFFSET, 64 * MIB),
            Err(FormatError::Blank)
        );
        assert_eq!(
            Directory::decode(&b[..100], DIR_OFFSET, 64 * MIB),
            Err(FormatError::Truncated)
        );
        // shrunken device
        assert!(Directory::decode(&b, DIR_OFFSET, 32 * MIB).is_err());
    }
}
