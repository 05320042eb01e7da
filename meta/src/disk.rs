//! The [`Disk`] abstraction that all metadata I/O goes through, with a real
//! implementation for image files and block devices ([`FileDisk`]) and an in-memory
//! one ([`MemDisk`]) for tests.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Sector-addressed storage. Offsets and lengths passed by this crate are multiples
/// of 512 (in practice of 4096).
pub trait Disk: Send {
    fn size(&self) -> u64;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// The physical device this disk lives on (a partition's whole disk, an
    /// image file's filesystem device), when known: the boot set prefers
    /// members on distinct devices ([059]).
    fn device_id(&self) -> Option<u64> {
        None
    }
    /// A stable identity of the device, independent of its path (a disk's
    /// serial or WWID from sysfs, an image file's inode): how an adopted
    /// legacy disk, which carries no signature of ours, is recognised at the
    /// next start ([058], [060]).
    fn identity(&self) -> Option<String> {
        None
    }
}

fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("access at {offset:#x}+{len:#x} beyond device size {size:#x}"),
        )),
    }
}

/// In-memory disk.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    pub data: Vec<u8>,
    /// What [`Disk::identity`] reports (tests).
    pub identity: Option<String>,
}

impl MemDisk {
    /// A zero-filled disk of `size` bytes (allocation is lazy for large sizes).
    pub fn new(size: u64) -> MemDisk {
        MemDisk {
            data: vec![0u8; size as usize],
            identity: None,
        }
    }
}

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size(), offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check_range(self.size(), offset, buf.len())?;
        let o = offset as usize;
        self.data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn identity(&self) -> Option<String> {
        self.identity.clone()
    }
}

/// 4 KiB aligned heap buffer used as the O_DIRECT bounce buffer.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is uniquely owned memory; no shared aliasing.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    const ALIGN: usize = 4096;
    fn new(len: usize) -> io::Result<AlignedBuf> {
        let len = len.max(Self::ALIGN).div_ceil(Self::ALIGN) * Self::ALIGN;
        let layout = Layout::from_size_align(len, Self::ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "bounce buffer"));
        }
        Ok(AlignedBuf { ptr, len })
    }
    fn slice(&mut self, n: usize) -> &mut [u8] {
        let n = n.min(self.len);
        // SAFETY: ptr is valid for len bytes, n <= len, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(self.len, Self::ALIGN) {
            // SAFETY: allocated with this exact layout in new().
            unsafe { dealloc(self.ptr, layout) }
        }
    }
}

/// An image file or block device, opened with O_DIRECT when possible.
pub struct FileDisk {
    file: File,
    path: PathBuf,
    size: u64,
    device: Option<u64>,
    identity: Option<String>,
    direct: bool,
    bounce: AlignedBuf,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl FileDisk {
    pub fn open(path: &Path, writable: bool) -> io::Result<FileDisk> {
        let mk = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(writable);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = match mk(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (mk(false)?, false),
            Err(e) => return Err(e),
        };
        let md = file.metadata()?;
        let identity = Some(if md.file_type().is_block_device() {
            block_identity(md.rdev())
        } else {
            format!("file:{}:{}", md.dev(), md.ino())
        });
        let device = Some(if md.file_type().is_block_device() {
            whole_disk(md.rdev())
        } else {
            md.dev()
        });
        let size = if md.file_type().is_block_device() {
            let mut sz: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 to the pointer we pass.
            let rc =
                unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut sz as *mut u64) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            sz
        } else {
            md.len()
        };
        Ok(FileDisk {
            file,
            path: path.to_path_buf(),
            size,
            device,
            identity,
            direct,
            bounce: AlignedBuf::new(1 << 20)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the device was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn ensure_bounce(&mut self, n: usize) -> io::Result<()> {
        if self.bounce.len < n {
            self.bounce = AlignedBuf::new(n)?;
        }
        Ok(())
    }
}

/// A block device's stable identity: its disk's WWID or serial from sysfs
/// (with the partition number for a partition), else its device number.
fn block_identity(rdev: u64) -> String {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
    let part = std::fs::read_to_string(sys.join("partition")).ok();
    let disk = if part.is_some() { sys.join("..") } else { sys };
    let read = |f: &str| {
        std::fs::read_to_string(disk.join(f))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let id = read("wwid")
        .or_else(|| read("device/wwid"))
        .map(|w| format!("wwid:{w}"))
        .or_else(|| read("serial").map(|s| format!("serial:{s}")))
        .or_else(|| read("device/serial").map(|s| format!("serial:{s}")));
    match (id, part) {
        (Some(id), Some(p)) => format!("{id}#p{}", p.trim()),
        (Some(id), None) => id,
        (None, _) => format!("dev:{major}:{minor}"),
    }
}

/// The whole disk a block device belongs to: a partition's parent, found
/// through sysfs; the device itself otherwise (or when sysfs says nothing).
fn whole_disk(rdev: u64) -> u64 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = format!("/sys/dev/block/{major}:{minor}");
    if !Path::new(&sys).join("partition").exists() {
        return rdev;
    }
    std::fs::read_to_string(format!("{sys}/../dev"))
        .ok()
        .and_then(|t| {
            let (ma, mi) = t.trim().split_once(':')?;
            Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
        })
        .unwrap_or(rdev)
}

impl Disk for FileDisk {
    fn identity(&self) -> Option<String> {
        self.identity.clone()
    }
    fn device_id(&self) -> Option<u64> {
        self.device
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        if !self.direct {
            return self.file.read_exact_at(buf, offset);
        }
        self.ensure_bounce(buf.len())?;
        let n = buf.len();
        let b = self.bounce.slice(n);
        self.file.read_exact_at(b, offset)?;
        buf.copy_from_slice(b);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        if !self.direct {
            return self.file.write_all_at(buf, offset);
        }
        self.ensure_bounce(buf.len())?;
        let b = self.bounce.slice(buf.len());
        b.copy_from_slice(buf);
        self.file.write_all_at(b, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_disk_roundtrip() {
        let dir = std::env::temp_dir().join(format!("tierblk-meta-fd-{}", std::process::id()));
        let f = File::create(&dir).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        let mut d = FileDisk::open(&dir, true).unwrap();
        assert_eq!(d.size(), 1 << 20);
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        d.write_at(4096, &data).unwrap();
        d.flush().unwrap();
        let mut back = vec![0u8; 8192];
        d.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(d.read_at(1 << 20, &mut back).is_err());
        assert_eq!(d.path(), dir.as_path());
        // An image file lives on its filesystem's device.
        let dev = std::fs::metadata(&dir).unwrap().dev();
        assert_eq!(d.device_id(), Some(dev));
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn mem_disk_bounds() {
        let mut d = MemDisk::new(8192);
        assert!(d.write_at(8192 - 512, &[1u8; 1024]).is_err());
        assert!(d.write_at(u64::MAX - 10, &[1u8; 512]).is_err());
        d.write_at(512, &[7u8; 512]).unwrap();
        let mut b = [0u8; 512];
        d.read_at(512, &mut b).unwrap();
        assert_eq!(b, [7u8; 512]);
    }
}
