//! Test helpers (public so other crates' tests can use them): [`CrashDisk`] records
//! every write and flush across a set of disks in one global order, can simulate a
//! crash (writes after the crash point fail and are not applied), a torn write, and
//! [`replay`] rebuilds the on-disk state "after the first k writes".

use crate::disk::{Disk, MemDisk};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// One recorded event.
#[derive(Clone, Debug)]
pub enum Event {
    Write {
        disk: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Flush {
        disk: usize,
    },
}

/// Shared recorder/crash configuration for a group of [`CrashDisk`]s.
#[derive(Debug, Default)]
pub struct CrashState {
    /// All events, in global order (writes that failed because of the crash are not recorded).
    pub log: Vec<Event>,
    /// Number of writes issued so far (including failed ones).
    pub writes: usize,
    /// Writes with index >= this fail (not applied).
    pub fail_from: Option<usize>,
    /// The write with this index is torn: only [`torn_len`] bytes are applied, then it fails.
    pub tear_at: Option<usize>,
}

/// Handle shared between the disks of one recording.
#[derive(Clone, Debug, Default)]
pub struct Recorder(pub Arc<Mutex<CrashState>>);

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }
    pub fn state(&self) -> MutexGuard<'_, CrashState> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
    /// Number of recorded write events.
    pub fn write_count(&self) -> usize {
        self.state()
            .log
            .iter()
            .filter(|e| matches!(e, Event::Write { .. }))
            .count()
    }
    pub fn log(&self) -> Vec<Event> {
        self.state().log.clone()
    }
    /// Wrap `inner` as disk number `id` of this recording.
    pub fn disk(&self, id: usize, inner: MemDisk) -> CrashDisk {
        CrashDisk {
            inner,
            id,
            rec: self.clone(),
        }
    }
}

/// A [`MemDisk`] that records writes into a [`Recorder`] and can crash.
pub struct CrashDisk {
    pub inner: MemDisk,
    pub id: usize,
    rec: Recorder,
}

/// Bytes of a torn write that reach the disk: the first half, rounded down to 512.
pub fn torn_len(len: usize) -> usize {
    (len / 2) / 512 * 512
}

impl Disk for CrashDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut st = self.rec.state();
        let idx = st.writes;
        st.writes += 1;
        if st.tear_at == Some(idx) {
            let n = torn_len(buf.len());
            if n > 0 {
                self.inner.write_at(offset, &buf[..n])?;
            }
            st.fail_from = Some(st.fail_from.map_or(idx, |f| f.min(idx)));
            return Err(io::Error::other("simulated crash (torn write)"));
        }
        if st.fail_from.is_some_and(|f| idx >= f) {
            return Err(io::Error::other("simulated crash"));
        }
        self.inner.write_at(offset, buf)?;
        st.log.push(Event::Write {
            disk: self.id,
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut st = self.rec.state();
        if st.fail_from.is_some_and(|f| st.writes > f) {
            return Err(io::Error::other("simulated crash"));
        }
        st.log.push(Event::Flush { disk: self.id });
        Ok(())
    }
    fn identity(&self) -> Option<String> {
        self.inner.identity.clone()
    }
}

/// Rebuild disk images: fresh zeroed disks of `sizes`, then the first `k` write
/// events of `log`; if `tear_next`, also the torn prefix of write `k` (0-based).
pub fn replay(sizes: &[u64], log: &[Event], k: usize, tear_next: bool) -> Vec<MemDisk> {
    let mut disks: Vec<MemDisk> = sizes.iter().map(|&s| MemDisk::new(s)).collect();
    let mut n = 0;
    for e in log {
        if let Event::Write { disk, offset, data } = e {
            let Some(d) = disks.get_mut(*disk) else {
                continue;
            };
            if n < k {
                let _ = d.write_at(*offset, data);
            } else if n == k && tear_next {
                let t = torn_len(data.len());
                if t > 0 {
                    let _ = d.write_at(*offset, &data[..t]);
                }
                break;
            } else {
                break;
            }
            n += 1;
        }
    }
    disks
}

/// A clonable handle to a shared [`MemDisk`], so a test can hand a disk to a
/// [`crate::store::Store`], drop the store and reopen the same bytes.
#[derive(Clone, Debug, Default)]
pub struct SharedDisk(pub Arc<Mutex<MemDisk>>);

impl SharedDisk {
    pub fn new(d: MemDisk) -> SharedDisk {
        SharedDisk(Arc::new(Mutex::new(d)))
    }
    pub fn lock(&self) -> MutexGuard<'_, MemDisk> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Disk for SharedDisk {
    fn size(&self) -> u64 {
        self.lock().size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.lock().read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.lock().write_at(offset, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn identity(&self) -> Option<String> {
        self.lock().identity.clone()
    }
}

/// Small deterministic PRNG (xorshift64*) for corruption tests.
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish value in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b {
            *c = self.next_u64() as u8;
        }
    }
}

/// Flip `count` random bits within `range` of `data` (clamped to the data).
pub fn flip_bits(data: &mut [u8], range: std::ops::Range<usize>, count: usize, rng: &mut XorShift) {
    let end = range.end.min(data.len());
    if range.start >= end {
        return;
    }
    for _ in 0..count {
        let i = range.start + rng.below((end - range.start) as u64) as usize;
        data[i] ^= 1 << rng.below(8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_and_replay() {
        let rec = Recorder::new();
        let mut d = rec.disk(0, MemDisk::new(16384));
        d.write_at(0, &[1u8; 4096]).unwrap();
        d.flush().unwrap();
        rec.state().tear_at = Some(1);
        assert!(d.write_at(4096, &[2u8; 4096]).is_err());
        assert!(d.write_at(8192, &[3u8; 4096]).is_err());
        assert!(d.flush().is_err());
        assert_eq!(d.inner.data[4096 + 2047], 2);
        assert_eq!(d.inner.data[4096 + 2048], 0);
        assert_eq!(d.inner.data[8192], 0);
        assert_eq!(rec.write_count(), 1);
        let img = replay(&[16384], &rec.log(), 1, false);
        assert_eq!(img[0].data[0], 1);
        let img = replay(&[16384], &rec.log(), 0, true);
        assert_eq!(img[0].data[2047], 1);
        assert_eq!(img[0].data[2048], 0);
    }
}
