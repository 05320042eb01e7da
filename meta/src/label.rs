//! The label directory ([057]): the ALU's partition table. Two copies (A and B), each
//! time stamped, sequence numbered and check summed; an update writes the copy with the
//! lower sequence (or the invalid one) so the live copy is never overwritten, and a
//! reader takes the valid copy with the highest sequence.

use crate::codec::{is_zero, put_u32, round_up, Rd, Wr};
use crate::disk::Disk;
use crate::error::FormatError;

pub const LABEL_MAGIC: [u8; 8] = *b"TBLKLABL";
pub const LABEL_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const ENTRY_LEN: usize = 64;
/// Offset of the CRC in the header; the CRC covers header bytes 0..60 followed by the entries.
pub const CRC_OFFSET: usize = 60;
pub const STATE_ALLOCATED: u32 = 1;

/// One partition entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelEntry {
    pub start: u64,
    pub len: u64,
    /// Owning volume object id.
    pub owner: u64,
    pub partition: u64,
    pub state: u32,
    pub flags: u32,
}

/// One decoded copy of the label directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelDir {
    pub seq: u64,
    pub timestamp: u64,
    pub entries: Vec<LabelEntry>,
}

/// Maximum number of entries in a region of `region_len` bytes.
pub fn max_entries(region_len: u64) -> usize {
    (region_len as usize).saturating_sub(HEADER_LEN) / ENTRY_LEN
}

impl LabelDir {
    /// Encode as written at `own_offset`; padded to a multiple of 4 KiB.
    pub fn encode(&self, own_offset: u64) -> Vec<u8> {
        let mut w = Wr::new();
        w.bytes(&LABEL_MAGIC);
        w.u32(LABEL_VERSION);
        w.u32(self.entries.len() as u32);
        w.u64(self.seq);
        w.u64(self.timestamp);
        w.u64(own_offset);
        w.pad_to(HEADER_LEN);
        for e in &self.entries {
            w.u64(e.start);
            w.u64(e.len);
            w.u64(e.owner);
            w.u64(e.partition);
            w.u32(e.state);
            w.u32(e.flags);
            w.zeros(24);
        }
        let used = w.v.len();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&w.v[..CRC_OFFSET]), &w.v[HEADER_LEN..used]);
        w.pad_to(round_up(used, 4096));
        let mut b = w.v;
        put_u32(&mut b, CRC_OFFSET, crc);
        b
    }

    /// Number of bytes that must be read for a copy whose first block is `head`.
    pub fn needed_len(head: &[u8], region_len: u64) -> Result<usize, FormatError> {
        let mut r = Rd::new(head);
        if r.take(8)? != LABEL_MAGIC {
            return Err(if head.get(..HEADER_LEN).is_some_and(is_zero) {
                FormatError::Blank
            } else {
                FormatError::BadMagic
            });
        }
        r.u32()?;
        let count = r.u32()? as usize;
        if count > max_entries(region_len) {
            return Err(FormatError::Invalid(format!("entry count {count}")));
        }
        Ok(round_up(HEADER_LEN + count * ENTRY_LEN, 4096))
    }

    pub fn decode(b: &[u8], read_offset: u64, region_len: u64) -> Result<LabelDir, FormatError> {
        let need = Self::needed_len(b, region_len)?;
        let b = b.get(..need).ok_or(FormatError::Truncated)?;
        let mut r = Rd::new(b);
        r.skip(8)?;
        let version = r.u32()?;
        let count = r.u32()? as usize;
        let seq = r.u64()?;
        let timestamp = r.u64()?;
        let own = r.u64()?;
        let stored = Rd::at(b, CRC_OFFSET).u32()?;
        let end = HEADER_LEN + count * ENTRY_LEN;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(b.get(..CRC_OFFSET).ok_or(FormatError::Truncated)?),
            b.get(HEADER_LEN..end).ok_or(FormatError::Truncated)?,
        );
        if crc != stored {
            return Err(FormatError::BadChecksum);
        }
        if version != LABEL_VERSION {
            return Err(FormatError::Version(version));
        }
        if own != read_offset {
            return Err(FormatError::WrongOffset {
                found: read_offset,
                claimed: own,
            });
        }
        let mut r = Rd::at(b, HEADER_LEN);
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let e = LabelEntry {
                start: r.u64()?,
                len: r.u64()?,
                owner: r.u64()?,
                partition: r.u64()?,
                state: r.u32()?,
                flags: r.u32()?,
            };
            r.skip(24)?;
            if e.len == 0 || e.start.checked_add(e.len).is_none() {
                return Err(FormatError::Invalid("label entry extent".into()));
            }
            entries.push(e);
        }
        Ok(LabelDir {
            seq,
            timestamp,
            entries,
        })
    }

    /// Read and decode the copy at `offset`.
    pub fn read(
        disk: &mut dyn Disk,
        offset: u64,
        region_len: u64,
    ) -> Result<LabelDir, FormatError> {
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

/// Current unix time in seconds (display only).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> LabelDir {
        LabelDir {
            seq: 7,
            timestamp: 1234,
            entries: (0..n as u64)
                .map(|i| LabelEntry {
                    start: (8 + i) << 20,
                    len: 1 << 20,
                    owner: 100 + i,
                    partition: 200 + i,
                    state: STATE_ALLOCATED,
                    flags: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn roundtrip() {
        for n in [0, 1, 63, 64, 1000, max_entries(0x40000)] {
            let l = sample(n);
            let b = l.encode(0x10000);
            assert_eq!(b.len() % 4096, 0);
            assert_eq!(LabelDir::decode(&b, 0x10000, 0x40000).unwrap(), l);
        }
        assert!(max_entries(0x40000) >= 1000);
    }

    #[test]
    fn rejects() {
        let b = sample(3).encode(0x10000);
        assert!(matches!(
            LabelDir::decode(&b, 0x50000, 0x40000),
            Err(FormatError::WrongOffset { .. })
        ));
        let mut c = b.clone();
        c[64 + 5] ^= 0x10;
        assert_eq!(
            LabelDir::decode(&c, 0x10000, 0x40000),
            Err(FormatError::BadChecksum)
        );
        assert_eq!(
            LabelDir::decode(&[0u8; 4096], 0x10000, 0x40000),
            Err(FormatError::Blank)
        );
        let mut m = b.clone();
        m[0] = b'X';
        assert_eq!(
            LabelDir::decode(&m, 0x10000, 0x40000),
            Err(FormatError::BadMagic)
        );
        assert!(LabelDir::decode(&b, 0x10000, 4096 + 64).is_ok());
        assert!(LabelDir::decode(&sample(100).encode(0x10000), 0x10000, 4096).is_err());
    }
}
