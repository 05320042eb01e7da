//! Detection of foreign signatures (file systems, partition tables, RAID/LVM/LUKS
//! labels) so that `claim` does not overwrite somebody's data without `force` ([058]:
//! ALUs without a valid signature are unaffiliated, but may still hold data).

use crate::disk::Disk;
use std::io;

fn at(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

/// Look for a known foreign signature in the first 1 MiB and the last 8 KiB of `disk`.
/// Returns a human-readable description, e.g. `"ext4 filesystem"`.
pub fn detect_foreign(disk: &mut dyn Disk) -> io::Result<Option<String>> {
    let size = disk.size();
    let head_len = size.min(1 << 20) & !511;
    let mut head = vec![0u8; head_len as usize];
    if head_len > 0 {
        disk.read_at(0, &mut head)?;
    }
    if let Some(s) = detect_in_head(&head) {
        return Ok(Some(s));
    }
    // Backup GPT header in the last sector.
    if size >= 1024 {
        let last = (size & !511) - 512;
        let mut t = vec![0u8; 512];
        disk.read_at(last, &mut t)?;
        if t.get(..8) == Some(b"EFI PART") {
            return Ok(Some("GPT partition table (backup header)".into()));
        }
    }
    Ok(None)
}

/// Signature checks on the first bytes of a device (any length; missing bytes = no match).
pub fn detect_in_head(b: &[u8]) -> Option<String> {
    let eq = |off: usize, pat: &[u8]| at(b, off, pat.len()) == Some(pat);
    if eq(0, b"LUKS\xba\xbe") {
        return Some("LUKS encrypted volume".into());
    }
    if eq(0, b"XFSB") {
        return Some("XFS filesystem".into());
    }
    if eq(65600, b"_BHRfS_M") {
        return Some("btrfs filesystem".into());
    }
    let md = 0xa92b_4efcu32.to_le_bytes();
    if eq(4096, &md) || eq(0, &md) {
        return Some("Linux MD RAID member".into());
    }
    for s in 0..4 {
        if eq(s * 512, b"LABELONE") {
            return Some("LVM2 physical volume".into());
        }
    }
    if eq(1080, &[0x53, 0xef]) {
        let feat = |off: usize| {
            at(b, off, 4)
                .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                .unwrap_or(0)
        };
        let compat = feat(1024 + 0x5c);
        let incompat = feat(1024 + 0x60);
        let kind = if incompat & 0x40 != 0 || incompat & 0x80 != 0 || incompat & 0x200 != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        return Some(format!("{kind} filesystem"));
    }
    if eq(4086, b"SWAPSPACE2") || eq(4086, b"SWAP-SPACE") {
        return Some("swap space".into());
    }
    if eq(32769, b"CD001") {
        return Some("ISO9660 filesystem".into());
    }
    if eq(512, b"EFI PART") {
        return Some("GPT partition table".into());
    }
    if eq(510, &[0x55, 0xaa]) {
        let nonempty = (0..4)
            .any(|i| at(b, 446 + i * 16, 16).is_some_and(|e| e.get(4).is_some_and(|&t| t != 0)));
        if nonempty {
            return Some("MBR partition table".into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemDisk;

    fn with(off: usize, pat: &[u8]) -> MemDisk {
        let mut d = MemDisk::new(4 << 20);
        d.data[off..off + pat.len()].copy_from_slice(pat);
        d
    }

    #[test]
    fn detects() {
        let cases: Vec<(MemDisk, &str)> = vec![
            (with(1080, &[0x53, 0xef]), "ext2"),
            (with(0, b"XFSB"), "XFS"),
            (with(65600, b"_BHRfS_M"), "btrfs"),
            (with(4086, b"SWAPSPACE2"), "swap"),
            (with(4086, b"SWAP-SPACE"), "swap"),
            (with(512, b"EFI PART"), "GPT"),
            (with(512, b"LABELONE"), "LVM2"),
            (with(4096, &0xa92b_4efcu32.to_le_bytes()), "MD"),
            (with(0, b"LUKS\xba\xbe"), "LUKS"),
            (with(32769, b"CD001"), "ISO9660"),
            (with((4 << 20) - 512, b"EFI PART"), "GPT"),
        ];
        for (mut d, want) in cases {
            let got = detect_foreign(&mut d).unwrap().unwrap_or_default();
            assert!(got.contains(want), "{got} vs {want}");
        }
        let mut ext4 = with(1080, &[0x53, 0xef]);
        ext4.data[1024 + 0x60] = 0x40;
        assert_eq!(
            detect_foreign(&mut ext4).unwrap().unwrap(),
            "ext4 filesystem"
        );
        // MBR needs a non-empty partition entry.
        let mut mbr = with(510, &[0x55, 0xaa]);
        assert_eq!(detect_foreign(&mut mbr).unwrap(), None);
        mbr.data[446 + 4] = 0x83;
        assert!(detect_foreign(&mut mbr).unwrap().unwrap().contains("MBR"));
        assert_eq!(detect_foreign(&mut MemDisk::new(4 << 20)).unwrap(), None);
        assert_eq!(detect_foreign(&mut MemDisk::new(0)).unwrap(), None);
        assert_eq!(detect_in_head(&[]), None);
    }
}
