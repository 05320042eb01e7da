//! The boot set (the spec's "GS ALU set", [059]): up to six ALUs each hold two boot
//! list areas and two boot pointer sectors. The boot list is the cluster-wide commit
//! record (cluster signature, ALU list, volume list, failed-ALU list, next object id).
//! A commit writes the inactive list area, flushes, then writes the pointer sector that
//! does not carry the highest sequence and flushes, on every member. The pointer write
//! (one 512-byte sector) is the atomic commit point.

use crate::codec::{is_zero, put_u32, Rd, Wr};
use crate::disk::Disk;
use crate::error::FormatError;
use crate::types::{
    valid_cluster_name, valid_volume_name, AluRecord, ClusterSig, Layout, LayoutKind, MemberHealth,
    Uuid,
};

pub const PTR_MAGIC: [u8; 8] = *b"TBLKBOOT";
pub const LIST_MAGIC: [u8; 8] = *b"TBLKLIST";
pub const BOOT_VERSION: u32 = 1;
/// Meaningful bytes of a pointer sector.
pub const PTR_LEN: usize = 512;
/// CRC of the pointer sector covers bytes 0..508.
pub const PTR_CRC_OFFSET: usize = 508;
pub const LIST_HEADER_LEN: usize = 136;
pub const LIST_ALU_LEN: usize = 64;
/// Fixed part of a volume entry; followed by [`LIST_MEMBER_LEN`] bytes per member.
pub const LIST_VOL_LEN: usize = 112;
pub const LIST_MEMBER_LEN: usize = 16;
pub const LIST_FAILED_LEN: usize = 24;
pub const HEALTH_OK: u8 = 0;
pub const HEALTH_FAILED: u8 = 1;
pub const HEALTH_REBUILDING: u8 = 2;
/// Maximum number of boot set members.
pub const MAX_MEMBERS: usize = 6;
pub const ALU_FLAG_BOOT_MEMBER: u32 = 1;

/// Pointer sector contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPtr {
    pub seq: u64,
    /// Which list area (0 = A, 1 = B) holds the list.
    pub area: u32,
    pub list_len: u64,
    pub list_crc: u32,
    pub cluster: Uuid,
}

impl BootPtr {
    /// Encode as a full 4 KiB block (only the first 512 bytes are meaningful).
    pub fn encode(&self, own_offset: u64) -> Vec<u8> {
        let mut w = Wr::new();
        w.bytes(&PTR_MAGIC);
        w.u32(BOOT_VERSION);
        w.u32(self.area);
        w.u64(self.seq);
        w.u64(self.list_len);
        w.u32(self.list_crc);
        w.u32(0);
        w.bytes(&self.cluster.0);
        w.u64(own_offset);
        w.pad_to(4096);
        let mut b = w.v;
        let crc = crc32c::crc32c(&b[..PTR_CRC_OFFSET]);
        put_u32(&mut b, PTR_CRC_OFFSET, crc);
        b
    }

    pub fn decode(b: &[u8], read_offset: u64, area_len: u64) -> Result<BootPtr, FormatError> {
        let s = b.get(..PTR_LEN).ok_or(FormatError::Truncated)?;
        if is_zero(s) {
            return Err(FormatError::Blank);
        }
        let mut r = Rd::new(s);
        if r.take(8)? != PTR_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32c::crc32c(s.get(..PTR_CRC_OFFSET).ok_or(FormatError::Truncated)?)
            != Rd::at(s, PTR_CRC_OFFSET).u32()?
        {
            return Err(FormatError::BadChecksum);
        }
        let version = r.u32()?;
        if version != BOOT_VERSION {
            return Err(FormatError::Version(version));
        }
        let area = r.u32()?;
        let seq = r.u64()?;
        let list_len = r.u64()?;
        let list_crc = r.u32()?;
        r.u32()?;
        let cluster = Uuid(r.arr16()?);
        let own = r.u64()?;
        if own != read_offset {
            return Err(FormatError::WrongOffset {
                found: read_offset,
                claimed: own,
            });
        }
        if area > 1 || list_len > area_len || list_len < LIST_HEADER_LEN as u64 {
            return Err(FormatError::Invalid("boot pointer fields".into()));
        }
        Ok(BootPtr {
            seq,
            area,
            list_len,
            list_crc,
            cluster,
        })
    }
}

/// A volume as listed in the boot list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootVol {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub wwn: [u8; 16],
    /// CRC32C of the volume's encoded definition (objdb volume record payload):
    /// selects the matching copy in the object databases.
    pub def_crc: u32,
    /// The layout (also in the definition; here so a volume whose definition is
    /// unavailable still has the right member count).
    pub layout: Layout,
    /// Persisted health of each member (`layout.members()` entries): changes with one
    /// boot set commit, never by rewriting definitions.
    pub health: Vec<MemberHealth>,
}

/// The boot list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootList {
    pub sig: ClusterSig,
    pub seq: u64,
    pub next_id: u64,
    /// Next fail sequence number to hand out (cluster-wide, increasing; 0 = none yet).
    pub next_fail_seq: u64,
    pub alus: Vec<AluRecord>,
    pub volumes: Vec<BootVol>,
    /// Failed ALUs with the fail sequence number assigned when they failed.
    pub failed: Vec<(Uuid, u64)>,
}

impl BootList {
    /// Encode (unpadded; the pointer records the exact length and CRC).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Wr::new();
        w.bytes(&LIST_MAGIC);
        w.u32(BOOT_VERSION);
        w.u32(0);
        w.u64(self.seq);
        w.bytes(&self.sig.uuid.0);
        w.name(&self.sig.name, 64);
        w.u64(self.next_id);
        w.u64(self.next_fail_seq);
        w.u32(self.alus.len() as u32);
        w.u32(self.volumes.len() as u32);
        w.u32(self.failed.len() as u32);
        w.u32(0);
        for a in &self.alus {
            w.bytes(&a.uuid.0);
            w.bytes(&a.wwn);
            w.u64(a.size);
            w.u64(a.data_start);
            w.u64(a.data_end);
            w.u32(if a.boot_member {
                ALU_FLAG_BOOT_MEMBER
            } else {
                0
            });
            w.u32(0);
        }
        for v in &self.volumes {
            w.u64(v.id);
            w.u64(v.size);
            w.bytes(&v.wwn);
            w.u32(v.def_crc);
            w.u8(v.name.len().min(63) as u8);
            w.u8(v.layout.kind.code());
            w.u16(v.layout.stripes);
            w.u16(v.layout.copies);
            w.u16(v.health.len() as u16);
            w.u32(v.layout.chunk);
            w.name(&v.name, 64);
            for h in &v.health {
                let (code, val) = match *h {
                    MemberHealth::Ok => (HEALTH_OK, 0),
                    MemberHealth::Failed { fail_seq } => (HEALTH_FAILED, fail_seq),
                    MemberHealth::Rebuilding { checkpoint } => (HEALTH_REBUILDING, checkpoint),
                };
                w.u8(code);
                w.zeros(7);
                w.u64(val);
            }
        }
        for (u, q) in &self.failed {
            w.bytes(&u.0);
            w.u64(*q);
        }
        w.v
    }

    pub fn decode(b: &[u8]) -> Result<BootList, FormatError> {
        let mut r = Rd::new(b);
        if r.take(8)? != LIST_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u32()?;
        if version != BOOT_VERSION {
            return Err(FormatError::Version(version));
        }
        r.u32()?;
        let seq = r.u64()?;
        let uuid = Uuid(r.arr16()?);
        let name = r.name(64, "cluster name")?;
        if !valid_cluster_name(&name) {
            return Err(FormatError::Invalid("cluster name".into()));
        }
        let next_id = r.u64()?;
        let next_fail_seq = r.u64()?;
        let na = r.u32()? as usize;
        let nv = r.u32()? as usize;
        let nf = r.u32()? as usize;
        r.u32()?;
        let need = na
            .checked_mul(LIST_ALU_LEN)
            .and_then(|x| x.checked_add(nv.checked_mul(LIST_VOL_LEN)?))
            .and_then(|x| x.checked_add(nf.checked_mul(LIST_FAILED_LEN)?))
            .ok_or(FormatError::Truncated)?;
        // Volume entries are variable length: this is a lower bound (it also bounds
        // the allocations below).
        if need > r.remaining() {
            return Err(FormatError::Invalid("boot list length".into()));
        }
        let mut alus = Vec::with_capacity(na);
        for _ in 0..na {
            let a = AluRecord {
                uuid: Uuid(r.arr16()?),
                wwn: r.arr16()?,
                size: r.u64()?,
                data_start: r.u64()?,
                data_end: r.u64()?,
                boot_member: r.u32()? & ALU_FLAG_BOOT_MEMBER != 0,
            };
            r.u32()?;
            alus.push(a);
        }
        let mut volumes = Vec::with_capacity(nv);
        for _ in 0..nv {
            let id = r.u64()?;
            let size = r.u64()?;
            let wwn = r.arr16()?;
            let def_crc = r.u32()?;
            let nl = r.u8()? as usize;
            let code = r.u8()?;
            let stripes = r.u16()?;
            let copies = r.u16()?;
            let nm = r.u16()? as usize;
            let chunk = r.u32()?;
            let name = r.name(64, "volume name")?;
            if name.len() != nl || !valid_volume_name(&name) {
                return Err(FormatError::Invalid("volume name".into()));
            }
            let kind = LayoutKind::from_code(code)
                .ok_or_else(|| FormatError::Invalid(format!("volume layout {code}")))?;
            let layout = Layout {
                kind,
                stripes,
                copies,
                chunk,
            };
            layout
                .validate()
                .map_err(|e| FormatError::Invalid(format!("volume {name}: {e}")))?;
            if nm != layout.members() {
                return Err(FormatError::Invalid(format!("volume {name}: member count")));
            }
            let mut health = Vec::with_capacity(nm.min(r.remaining() / LIST_MEMBER_LEN));
            for _ in 0..nm {
                let code = r.u8()?;
                r.skip(7)?;
                let val = r.u64()?;
                health.push(match code {
                    HEALTH_OK if val == 0 => MemberHealth::Ok,
                    HEALTH_FAILED => MemberHealth::Failed { fail_seq: val },
                    HEALTH_REBUILDING => MemberHealth::Rebuilding { checkpoint: val },
                    _ => {
                        return Err(FormatError::Invalid(format!(
                            "volume {name}: member health {code}"
                        )))
                    }
                });
            }
            volumes.push(BootVol {
                id,
                name,
                size,
                wwn,
                def_crc,
                layout,
                health,
            });
        }
        let mut failed = Vec::with_capacity(nf.min(r.remaining() / LIST_FAILED_LEN));
        for _ in 0..nf {
            failed.push((Uuid(r.arr16()?), r.u64()?));
        }
        if r.remaining() != 0 {
            return Err(FormatError::Invalid("boot list length".into()));
        }
        Ok(BootList {
            sig: ClusterSig { name, uuid },
            seq,
            next_id,
            next_fail_seq,
            alus,
            volumes,
            failed,
        })
    }
}

/// Read the list a valid pointer refers to and check it against the pointer.
pub fn read_list(
    disk: &mut dyn Disk,
    ptr: &BootPtr,
    areas: [u64; 2],
) -> Result<BootList, FormatError> {
    let off = areas[ptr.area as usize & 1];
    let len = ptr.list_len as usize;
    let mut b = vec![0u8; len.div_ceil(4096) * 4096];
    disk.read_at(off, &mut b)
        .map_err(|e| FormatError::Io(e.to_string()))?;
    let list = b.get(..len).ok_or(FormatError::Truncated)?;
    if crc32c::crc32c(list) != ptr.list_crc {
        return Err(FormatError::Invalid("boot list checksum mismatch".into()));
    }
    let l = BootList::decode(list)?;
    if l.seq != ptr.seq || l.sig.uuid != ptr.cluster {
        return Err(FormatError::Invalid(
            "boot list does not match its pointer".into(),
        ));
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> BootList {
        BootList {
            sig: ClusterSig {
                name: "clu".into(),
                uuid: Uuid([5; 16]),
            },
            seq: 42,
            next_id: 17,
            next_fail_seq: 5,
            alus: vec![AluRecord {
                uuid: Uuid([6; 16]),
                wwn: [0x60; 16],
                size: 64 << 20,
                data_start: 8 << 20,
                data_end: 63 << 20,
                boot_member: true,
            }],
            volumes: vec![
                BootVol {
                    id: 3,
                    name: "v1".into(),
                    size: 1 << 20,
                    wwn: [0x61; 16],
                    def_crc: 0xdead_beef,
                    layout: Layout::linear(),
                    health: vec![MemberHealth::Ok],
                },
                BootVol {
                    id: 9,
                    name: "mirror".into(),
                    size: 2 << 20,
                    wwn: [0x62; 16],
                    def_crc: 0x1234_5678,
                    layout: Layout {
                        kind: LayoutKind::Raid10,
                        stripes: 2,
                        copies: 2,
                        chunk: 1 << 16,
                    },
                    health: vec![
                        MemberHealth::Ok,
                        MemberHealth::Failed { fail_seq: 3 },
                        MemberHealth::Rebuilding {
                            checkpoint: 1 << 20,
                        },
                        MemberHealth::Failed { fail_seq: 4 },
                    ],
                },
            ],
            failed: vec![(Uuid([7; 16]), 2)],
        }
    }

    #[test]
    fn roundtrip() {
        let l = sample();
        assert_eq!(BootList::decode(&l.encode()).unwrap(), l);
        let p = BootPtr {
            seq: 42,
            area: 1,
            list_len: l.encode().len() as u64,
            list_crc: crc32c::crc32c(&l.encode()),
            cluster: l.sig.uuid,
        };
        let b = p.encode(0x2000);
        assert_eq!(BootPtr::decode(&b, 0x2000, 1 << 20).unwrap(), p);
        assert!(matches!(
            BootPtr::decode(&b, 0x3000, 1 << 20),
            Err(FormatError::WrongOffset { .. })
        ));
        let mut c = b.clone();
        c[20] ^= 4;
        assert_eq!(
            BootPtr::decode(&c, 0x2000, 1 << 20),
            Err(FormatError::BadChecksum)
        );
        assert_eq!(
            BootPtr::decode(&[0u8; 512], 0x2000, 1 << 20),
            Err(FormatError::Blank)
        );
        let e = l.encode();
        assert!(BootList::decode(&e[..e.len() - 1]).is_err());
        let mut x = e.clone();
        x.push(0);
        assert!(BootList::decode(&x).is_err());
        assert_eq!(
            e.len(),
            LIST_HEADER_LEN
                + LIST_ALU_LEN
                + 2 * LIST_VOL_LEN
                + 5 * LIST_MEMBER_LEN
                + LIST_FAILED_LEN
        );
        // member count must match the layout; health codes are checked
        let mut bad = l.clone();
        bad.volumes[1].health.pop();
        assert!(BootList::decode(&bad.encode()).is_err());
        let vol1 = LIST_HEADER_LEN + LIST_ALU_LEN + LIST_VOL_LEN + LIST_MEMBER_LEN;
        let mut c = e.clone();
        c[vol1 + LIST_VOL_LEN] = 7;
        assert!(BootList::decode(&c).is_err());
        let mut c = e.clone();
        c[vol1 + 37] = 0;
        assert!(BootList::decode(&c).is_err());
    }
}
