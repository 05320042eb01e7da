//! Bounds-checked little-endian reader/writer helpers shared by the decoders.

use crate::error::FormatError;

pub(crate) struct Rd<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Rd<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Rd { b, p: 0 }
    }
    pub fn at(b: &'a [u8], p: usize) -> Self {
        Rd { b, p }
    }
    pub fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.p)
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.p.checked_add(n).ok_or(FormatError::Truncated)?;
        let s = self.b.get(self.p..end).ok_or(FormatError::Truncated)?;
        self.p = end;
        Ok(s)
    }
    pub fn skip(&mut self, n: usize) -> Result<(), FormatError> {
        self.take(n).map(|_| ())
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn arr16(&mut self) -> Result<[u8; 16], FormatError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(a)
    }
    /// Fixed-size NUL-padded UTF-8 string field.
    pub fn name(&mut self, field: usize, what: &str) -> Result<String, FormatError> {
        let raw = self.take(field)?;
        decode_name(raw, what)
    }
}

pub(crate) fn decode_name(raw: &[u8], what: &str) -> Result<String, FormatError> {
    let len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let (s, pad) = raw.split_at(len);
    if len == 0 || len >= raw.len() || pad.iter().any(|&c| c != 0) {
        return Err(FormatError::Invalid(format!("{what} (length/padding)")));
    }
    std::str::from_utf8(s)
        .map(|s| s.to_string())
        .map_err(|_| FormatError::Invalid(format!("{what} (not UTF-8)")))
}

#[derive(Default)]
pub(crate) struct Wr {
    pub v: Vec<u8>,
}

impl Wr {
    pub fn new() -> Self {
        Wr { v: Vec::new() }
    }
    pub fn u8(&mut self, x: u8) {
        self.v.push(x);
    }
    pub fn u16(&mut self, x: u16) {
        self.v.extend_from_slice(&x.to_le_bytes());
    }
    pub fn u32(&mut self, x: u32) {
        self.v.extend_from_slice(&x.to_le_bytes());
    }
    pub fn u64(&mut self, x: u64) {
        self.v.extend_from_slice(&x.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.v.extend_from_slice(b);
    }
    pub fn zeros(&mut self, n: usize) {
        self.v.resize(self.v.len() + n, 0);
    }
    /// NUL-padded fixed field; `s` must be shorter than `field` (checked by callers).
    pub fn name(&mut self, s: &str, field: usize) {
        let b = s.as_bytes();
        let n = b.len().min(field.saturating_sub(1));
        self.v.extend_from_slice(&b[..n]);
        self.zeros(field - n);
    }
    pub fn pad_to(&mut self, n: usize) {
        if self.v.len() < n {
            self.v.resize(n, 0);
        }
    }
}

/// Write a little-endian u32 at `off` (used to patch checksums); no-op if out of range.
pub(crate) fn put_u32(b: &mut [u8], off: usize, x: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn round_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&c| c == 0)
}
