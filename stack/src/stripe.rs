//! The striping object (spec [061], [074]–[076]): a RAID0 layout over `N >= 2`
//! members of equal size.
//!
//! The volume address space is cut into chunks of `chunk` bytes (a power of two,
//! at least 4 KiB); chunk `k` lives on member `k % N` at member offset
//! `(k / N) * chunk`. A member contributes a whole number of chunks (its size
//! rounded down), so the volume is `N * floor(member / chunk) * chunk` bytes.
//!
//! A read or write within one chunk goes straight to its member. A larger one
//! is split at chunk boundaries into sub-slices of the caller's buffer (no
//! copy); the pieces run concurrently through the heapless
//! [`join`](crate::join) so a large request keeps several members busy.
//! Discard and write-zeroes need no buffer, and the part of a contiguous volume
//! range that falls on one member is itself contiguous on that member, so they
//! become at most one request per member. Flush goes to every member.
//!
//! A stripe has no redundancy: a member error fails the request (with the
//! member's errno). Put the stripe over mirrors (RAID10) to survive failures.

use crate::join::join;
use crate::volume::BuildError;
use crate::{check_range, BlockDev, IoError, IoResult, Limits, ReadBuf, WriteBuf};

/// Smallest chunk size: one page, so chunk pieces of a page-aligned buffer stay
/// page aligned for `O_DIRECT` members.
pub const MIN_CHUNK: u32 = 4096;

/// RAID0 striping over `members`.
pub struct Stripe<D: BlockDev> {
    members: Vec<D>,
    /// log2 of the chunk size.
    shift: u32,
    size: u64,
    limits: Limits,
}

impl<D: BlockDev> Stripe<D> {
    /// Stripe over `members` (at least 2, all of the same size) with `chunk`
    /// bytes per chunk (a power of two, at least [`MIN_CHUNK`], a multiple of
    /// every member's logical block size, and no larger than a member).
    pub fn new(members: Vec<D>, chunk: u32) -> Result<Self, BuildError> {
        if members.len() < 2 {
            return Err(BuildError::MemberCount {
                layout: "stripe",
                expected: "at least 2".into(),
                got: members.len(),
            });
        }
        if !chunk.is_power_of_two() || chunk < MIN_CHUNK {
            return Err(BuildError::Chunk(chunk));
        }
        let member_size = members[0].size();
        // Refuse rather than silently use the smallest: a size mismatch means
        // the description is wrong, and guessing would hide that.
        if let Some((i, m)) = members
            .iter()
            .enumerate()
            .find(|(_, m)| m.size() != member_size)
        {
            return Err(BuildError::UnequalMembers {
                member: i,
                size: m.size(),
                expected: member_size,
            });
        }
        let limits = members
            .iter()
            .map(|m| m.limits())
            .reduce(Limits::restrict)
            .expect("at least 2 members");
        if !chunk.is_multiple_of(limits.logical_block) {
            return Err(BuildError::ChunkBlock {
                chunk,
                logical_block: limits.logical_block,
            });
        }
        let rows = member_size / u64::from(chunk);
        if rows == 0 {
            return Err(BuildError::MemberTooSmall {
                size: member_size,
                min: u64::from(chunk),
            });
        }
        let size = rows * u64::from(chunk) * members.len() as u64;
        Ok(Stripe {
            members,
            shift: chunk.trailing_zeros(),
            size,
            limits,
        })
    }

    /// The members, in stripe order.
    pub fn members(&self) -> &[D] {
        &self.members
    }

    /// Chunk size in bytes.
    pub fn chunk(&self) -> u32 {
        1 << self.shift
    }

    /// Map volume offset `off` to (member, member offset, bytes left in that
    /// chunk).
    pub fn map(&self, off: u64) -> (usize, u64, u64) {
        let n = self.members.len() as u64;
        let k = off >> self.shift;
        let within = off & ((1u64 << self.shift) - 1);
        let member = (k % n) as usize;
        let moff = ((k / n) << self.shift) + within;
        (member, moff, (1u64 << self.shift) - within)
    }

    /// Member offset of the first byte of member `m` at or after volume offset
    /// `v` (for `v == size`, the member's end). Used to turn a volume range into
    /// one contiguous range per member.
    fn member_bound(&self, v: u64, m: usize) -> u64 {
        let n = self.members.len() as u64;
        let k = v >> self.shift;
        let within = v & ((1u64 << self.shift) - 1);
        let (row, col) = (k / n, (k % n) as usize);
        if m < col {
            (row + 1) << self.shift
        } else if m == col {
            (row << self.shift) + within
        } else {
            row << self.shift
        }
    }

    /// Per member, the contiguous member range `(member, offset, len)` covered
    /// by the volume range `[offset, offset + len)` (valid range); members not
    /// touched are skipped.
    fn member_ranges(&self, offset: u64, len: u64) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let end = offset + len;
        (0..self.members.len()).filter_map(move |m| {
            let lo = self.member_bound(offset, m);
            let hi = self.member_bound(end, m);
            (hi > lo).then_some((m, lo, hi - lo))
        })
    }
}

/// Keep the first error, re-labelled with the stripe-level request (the
/// member's errno is what the host sees).
fn keep_first(
    slot: &mut Option<IoError>,
    r: IoResult<()>,
    op: &'static str,
    offset: u64,
    len: u64,
) {
    if slot.is_none() {
        *slot = relabel(r, op, offset, len).err();
    }
}

/// A member's result, its error re-labelled with the stripe-level request.
fn relabel(r: IoResult<()>, op: &'static str, offset: u64, len: u64) -> IoResult<()> {
    r.map_err(|e| {
        tracing::debug!(error = %e, "stripe member request failed");
        e.relabel(op, offset, len)
    })
}

fn into_result(err: Option<IoError>) -> IoResult<()> {
    err.map_or(Ok(()), Err)
}

impl<D: BlockDev> Stripe<D> {}

impl<D: BlockDev> BlockDev for Stripe<D> {
    fn size(&self) -> u64 {
        self.size
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn read_to(&self, offset: u64, buf: ReadBuf<'_>) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("read", offset, len, self.size)?;
        let (m, moff, left) = self.map(offset);
        if len > 0 && len <= left {
            // Within one chunk (a small request usually is): straight to its
            // member. The join is the costly path: its slots are sized for
            // `DEFAULT_WIDTH` member futures and each piece is moved in.
            return relabel(
                self.members[m].read_to(moff, buf).await,
                "read",
                offset,
                len,
            );
        }
        let mut rest = Some(buf);
        let mut pos = offset;
        // Lazily carve one chunk piece at a time off the front of the buffer.
        let pieces = std::iter::from_fn(|| {
            let buf = rest.take().filter(|b| !b.is_empty())?;
            let (m, moff, left) = self.map(pos);
            let n = left.min(buf.len() as u64) as usize;
            let (piece, tail) = buf.split_at(n);
            rest = Some(tail);
            pos += n as u64;
            Some(self.members[m].read_to(moff, piece))
        });
        let mut err = None;
        join(pieces, |_, r| keep_first(&mut err, r, "read", offset, len)).await;
        into_result(err)
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        let len = buf.len() as u64;
        check_range("write", offset, len, self.size)?;
        let (m, moff, left) = self.map(offset);
        if len > 0 && len <= left {
            // Within one chunk: straight to its member (see `read`).
            let r = self.members[m].write_from(moff, buf, fua).await;
            return relabel(r, "write", offset, len);
        }
        let mut rest = buf;
        let mut pos = offset;
        let pieces = std::iter::from_fn(|| {
            if rest.is_empty() {
                return None;
            }
            let (m, moff, left) = self.map(pos);
            let n = left.min(rest.len() as u64) as usize;
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            pos += n as u64;
            Some(self.members[m].write_from(moff, piece, fua))
        });
        let mut err = None;
        join(pieces, |_, r| keep_first(&mut err, r, "write", offset, len)).await;
        into_result(err)
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        self.read_to(offset, ReadBuf::Mem(buf)).await
    }

    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> IoResult<()> {
        self.write_from(offset, WriteBuf::Mem(buf), fua).await
    }

    fn fixed(&self) -> bool {
        self.members.iter().all(|m| m.fixed())
    }

    async fn flush(&self) -> IoResult<()> {
        // Every member, even if one fails.
        let mut err = None;
        join(self.members.iter().map(|m| m.flush()), |_, r| {
            keep_first(&mut err, r, "flush", 0, 0)
        })
        .await;
        into_result(err)
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("discard", offset, len, self.size)?;
        let mut err = None;
        let reqs = self
            .member_ranges(offset, len)
            .map(|(m, moff, mlen)| self.members[m].discard(moff, mlen));
        join(reqs, |_, r| keep_first(&mut err, r, "discard", offset, len)).await;
        into_result(err)
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("write_zeroes", offset, len, self.size)?;
        let mut err = None;
        let reqs = self
            .member_ranges(offset, len)
            .map(|(m, moff, mlen)| self.members[m].write_zeroes(moff, mlen));
        join(reqs, |_, r| {
            keep_first(&mut err, r, "write_zeroes", offset, len)
        })
        .await;
        into_result(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member that only has a size (mapping tests never do I/O).
    struct Sized(u64);
    impl BlockDev for Sized {
        fn size(&self) -> u64 {
            self.0
        }
        fn limits(&self) -> Limits {
            crate::partition::DEFAULT_LIMITS
        }
        async fn read(&self, _: u64, _: &mut [u8]) -> IoResult<()> {
            unreachable!()
        }
        async fn write(&self, _: u64, _: &[u8], _: bool) -> IoResult<()> {
            unreachable!()
        }
        async fn flush(&self) -> IoResult<()> {
            unreachable!()
        }
        async fn discard(&self, _: u64, _: u64) -> IoResult<()> {
            unreachable!()
        }
        async fn write_zeroes(&self, _: u64, _: u64) -> IoResult<()> {
            unreachable!()
        }
    }

    fn stripe(n: usize, member: u64, chunk: u32) -> Stripe<Sized> {
        Stripe::new((0..n).map(|_| Sized(member)).collect(), chunk).unwrap()
    }

    #[test]
    fn raid0_mapping_and_rounded_size() {
        let s = stripe(3, 10 * 4096 + 100, 4096);
        assert_eq!(s.size(), 3 * 10 * 4096);
        assert_eq!(s.map(0), (0, 0, 4096));
        assert_eq!(s.map(4096 + 512), (1, 512, 3584));
        assert_eq!(s.map(2 * 4096), (2, 0, 4096));
        assert_eq!(s.map(3 * 4096 + 1), (0, 4096 + 1, 4095));
        assert_eq!(s.map(7 * 4096), (1, 2 * 4096, 4096));
    }

    #[test]
    fn member_ranges_match_chunkwise_mapping() {
        // Brute force: walk the range chunk by chunk and collect, per member,
        // the union of member bytes; it must equal member_ranges' output.
        for n in 2..=4usize {
            let s = stripe(n, 16 * 8192, 8192);
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..500 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % s.size()) / 512 * 512;
                let len = ((x >> 20) % (s.size() - off + 1)) / 512 * 512;
                let mut want: Vec<Option<(u64, u64)>> = vec![None; n];
                let mut pos = off;
                while pos < off + len {
                    let (m, moff, left) = s.map(pos);
                    let k = left.min(off + len - pos);
                    want[m] = Some(match want[m] {
                        None => (moff, k),
                        Some((lo, l)) => {
                            assert_eq!(lo + l, moff, "per-member range not contiguous");
                            (lo, l + k)
                        }
                    });
                    pos += k;
                }
                let got: Vec<_> = s.member_ranges(off, len).collect();
                let want: Vec<_> = want
                    .iter()
                    .enumerate()
                    .filter_map(|(m, r)| r.map(|(lo, l)| (m, lo, l)))
                    .collect();
                assert_eq!(got, want, "n={n} off={off} len={len}");
            }
        }
    }

    #[test]
    fn construction_errors() {
        let e = |r: Result<Stripe<Sized>, BuildError>| r.err().expect("should fail");
        assert!(matches!(
            e(Stripe::new(vec![Sized(1 << 20)], 4096)),
            BuildError::MemberCount { got: 1, .. }
        ));
        assert!(matches!(
            e(Stripe::new(vec![Sized(1 << 20), Sized(1 << 20)], 6144)),
            BuildError::Chunk(6144)
        ));
        assert!(matches!(
            e(Stripe::new(vec![Sized(1 << 20), Sized(1 << 20)], 2048)),
            BuildError::Chunk(2048)
        ));
        assert!(matches!(
            e(Stripe::new(vec![Sized(1 << 20), Sized(1 << 19)], 4096)),
            BuildError::UnequalMembers { member: 1, .. }
        ));
        assert!(matches!(
            e(Stripe::new(vec![Sized(4095), Sized(4095)], 4096)),
            BuildError::MemberTooSmall { .. }
        ));
    }
}
