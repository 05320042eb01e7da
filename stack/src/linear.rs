//! The linear (concatenation) object (spec [061]): members laid end to end in
//! order, possibly partitions of different ALUs.
//!
//! A request is split at member boundaries into sub-slices of the caller's
//! buffer (no copying) or of its registered buffer (zero copy), and the
//! pieces are issued to the members in order.

use crate::{check_range, BlockDev, IoResult, Limits, ReadBuf, WriteBuf};

/// Concatenation of `members`.
pub struct Linear<D: BlockDev> {
    members: Vec<D>,
    /// `starts[i]` is the volume offset of member `i`; `starts[n]` the size.
    starts: Vec<u64>,
    limits: Limits,
}

impl<D: BlockDev> Linear<D> {
    /// Concatenate `members` in order. Empty members are allowed (they take no
    /// space). With no members the volume has size 0.
    pub fn new(members: Vec<D>) -> Self {
        let mut starts = Vec::with_capacity(members.len() + 1);
        let mut acc = 0u64;
        starts.push(0);
        for m in &members {
            acc = acc.saturating_add(m.size());
            starts.push(acc);
        }
        let limits = members
            .iter()
            .map(|m| m.limits())
            .reduce(Limits::restrict)
            .unwrap_or(crate::partition::DEFAULT_LIMITS);
        Linear {
            members,
            starts,
            limits,
        }
    }

    /// The members, in volume order.
    pub fn members(&self) -> &[D] {
        &self.members
    }

    /// Iterate the pieces of `[offset, offset + len)`: (member index, member
    /// offset, piece start relative to `offset`, piece length). The range must
    /// be valid.
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (usize, u64, u64, u64)> + '_ {
        // First member whose end is past `offset`.
        let first = self.starts[1..].partition_point(|&end| end <= offset);
        let end = offset + len;
        (first..self.members.len())
            .take_while(move |&i| self.starts[i] < end)
            .filter_map(move |i| {
                let lo = self.starts[i].max(offset);
                let hi = self.starts[i + 1].min(end);
                (hi > lo).then(|| (i, lo - self.starts[i], lo - offset, hi - lo))
            })
    }
}

impl<D: BlockDev> Linear<D> {}

impl<D: BlockDev> BlockDev for Linear<D> {
    fn size(&self) -> u64 {
        self.starts[self.members.len()]
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn read_to(&self, offset: u64, mut buf: ReadBuf<'_>) -> IoResult<()> {
        check_range("read", offset, buf.len() as u64, self.size())?;
        for (i, moff, rel, len) in self.pieces(offset, buf.len() as u64) {
            let piece = buf.part(rel as usize, len as usize);
            self.members[i].read_to(moff, piece).await?;
        }
        Ok(())
    }

    async fn write_from(&self, offset: u64, buf: WriteBuf<'_>, fua: bool) -> IoResult<()> {
        check_range("write", offset, buf.len() as u64, self.size())?;
        for (i, moff, rel, len) in self.pieces(offset, buf.len() as u64) {
            let piece = buf.part(rel as usize, len as usize);
            self.members[i].write_from(moff, piece, fua).await?;
        }
        Ok(())
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
        // Flush every member even if one fails; report the first error.
        let mut result = Ok(());
        for m in &self.members {
            if let Err(e) = m.flush().await {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("discard", offset, len, self.size())?;
        for (i, moff, _, plen) in self.pieces(offset, len) {
            self.members[i].discard(moff, plen).await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        check_range("write_zeroes", offset, len, self.size())?;
        for (i, moff, _, plen) in self.pieces(offset, len) {
            self.members[i].write_zeroes(moff, plen).await?;
        }
        Ok(())
    }
}
