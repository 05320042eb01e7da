//! In-memory `BlockDev` that records every write it receives into a log shared
//! by several devices, so a test can replay any prefix of the global write
//! order (crash points).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tierblk_stack::partition::DEFAULT_LIMITS;
use tierblk_stack::{BlockDev, IoError, IoResult, Limits};

/// One recorded modification.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub enum Event {
    /// `data` written at `off` on device `dev`.
    Write { dev: usize, off: u64, data: Vec<u8> },
    /// `[off, off+len)` zeroed on device `dev` (discard or write-zeroes).
    Zero { dev: usize, off: u64, len: u64 },
    /// Flush of device `dev` (not a modification; kept for inspection).
    Flush { dev: usize },
}

/// The shared log.
#[derive(Default)]
pub struct Recorder {
    pub events: RefCell<Vec<Event>>,
    pub on: Cell<bool>,
}

impl Recorder {
    fn push(&self, e: Event) {
        if self.on.get() {
            self.events.borrow_mut().push(e);
        }
    }
}

/// A device `id` over `data`; clones share storage and log.
#[derive(Clone)]
pub struct RecDev {
    pub id: usize,
    pub data: Rc<RefCell<Vec<u8>>>,
    pub log: Rc<Recorder>,
}

impl RecDev {
    pub fn new(id: usize, data: Vec<u8>, log: Rc<Recorder>) -> Self {
        RecDev {
            id,
            data: Rc::new(RefCell::new(data)),
            log,
        }
    }

    pub fn contents(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }

    fn range(&self, op: &'static str, off: u64, len: u64) -> IoResult<std::ops::Range<usize>> {
        match off.checked_add(len) {
            Some(end) if end <= self.data.borrow().len() as u64 => Ok(off as usize..end as usize),
            _ => Err(IoError::out_of_range(op, off, len)),
        }
    }
}

/// Apply `e` to `image` if it modifies device `dev`; with `torn`, only the
/// first 512 bytes of a write (or zeroing) land.
pub fn apply(image: &mut [u8], dev: usize, e: &Event, torn: bool) {
    match e {
        Event::Write { dev: d, off, data } if *d == dev => {
            let n = if torn {
                data.len().min(512)
            } else {
                data.len()
            };
            image[*off as usize..*off as usize + n].copy_from_slice(&data[..n]);
        }
        Event::Zero { dev: d, off, len } if *d == dev => {
            let n = if torn { (*len).min(512) } else { *len };
            image[*off as usize..(*off + n) as usize].fill(0);
        }
        _ => {}
    }
}

impl BlockDev for RecDev {
    fn size(&self) -> u64 {
        self.data.borrow().len() as u64
    }
    fn limits(&self) -> Limits {
        DEFAULT_LIMITS
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> IoResult<()> {
        let r = self.range("read", offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.borrow()[r]);
        Ok(())
    }
    async fn write(&self, offset: u64, buf: &[u8], _fua: bool) -> IoResult<()> {
        let r = self.range("write", offset, buf.len() as u64)?;
        self.data.borrow_mut()[r].copy_from_slice(buf);
        self.log.push(Event::Write {
            dev: self.id,
            off: offset,
            data: buf.to_vec(),
        });
        Ok(())
    }
    async fn flush(&self) -> IoResult<()> {
        self.log.push(Event::Flush { dev: self.id });
        Ok(())
    }
    async fn discard(&self, offset: u64, len: u64) -> IoResult<()> {
        self.write_zeroes(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> IoResult<()> {
        let r = self.range("write_zeroes", offset, len)?;
        self.data.borrow_mut()[r].fill(0);
        self.log.push(Event::Zero {
            dev: self.id,
            off: offset,
            len,
        });
        Ok(())
    }
}
