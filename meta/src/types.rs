//! Plain data types shared by the on-disk structures and the [`crate::store::Store`] API.

use std::fmt;
use std::str::FromStr;

/// 128-bit identifier (ALUs, clusters). Displayed as 8-4-4-4-12 lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const NIL: Uuid = Uuid([0; 16]);

    /// A random (version 4) UUID from /dev/urandom.
    pub fn random() -> Uuid {
        let mut b = random_bytes16();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Error parsing a [`Uuid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid uuid {0:?}: expected 8-4-4-4-12 hex digits")]
pub struct UuidParseError(pub String);

impl FromStr for Uuid {
    type Err = UuidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UuidParseError(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return Err(err());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *o = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Uuid(out))
    }
}

/// 16 random bytes from /dev/urandom (falls back to a time/pid mix if unavailable).
pub fn random_bytes16() -> [u8; 16] {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(&mut b).is_ok() {
            return b;
        }
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static CTR: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let c = CTR.fetch_add(1, Ordering::Relaxed);
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ c.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    b
}

/// A random NAA-6 style world wide name (first nibble 6).
pub fn random_wwn() -> [u8; 16] {
    let mut b = random_bytes16();
    b[0] = 0x60 | (b[0] & 0x0f);
    b
}

/// Cluster identity stored in every MDR directory ([058] "signature").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSig {
    pub name: String,
    pub uuid: Uuid,
}

/// A byte range on an ALU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

/// One ALU as listed in the boot list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AluRecord {
    pub uuid: Uuid,
    pub wwn: [u8; 16],
    pub size: u64,
    pub data_start: u64,
    pub data_end: u64,
    pub boot_member: bool,
}

/// One piece of a linear volume: a partition on an ALU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub partition_id: u64,
    pub alu: Uuid,
    pub start: u64,
    pub len: u64,
}

/// A volume top object. Linear layout: segments concatenated in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeDef {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub wwn: [u8; 16],
    pub segments: Vec<Segment>,
}

/// The committed cluster configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterImage {
    pub sig: ClusterSig,
    pub seq: u64,
    pub alus: Vec<AluRecord>,
    pub volumes: Vec<VolumeDef>,
    pub failed_alus: Vec<Uuid>,
    pub next_id: u64,
}

/// Maximum length of cluster and volume names in bytes.
pub const MAX_NAME: usize = 63;

/// Cluster names: 1..=63 bytes of UTF-8 without NUL.
pub fn valid_cluster_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && !s.contains('\0')
}

/// Volume names: 1..=63 bytes of `[A-Za-z0-9._-]`.
pub fn valid_volume_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_roundtrip() {
        let u = Uuid::random();
        let s = u.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(s.parse::<Uuid>().unwrap(), u);
        assert!("xyz".parse::<Uuid>().is_err());
        assert!("0123456789abcdef0123456789abcdef0123"
            .parse::<Uuid>()
            .is_err());
        assert_eq!(
            Uuid([0x12; 16]).to_string(),
            "12121212-1212-1212-1212-121212121212"
        );
        assert_ne!(Uuid::random(), Uuid::random());
        assert_eq!(random_wwn()[0] >> 4, 6);
    }

    #[test]
    fn names() {
        assert!(valid_volume_name("vol-1.a_b"));
        assert!(!valid_volume_name(""));
        assert!(!valid_volume_name("a b"));
        assert!(!valid_volume_name(&"a".repeat(64)));
        assert!(valid_volume_name(&"a".repeat(63)));
        assert!(valid_cluster_name("c1"));
        assert!(!valid_cluster_name(""));
    }
}
