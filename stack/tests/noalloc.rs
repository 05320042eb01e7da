//! The I/O path allocates nothing per request (issue 6: "no allocation or
//! lock per I/O"): once a volume has served a few requests (its ring's slot
//! table and the joins' scratch grown to their working size), reads, writes,
//! FUA writes, writes across chunks and legs, and flushes on every layout
//! `build_volume` makes run without a single heap allocation on the thread
//! that serves them. A counting allocator (this test binary's global
//! allocator, counting per thread) proves it.

mod common;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::sync::Arc;

use common::TempImage;
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    build_volume, open_alu, AlignedBuf, BlockDev, Layout, MemberDesc, MirrorHealth, VolumeDesc,
};

thread_local! {
    // `const` and without a destructor: using it never allocates, so the
    // allocator may.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the allocations of each thread.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds GlobalAlloc's contract; counting touches only a thread-local Cell.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: ptr was allocated by System (every allocation here is) with
        // this layout, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Requests of one round: (offset, length, write, fua), plus a flush. Sized
/// to cross chunk (64 KiB) and stripe boundaries.
const ROUND: [(u64, u64, bool, bool); 8] = [
    (0, 4 * KIB, true, false),
    (0, 4 * KIB, false, false),
    (60 * KIB, 8 * KIB, true, false),
    (60 * KIB, 8 * KIB, false, false),
    (192 * KIB, 128 * KIB, true, true),
    (192 * KIB, 128 * KIB, false, false),
    (508 * KIB, 4 * KIB, true, true),
    (4 * KIB, 256 * KIB, false, false),
];

/// Allocations made on this thread while 96 rounds of requests (at offsets
/// moving through the volume) run on a volume of `layout` over `members`
/// regions of one image, after 4 rounds not counted (the warm-up).
fn allocations_per_rounds(layout: Layout, copies: usize, members: usize, health: usize) -> u64 {
    let img = TempImage::new((members as u64 * 4 * MIB) as usize, 0, None);
    let file = open_alu(&img.path).unwrap();
    let desc = VolumeDesc {
        layout,
        copies,
        members: (0..members)
            .map(|i| MemberDesc {
                pieces: vec![(file.clone(), i as u64 * 4 * MIB, 4 * MIB).into()],
            })
            .collect(),
        health: (0..health)
            .map(|_| Arc::new(MirrorHealth::new(copies, 0, Box::new(|_, _| {}))))
            .collect(),
        moving: None,
    };
    let ring = LocalRing::new(64).unwrap();
    let vol = build_volume(&desc, ring.clone()).unwrap();
    let mut buf = AlignedBuf::new((256 * KIB) as usize);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = i as u8;
    }
    ring.block_on(async {
        for r in 0..4 {
            round(&vol, r, &mut buf).await;
        }
        let before = allocs();
        for r in 4..100 {
            round(&vol, r, &mut buf).await;
        }
        allocs() - before
    })
}

/// One round of requests, at a base offset moving with `r`.
async fn round<D: BlockDev>(vol: &D, r: u64, buf: &mut [u8]) {
    let base = (r * 320 * KIB) % (vol.size() - MIB);
    for (off, len, write, fua) in ROUND {
        let b = &mut buf[..len as usize];
        if write {
            vol.write(base + off, b, fua).await.unwrap();
        } else {
            vol.read(base + off, b).await.unwrap();
        }
    }
    vol.flush().await.unwrap();
}

#[test]
fn linear_requests_allocate_nothing() {
    let n = allocations_per_rounds(Layout::Linear, 1, 1, 0);
    assert_eq!(n, 0, "linear: {n} allocations in 96 rounds");
}

#[test]
fn stripe_requests_allocate_nothing() {
    let n = allocations_per_rounds(Layout::Stripe { chunk: 65536 }, 1, 3, 0);
    assert_eq!(n, 0, "stripe: {n} allocations in 96 rounds");
}

#[test]
fn mirror_requests_allocate_nothing() {
    let n = allocations_per_rounds(Layout::Mirror, 2, 2, 1);
    assert_eq!(n, 0, "mirror: {n} allocations in 96 rounds");
}

#[test]
fn raid10_requests_allocate_nothing() {
    let n = allocations_per_rounds(Layout::Raid10 { chunk: 65536 }, 2, 4, 2);
    assert_eq!(n, 0, "raid10: {n} allocations in 96 rounds");
}
