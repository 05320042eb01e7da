//! Snapshots (spec VIII): origin and views against an in-memory model with
//! several snapshots per origin, two queues copying the same chunks once,
//! crash-point enumeration of the exception store (every prefix of the global
//! write order, with the last write torn), metadata corruption fuzz, rollback,
//! EROFS, COW-full invalidation, and image files through Partition + LocalRing.

mod common;
#[path = "common/recdev.rs"]
mod recdev;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use common::memdev::{MemDev, Tracker};
use common::workload::{random_range, KIB};
use common::{Rng, TempImage};
use recdev::{apply, Event, RecDev, Recorder};
use tierblk_stack::snapshot::BLOCK;
use tierblk_stack::uring::LocalRing;
use tierblk_stack::{
    open_alu, rollback, AlignedBuf, BlockDev, ExceptionStore, JobControl, Partition, RollbackError,
    Snapshot, SnapshotOrigin, SnapshotState, SnapshotView,
};

fn ring() -> LocalRing {
    LocalRing::new(64).unwrap()
}

fn read_all<D: BlockDev>(ring: &LocalRing, dev: &D) -> Vec<u8> {
    let mut buf = AlignedBuf::new(dev.size() as usize);
    ring.block_on(dev.read(0, &mut buf)).unwrap();
    buf.to_vec()
}

/// Read `dev` in uneven pieces (crossing chunk boundaries) and compare.
fn check_image<D: BlockDev>(ring: &LocalRing, dev: &D, want: &[u8], rng: &mut Rng, what: &str) {
    assert_eq!(dev.size(), want.len() as u64);
    let mut off = 0u64;
    while off < dev.size() {
        let len = (512 * (1 + rng.below(64))).min(dev.size() - off);
        let mut buf = AlignedBuf::new(len as usize);
        ring.block_on(dev.read(off, &mut buf)).unwrap();
        assert!(
            buf[..] == want[off as usize..(off + len) as usize],
            "{what}: mismatch at {off} len {len}"
        );
        off += len;
    }
}

fn mem_with(data: &[u8]) -> MemDev {
    let d = MemDev::new(data.len());
    d.0.data.borrow_mut().copy_from_slice(data);
    d
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

/// One random write / write-zeroes / discard through `dev`, applied to the
/// model; returns the byte range touched.
fn random_mutation<D: BlockDev>(
    ring: &LocalRing,
    dev: &D,
    model: &mut [u8],
    rng: &mut Rng,
    chunk: u64,
) -> (u64, u64) {
    let (off, len) = random_range(rng, dev.size(), chunk, 64 * KIB);
    let range = off as usize..(off + len) as usize;
    match rng.below(10) {
        0 => {
            ring.block_on(dev.discard(off, len)).unwrap();
            model[range].fill(0);
        }
        1 => {
            ring.block_on(dev.write_zeroes(off, len)).unwrap();
            model[range].fill(0);
        }
        _ => {
            let mut data = AlignedBuf::new(len as usize);
            rng.fill(&mut data);
            ring.block_on(dev.write(off, &data, rng.below(4) == 0))
                .unwrap();
            model[range].copy_from_slice(&data);
        }
    }
    (off, len)
}

fn touch(set: &mut BTreeSet<u64>, (off, len): (u64, u64), chunk: u64) {
    set.extend(off / chunk..=(off + len - 1) / chunk);
}

#[test]
fn views_keep_their_images_under_random_origin_io_with_two_snapshots() {
    let ring = ring();
    let mut rng = Rng::new(0x5eed_0001);
    let size = 512 * KIB;
    let mut model = random_bytes(&mut rng, size as usize);
    let origin = mem_with(&model);
    let (cow1, cow2) = (MemDev::new(1 << 20), MemDev::new(2 << 20));
    let (c1, c2) = (8 * KIB, 4 * KIB);

    // Snapshot 1.
    let s1 = ring
        .block_on(ExceptionStore::format(&cow1, c1 as u32, 1, size))
        .unwrap();
    let img1 = model.clone();
    let mut touched1 = BTreeSet::new();
    let o1 = SnapshotOrigin::new(
        origin.clone(),
        vec![Snapshot::new(cow1.clone(), s1.clone())],
    );
    let v1 = SnapshotView::new(origin.clone(), cow1.clone(), s1.clone());
    check_image(&ring, &v1, &img1, &mut rng, "fresh view1");
    for i in 0..120 {
        let r = random_mutation(&ring, &o1, &mut model, &mut rng, c1);
        touch(&mut touched1, r, c1);
        if i % 20 == 19 {
            check_image(&ring, &v1, &img1, &mut rng, "view1");
            assert_eq!(read_all(&ring, &o1), model, "origin");
        }
    }
    assert_eq!(s1.exception_count(), touched1.len() as u64);

    // Snapshot 2 (another chunk size), both active.
    let s2 = ring
        .block_on(ExceptionStore::format(&cow2, c2 as u32, 2, size))
        .unwrap();
    let img2 = model.clone();
    let mut touched2 = BTreeSet::new();
    let o12 = SnapshotOrigin::new(
        origin.clone(),
        vec![
            Snapshot::new(cow1.clone(), s1.clone()),
            Snapshot::new(cow2.clone(), s2.clone()),
        ],
    );
    let v2 = SnapshotView::new(origin.clone(), cow2.clone(), s2.clone());
    for i in 0..160 {
        let r = random_mutation(&ring, &o12, &mut model, &mut rng, c2);
        touch(&mut touched1, r, c1);
        touch(&mut touched2, r, c2);
        if i % 20 == 19 {
            check_image(&ring, &v1, &img1, &mut rng, "view1");
            check_image(&ring, &v2, &img2, &mut rng, "view2");
            assert_eq!(read_all(&ring, &o12), model, "origin");
        }
    }
    assert_eq!(s1.exception_count(), touched1.len() as u64);
    assert_eq!(s2.exception_count(), touched2.len() as u64);
    assert_eq!(s1.copied_chunks(), s1.exception_count(), "copied once each");

    // Persistence: reopen both stores from the COW devices.
    for (cow, img, s) in [(&cow1, &img1, &s1), (&cow2, &img2, &s2)] {
        let st = ring.block_on(ExceptionStore::open(cow)).unwrap();
        assert_eq!(st.exceptions(), s.exceptions());
        assert_eq!(st.snapshot_id(), s.snapshot_id());
        assert_eq!(st.used_chunks(), s.used_chunks());
        let v = SnapshotView::new(origin.clone(), cow.clone(), st);
        check_image(&ring, &v, img, &mut rng, "reopened view");
    }
}

/// Delegates to `.0` after `.1` scheduling rounds (a slow reader's queue).
struct Slow<D>(D, u32);

async fn rounds(n: u32) {
    for _ in 0..n {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                std::task::Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

impl<D: BlockDev> BlockDev for Slow<D> {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn limits(&self) -> tierblk_stack::Limits {
        self.0.limits()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> tierblk_stack::IoResult<()> {
        rounds(self.1).await;
        self.0.read(offset, buf).await
    }
    async fn write(&self, offset: u64, buf: &[u8], fua: bool) -> tierblk_stack::IoResult<()> {
        self.0.write(offset, buf, fua).await
    }
    async fn flush(&self) -> tierblk_stack::IoResult<()> {
        self.0.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> tierblk_stack::IoResult<()> {
        self.0.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> tierblk_stack::IoResult<()> {
        self.0.write_zeroes(offset, len).await
    }
}

#[test]
fn two_queues_writing_the_same_chunks_copy_each_once() {
    let ring = ring();
    let mut rng = Rng::new(0x5eed_0002);
    let size = 256 * KIB;
    let chunk = 8 * KIB;
    let img = random_bytes(&mut rng, size as usize);
    let tracker = Rc::new(Tracker::default());
    let origin = MemDev::with_tracker(size as usize, tracker.clone());
    origin.0.data.borrow_mut().copy_from_slice(&img);
    let cow = MemDev::with_tracker(1 << 20, tracker.clone());
    cow.set_delay(2);
    let st = ring
        .block_on(ExceptionStore::format(&cow, chunk as u32, 9, size))
        .unwrap();
    // Identical writes (same ranges, same data), issued in different orders
    // by two queue instances sharing the state.
    let reqs: Vec<(u64, Vec<u8>)> = (0..24)
        .map(|_| {
            let (off, len) = random_range(&mut rng, size, chunk, 48 * KIB);
            (off, random_bytes(&mut rng, len as usize))
        })
        .collect();
    let mut touched = BTreeSet::new();
    for (off, d) in &reqs {
        touch(&mut touched, (*off, d.len() as u64), chunk);
    }
    let q: Vec<_> = (0..2)
        .map(|_| SnapshotOrigin::new(origin.clone(), vec![Snapshot::new(cow.clone(), st.clone())]))
        .collect();
    let reader_view = SnapshotView::new(Slow(origin.clone(), 40), cow.clone(), st.clone());
    let reads = std::cell::Cell::new(0u32);
    let mut futs: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
    let finished = std::cell::Cell::new(0);
    let finished_ref = &finished;
    for (qi, dev) in q.iter().enumerate() {
        let reqs = &reqs;
        futs.push(Box::pin(async move {
            let n = reqs.len();
            for k in 0..n {
                let (off, data) = &reqs[if qi == 0 { k } else { (k * 7 + 3) % n }];
                dev.write(*off, data, false).await.unwrap();
            }
            finished_ref.set(finished_ref.get() + 1);
        }));
    }
    // A third queue reads the snapshot meanwhile: it must never see new data
    // (a chunk copied and overwritten while the view read it from the origin).
    let (view_ref, img_ref) = (&reader_view, &img);
    let reads_ref = &reads;
    futs.push(Box::pin(async move {
        let mut rng = Rng::new(77);
        while finished_ref.get() < 2 || reads_ref.get() < 20 {
            let (off, len) = random_range(&mut rng, size, chunk, 32 * KIB);
            let mut buf = AlignedBuf::new(len as usize);
            view_ref.read(off, &mut buf).await.unwrap();
            assert!(
                buf[..] == img_ref[off as usize..(off + len) as usize],
                "concurrent view read at {off} len {len} saw new data"
            );
            reads_ref.set(reads_ref.get() + 1);
        }
    }));
    ring.run_all(futs);
    assert!(tracker.max_live.get() >= 2, "queues did not overlap");
    let n = touched.len() as u64;
    assert_eq!(st.exception_count(), n);
    assert_eq!(st.copied_chunks(), n, "a chunk was copied twice");
    assert_eq!(st.used_chunks(), n, "a COW chunk was allocated twice");
    let view = SnapshotView::new(origin.clone(), cow.clone(), st.clone());
    check_image(&ring, &view, &img, &mut rng, "view");
    let reopened = ring.block_on(ExceptionStore::open(&cow)).unwrap();
    assert_eq!(reopened.exceptions(), st.exceptions());
}

/// Rebuild a device image from `base` and the first `k` events (plus event
/// `k` torn to 512 bytes).
fn image_at(base: &[u8], dev: usize, events: &[Event], k: usize, torn: bool) -> Vec<u8> {
    let mut img = base.to_vec();
    for e in &events[..k] {
        apply(&mut img, dev, e, false);
    }
    if torn {
        apply(&mut img, dev, &events[k], true);
    }
    img
}

#[test]
fn crash_at_every_write_leaves_every_snapshot_consistent() {
    let ring = ring();
    let mut rng = Rng::new(0x5eed_0003);
    let log = Rc::new(Recorder::default());
    let size = 128 * KIB;
    let origin = RecDev::new(0, random_bytes(&mut rng, size as usize), log.clone());
    let cow1 = RecDev::new(1, vec![0; 512 * KIB as usize], log.clone());
    let cow2 = RecDev::new(2, vec![0; 512 * KIB as usize], log.clone());
    let (c1, c2) = (4 * KIB, 8 * KIB);
    let s1 = ring
        .block_on(ExceptionStore::format(&cow1, c1 as u32, 1, size))
        .unwrap();
    let img1 = origin.contents();
    let o1 = SnapshotOrigin::new(
        origin.clone(),
        vec![Snapshot::new(cow1.clone(), s1.clone())],
    );
    let mut model = img1.clone();
    for _ in 0..6 {
        random_mutation(&ring, &o1, &mut model, &mut rng, c1);
    }
    let s2 = ring
        .block_on(ExceptionStore::format(&cow2, c2 as u32, 2, size))
        .unwrap();
    let img2 = origin.contents();
    let base = [origin.contents(), cow1.contents(), cow2.contents()];

    // The recorded sequence: overlapping, multi-chunk, repeated chunks,
    // write-zeroes; both snapshots active.
    let o12 = SnapshotOrigin::new(
        origin.clone(),
        vec![
            Snapshot::new(cow1.clone(), s1.clone()),
            Snapshot::new(cow2.clone(), s2.clone()),
        ],
    );
    log.on.set(true);
    for i in 0..10 {
        if i == 4 {
            ring.block_on(o12.write_zeroes(20 * KIB, 12 * KIB)).unwrap();
            continue;
        }
        let (off, len) = random_range(&mut rng, size, c2, 24 * KIB);
        let data = random_bytes(&mut rng, len as usize);
        ring.block_on(o12.write(off, &data, false)).unwrap();
    }
    log.on.set(false);
    let events = log.events.borrow().clone();
    let writes = events
        .iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .count();
    assert!(writes >= 30, "sequence too short: {writes} writes");

    let points = check_crash_points(&ring, &base, &events, [&img1, &img2], &mut rng);
    assert!(points > 2 * writes, "{points} crash points");
}

/// Replay every prefix of `events` (and each write torn) onto `base`
/// (origin, COW 1, COW 2), reopen both stores and check each snapshot reads
/// exactly its image, then that the reopened stores keep working. Returns
/// the number of crash points checked.
fn check_crash_points(
    ring: &LocalRing,
    base: &[Vec<u8>; 3],
    events: &[Event],
    [img1, img2]: [&Vec<u8>; 2],
    rng: &mut Rng,
) -> usize {
    let size = base[0].len();
    let mut points = 0;
    for k in 0..=events.len() {
        for torn in [false, true] {
            if torn && !matches!(events.get(k), Some(Event::Write { .. })) {
                continue;
            }
            points += 1;
            let quiet = Rc::new(Recorder::default());
            let imgs: Vec<Vec<u8>> = (0..3)
                .map(|d| image_at(&base[d], d, events, k, torn))
                .collect();
            let o = RecDev::new(0, imgs[0].clone(), quiet.clone());
            let w1 = RecDev::new(1, imgs[1].clone(), quiet.clone());
            let w2 = RecDev::new(2, imgs[2].clone(), quiet.clone());
            let r1 = ring.block_on(ExceptionStore::open(&w1)).unwrap();
            let r2 = ring.block_on(ExceptionStore::open(&w2)).unwrap();
            let what = format!("crash after {k} events (torn: {torn})");
            for (w, r, img) in [(&w1, &r1, img1), (&w2, &r2, img2)] {
                let v = SnapshotView::new(o.clone(), w.clone(), r.clone());
                assert!(
                    read_all(ring, &v) == *img,
                    "{what}: snapshot {}",
                    r.snapshot_id()
                );
            }
            // The reopened stores keep working: overwrite the whole origin.
            let on = SnapshotOrigin::new(
                o.clone(),
                vec![
                    Snapshot::new(w1.clone(), r1.clone()),
                    Snapshot::new(w2.clone(), r2.clone()),
                ],
            );
            let fresh = random_bytes(rng, size);
            ring.block_on(on.write(0, &fresh, false)).unwrap();
            assert!(!r1.is_invalid() && !r2.is_invalid(), "{what}: COW full");
            for (w, r, img) in [(&w1, &r1, img1), (&w2, &r2, img2)] {
                let v = SnapshotView::new(o.clone(), w.clone(), r.clone());
                assert!(read_all(ring, &v) == *img, "{what}: after more writes");
                let again = ring.block_on(ExceptionStore::open(w)).unwrap();
                assert_eq!(again.exceptions(), r.exceptions(), "{what}");
            }
        }
    }
    points
}

/// A metadata block with a valid checksum but arbitrary contents.
fn sealed_block(rng: &mut Rng, magic: &[u8; 8], nonce: u64, slot: u64) -> Vec<u8> {
    let mut b = random_bytes(rng, BLOCK as usize);
    b[0..8].copy_from_slice(magic);
    if rng.below(2) == 0 {
        b[8..16].copy_from_slice(&nonce.to_le_bytes());
    }
    if rng.below(2) == 0 {
        b[16..24].copy_from_slice(&slot.to_le_bytes());
    }
    if rng.below(2) == 0 {
        let n = rng.below(300) as u32;
        b[24..28].copy_from_slice(&n.to_le_bytes());
        for i in 0..n.min(253) as usize {
            // Small values, often in range.
            let at = 32 + 16 * i;
            b[at..at + 8].copy_from_slice(&rng.below(40).to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&rng.below(80).to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn corrupted_metadata_never_panics() {
    let ring = ring();
    let mut rng = Rng::new(0x5eed_0004);
    let size = 128 * KIB;
    let origin = mem_with(&random_bytes(&mut rng, size as usize));
    let cow = MemDev::new(384 * KIB as usize);
    let st = ring
        .block_on(ExceptionStore::format(&cow, 4096, 3, size))
        .unwrap();
    let o = SnapshotOrigin::new(origin.clone(), vec![Snapshot::new(cow.clone(), st.clone())]);
    let mut model = origin.contents();
    for _ in 0..20 {
        random_mutation(&ring, &o, &mut model, &mut rng, 4096);
    }
    let good = cow.contents();
    let g = st.geometry();
    let meta_end = (BLOCK * (1 + g.meta_slots)) as usize;
    let nonce = u64::from_le_bytes(good[32..40].try_into().unwrap());
    let (mut opened, mut refused) = (0, 0);
    for i in 0..1500 {
        let mut img = good.clone();
        match i % 6 {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(meta_end as u64) as usize;
                    img[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let at = rng.below(meta_end as u64) as usize;
                let n = (rng.below(4096) as usize).min(img.len() - at);
                rng.fill(&mut img[at..at + n]);
            }
            2 | 3 => {
                let slot = rng.below(g.meta_slots.min(12));
                let at = (BLOCK * (1 + slot)) as usize;
                let b = sealed_block(&mut rng, b"TBSNAPEX", nonce, slot);
                img[at..at + BLOCK as usize].copy_from_slice(&b);
            }
            4 => {
                // A re-sealed header with random fields.
                let mut h = good[..BLOCK as usize].to_vec();
                for _ in 0..1 + rng.below(4) {
                    let field = 8 + 4 * rng.below(16) as usize;
                    let v = match rng.below(4) {
                        0 => 0,
                        1 => u32::MAX,
                        2 => 1 << rng.below(32),
                        _ => rng.next() as u32,
                    };
                    h[field..field + 4].copy_from_slice(&v.to_le_bytes());
                }
                let crc = crc32c::crc32c(&h[..4092]);
                h[4092..].copy_from_slice(&crc.to_le_bytes());
                img[..BLOCK as usize].copy_from_slice(&h);
            }
            _ => rng.fill(&mut img[..meta_end]),
        }
        let dev = mem_with(&img);
        match ring.block_on(ExceptionStore::open(&dev)) {
            Ok(s) => {
                opened += 1;
                let v = SnapshotView::new(origin.clone(), dev.clone(), s.clone());
                let mut buf = AlignedBuf::new(v.size().min(1 << 20) as usize);
                let _ = ring.block_on(v.read(0, &mut buf));
                // Writing through the origin must not panic either.
                let o = SnapshotOrigin::new(mem_with(&model), vec![Snapshot::new(dev, s)]);
                let _ = ring.block_on(o.write(0, &[7u8; 8192], false));
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        opened > 100 && refused > 100,
        "{opened} opened, {refused} refused"
    );
}

#[test]
fn rollback_restores_the_snapshot_image_and_keeps_other_snapshots() {
    let ring = ring();
    let mut rng = Rng::new(0x5eed_0005);
    let size = 256 * KIB;
    let chunk = 8 * KIB;
    let mut model = random_bytes(&mut rng, size as usize);
    let origin = mem_with(&model);
    let (cow1, cow2) = (MemDev::new(1 << 20), MemDev::new(1 << 20));
    let s1 = ring
        .block_on(ExceptionStore::format(&cow1, chunk as u32, 1, size))
        .unwrap();
    let img1 = model.clone();
    let o1 = SnapshotOrigin::new(
        origin.clone(),
        vec![Snapshot::new(cow1.clone(), s1.clone())],
    );
    for _ in 0..30 {
        random_mutation(&ring, &o1, &mut model, &mut rng, chunk);
    }
    let s2 = ring
        .block_on(ExceptionStore::format(&cow2, chunk as u32, 2, size))
        .unwrap();
    let img2 = model.clone();
    let snap1 = Snapshot::new(cow1.clone(), s1.clone());
    let both = SnapshotOrigin::new(
        origin.clone(),
        vec![
            Snapshot::new(cow1.clone(), s1.clone()),
            Snapshot::new(cow2.clone(), s2.clone()),
        ],
    );
    for _ in 0..30 {
        random_mutation(&ring, &both, &mut model, &mut rng, chunk);
    }
    let n = s1.exception_count();
    assert!(n > 0);

    // Cancelled before starting: nothing changes.
    let ctl = JobControl::new();
    ctl.cancel();
    assert_eq!(
        ring.block_on(rollback(&both, &snap1, &ctl, 0)),
        Err(RollbackError::Cancelled { checkpoint: 0 })
    );
    assert_eq!(origin.contents(), model);

    // Merge into the origin through the other snapshot's origin driver.
    // Cancelled midway (from its checkpoint callback, as the daemon's cancel
    // would), then resumed from the checkpoint it reported.
    let cell = Arc::new(std::sync::OnceLock::<Arc<JobControl>>::new());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (cell2, seen2) = (cell.clone(), seen.clone());
    let ctl = Arc::new(JobControl::new().with_checkpoint(
        chunk,
        Box::new(move |pos| {
            seen2.lock().unwrap().push(pos);
            if pos >= 2 * chunk {
                cell2.get().unwrap().cancel();
            }
        }),
    ));
    cell.set(ctl.clone()).unwrap();
    let stopped = match ring.block_on(rollback(&both, &snap1, &ctl, 0)) {
        Err(RollbackError::Cancelled { checkpoint }) => checkpoint,
        other => panic!("expected a cancel, got {other:?}"),
    };
    assert_eq!(stopped, 2 * chunk);
    assert_eq!(seen.lock().unwrap().last(), Some(&stopped));
    assert_eq!(s1.exception_count(), n, "the snapshot stays intact");
    let ctl = JobControl::new();
    assert_eq!(ring.block_on(rollback(&both, &snap1, &ctl, stopped)), Ok(n));
    assert_eq!(ctl.progress(), n * chunk);
    assert!(origin.contents() == img1, "origin not restored");
    assert_eq!(s1.exception_count(), 0);
    let v1 = SnapshotView::new(origin.clone(), cow1.clone(), s1.clone());
    let v2 = SnapshotView::new(origin.clone(), cow2.clone(), s2.clone());
    check_image(&ring, &v1, &img1, &mut rng, "view1 after rollback");
    check_image(&ring, &v2, &img2, &mut rng, "view2 after rollback");
    let reopened = ring.block_on(ExceptionStore::open(&cow1)).unwrap();
    assert_eq!(reopened.exception_count(), 0, "store not emptied");

    // The emptied snapshot keeps working as a snapshot of the restored image.
    let mut model = img1.clone();
    for _ in 0..20 {
        random_mutation(&ring, &both, &mut model, &mut rng, chunk);
    }
    check_image(&ring, &v1, &img1, &mut rng, "view1 after new writes");
    check_image(&ring, &v2, &img2, &mut rng, "view2 after new writes");
}

#[test]
fn snapshot_view_is_read_only() {
    let ring = ring();
    let origin = MemDev::new(64 * KIB as usize);
    let cow = MemDev::new(256 * KIB as usize);
    let st = ring
        .block_on(ExceptionStore::format(&cow, 4096, 1, 64 * KIB))
        .unwrap();
    let v = SnapshotView::new(origin.clone(), cow.clone(), st);
    let errno = |r: Result<(), tierblk_stack::IoError>| r.unwrap_err().errno();
    assert_eq!(
        errno(ring.block_on(v.write(0, &[1u8; 4096], false))),
        libc::EROFS
    );
    assert_eq!(errno(ring.block_on(v.write_zeroes(0, 4096))), libc::EROFS);
    assert_eq!(errno(ring.block_on(v.discard(0, 4096))), libc::EROFS);
    assert!(!v.limits().discard && !v.limits().write_zeroes);
    ring.block_on(v.flush()).unwrap();
    assert_eq!(origin.writes(), 0);
    assert!(origin.contents().iter().all(|&b| b == 0));
}

#[test]
fn full_cow_invalidates_the_snapshot_not_the_origin() {
    let ring = ring();
    let size = 64 * KIB;
    let origin = MemDev::new(size as usize);
    // Room for 3 data chunks of 4 KiB.
    let cow = MemDev::new((BLOCK + 3 * 2 * BLOCK) as usize);
    let st: Arc<SnapshotState> = ring
        .block_on(ExceptionStore::format(&cow, 4096, 5, size))
        .unwrap();
    assert_eq!(st.geometry().data_chunks, 3);
    let o = SnapshotOrigin::new(origin.clone(), vec![Snapshot::new(cow.clone(), st.clone())]);
    let v = SnapshotView::new(origin.clone(), cow.clone(), st.clone());
    for c in 0..3u64 {
        ring.block_on(o.write(c * 4096, &[1u8; 4096], false))
            .unwrap();
    }
    assert!(!st.is_invalid());
    assert_eq!(read_all(&ring, &v), vec![0u8; size as usize]);
    ring.block_on(o.write(8 * 4096, &[2u8; 8192], false))
        .unwrap();
    assert!(st.is_invalid());
    assert_eq!(origin.bytes(8 * 4096, 8192), vec![2u8; 8192]);
    let mut buf = AlignedBuf::new(4096);
    assert_eq!(
        ring.block_on(v.read(0, &mut buf)).unwrap_err().errno(),
        libc::EIO
    );
    let reopened = ring.block_on(ExceptionStore::open(&cow)).unwrap();
    assert!(reopened.is_invalid(), "invalidation not persisted");
    assert_eq!(
        ring.block_on(rollback(
            &origin,
            &Snapshot::new(cow.clone(), reopened),
            &JobControl::new(),
            0
        )),
        Err(RollbackError::Invalid)
    );
}

#[test]
fn snapshot_over_image_partitions_through_local_ring() {
    let size = 1 << 20;
    let mut rng = Rng::new(0x5eed_0006);
    let origin_img = TempImage::new(size + 8192, 0x5a, None);
    let cow_img = TempImage::new(2 << 20, 0, None);
    let chunk = 16 * KIB;
    let (mut model, img, snaps) = {
        let ring = ring();
        let origin = Partition::new(
            open_alu(&origin_img.path).unwrap(),
            8192,
            size as u64,
            ring.clone(),
        );
        let cow = Partition::new(
            open_alu(&cow_img.path).unwrap(),
            4096,
            (2 << 20) - 4096,
            ring.clone(),
        );
        let st = ring
            .block_on(ExceptionStore::format(&cow, chunk as u32, 42, size as u64))
            .unwrap();
        let mut model = vec![0x5a; size];
        let img = model.clone();
        let o = SnapshotOrigin::new(origin, vec![Snapshot::new(cow, st.clone())]);
        for _ in 0..60 {
            random_mutation(&ring, &o, &mut model, &mut rng, chunk);
        }
        ring.block_on(o.flush()).unwrap();
        (model, img, st.exceptions())
    };
    assert!(origin_img.contents()[8192..] == model[..], "origin file");
    // A new process: new ring, reopen from the files.
    let ring = ring();
    let origin_alu = open_alu(&origin_img.path).unwrap();
    let cow_alu = open_alu(&cow_img.path).unwrap();
    let part = |f: &Arc<std::fs::File>, start: u64, len: u64| {
        Partition::new(f.clone(), start, len, ring.clone())
    };
    let cow = part(&cow_alu, 4096, (2 << 20) - 4096);
    let st = ring.block_on(ExceptionStore::open(&cow)).unwrap();
    assert_eq!(st.exceptions(), snaps);
    assert_eq!(st.snapshot_id(), 42);
    let v = SnapshotView::new(part(&origin_alu, 8192, size as u64), cow, st.clone());
    check_image(&ring, &v, &img, &mut rng, "view over files");
    let o = SnapshotOrigin::new(
        part(&origin_alu, 8192, size as u64),
        vec![Snapshot::new(part(&cow_alu, 4096, (2 << 20) - 4096), st)],
    );
    for _ in 0..20 {
        random_mutation(&ring, &o, &mut model, &mut rng, chunk);
    }
    check_image(
        &ring,
        &v,
        &img,
        &mut rng,
        "view over files after more writes",
    );
    assert_eq!(read_all(&ring, &o), model);
}

#[test]
fn queue_threads_share_the_exception_table() {
    // Several rounds: the lookup/claim races are timing dependent.
    for round in 0..6 {
        threads_round(0x5eed_0007 + round);
    }
}

/// Three queue threads (own ring, own drivers) over one shared state write
/// every chunk of the origin.
fn threads_round(seed: u64) {
    let size = 512 * KIB;
    let chunk = 4 * KIB;
    let mut rng = Rng::new(seed);
    let img = random_bytes(&mut rng, size as usize);
    let origin_img = TempImage::new(size as usize, 0, None);
    std::fs::write(&origin_img.path, &img).unwrap();
    let cow_img = TempImage::new(2 << 20, 0, None);
    let origin_alu = open_alu(&origin_img.path).unwrap();
    let cow_alu = open_alu(&cow_img.path).unwrap();
    let st = {
        let ring = ring();
        let cow = Partition::new(cow_alu.clone(), 0, 2 << 20, ring.clone());
        ring.block_on(ExceptionStore::format(&cow, chunk as u32, 11, size))
            .unwrap()
    };
    // Every thread writes every chunk (same data), in different orders.
    let data = Arc::new(random_bytes(&mut rng, size as usize));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let (st, data) = (st.clone(), data.clone());
            let (origin_alu, cow_alu) = (origin_alu.clone(), cow_alu.clone());
            std::thread::spawn(move || {
                let ring = ring();
                let o = SnapshotOrigin::new(
                    Partition::new(origin_alu, 0, size, ring.clone()),
                    vec![Snapshot::new(
                        Partition::new(cow_alu, 0, 2 << 20, ring.clone()),
                        st,
                    )],
                );
                let n = size / chunk;
                for k in 0..n {
                    let c = (k * (2 * t + 1) + t * 13) % n;
                    let off = (c * chunk) as usize;
                    let piece = AlignedBuf::from_slice(&data[off..off + chunk as usize]);
                    ring.block_on(o.write(off as u64, &piece, false)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = size / chunk;
    assert_eq!(st.exception_count(), n);
    assert_eq!(st.copied_chunks(), n, "a chunk was copied twice");
    assert_eq!(st.used_chunks(), n);
    assert!(origin_img.contents() == *data);
    let ring = ring();
    let cow = Partition::new(cow_alu.clone(), 0, 2 << 20, ring.clone());
    let reopened = ring.block_on(ExceptionStore::open(&cow)).unwrap();
    assert_eq!(reopened.exceptions(), st.exceptions());
    let v = SnapshotView::new(
        Partition::new(origin_alu, 0, size, ring.clone()),
        cow,
        reopened,
    );
    assert!(read_all(&ring, &v) == img, "view over threads");
}

#[test]
fn crash_with_concurrent_commits_keeps_later_slots() {
    // Two queues commit concurrently: the slower-copying one takes the lower
    // metadata slot, so a later slot can be durable (and its origin write
    // done) while an earlier one is still missing. Opening must keep it.
    let ring = ring();
    let mut rng = Rng::new(0x5eed_0008);
    let log = Rc::new(Recorder::default());
    let size = 128 * KIB;
    let origin = RecDev::new(0, random_bytes(&mut rng, size as usize), log.clone());
    let cow1 = RecDev::new(1, vec![0; 512 * KIB as usize], log.clone());
    let cow2 = RecDev::new(2, vec![0; 512 * KIB as usize], log.clone());
    let c = 4 * KIB;
    let s1 = ring
        .block_on(ExceptionStore::format(&cow1, c as u32, 1, size))
        .unwrap();
    let s2 = ring
        .block_on(ExceptionStore::format(&cow2, 2 * c as u32, 2, size))
        .unwrap();
    let img = origin.contents();
    let base = [origin.contents(), cow1.contents(), cow2.contents()];
    let fast = SnapshotOrigin::new(
        Slow(origin.clone(), 1),
        vec![
            Snapshot::new(Slow(cow1.clone(), 1), s1.clone()),
            Snapshot::new(Slow(cow2.clone(), 1), s2.clone()),
        ],
    );
    let slow = SnapshotOrigin::new(
        Slow(origin.clone(), 3),
        vec![
            Snapshot::new(Slow(cow1.clone(), 3), s1.clone()),
            Snapshot::new(Slow(cow2.clone(), 3), s2.clone()),
        ],
    );
    log.on.set(true);
    for round in 0..3u64 {
        // The slow queue starts first on a 4-chunk range, the fast one a
        // moment later on a single chunk elsewhere.
        let a = (round * 8) * c;
        let b = (21 + round * 4) * c;
        let (da, db) = (
            random_bytes(&mut rng, 4 * c as usize),
            random_bytes(&mut rng, c as usize),
        );
        let (slow, fast) = (&slow, &fast);
        let futs: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = vec![
            Box::pin(async move { slow.write(a, &da, false).await.unwrap() }),
            Box::pin(async move {
                rounds(2).await;
                fast.write(b, &db, false).await.unwrap()
            }),
        ];
        ring.run_all(futs);
    }
    log.on.set(false);
    let events = log.events.borrow().clone();
    // The scenario really happened: some metadata slot became durable before
    // a lower one.
    let meta_slots: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Write { dev: 1, off, .. } if *off >= BLOCK && *off < 64 * BLOCK => {
                Some(off / BLOCK - 1)
            }
            _ => None,
        })
        .collect();
    assert!(
        meta_slots.windows(2).any(|w| w[1] < w[0]),
        "no out-of-order commit: {meta_slots:?}"
    );
    check_crash_points(&ring, &base, &events, [&img, &img], &mut rng);
}

/// An origin whose snapshot set changes online (the daemon's case): a
/// snapshot added to the shared set is honoured from the next write, one
/// removed is no longer copied for, and a COW device that cannot be built
/// fails the write before the origin changes.
#[test]
fn dynamic_set_follows_changes_and_fails_closed() {
    use tierblk_stack::{MakeCow, SnapshotSet};
    let ring = ring();
    let mut rng = Rng::new(0x5eed_00d1);
    let size = 256 * KIB;
    let chunk = 8 * KIB;
    let mut model = random_bytes(&mut rng, size as usize);
    let origin = mem_with(&model);
    let set: std::sync::Arc<SnapshotSet<Option<MemDev>>> = SnapshotSet::new(Vec::new());
    let make: MakeCow<Option<MemDev>, MemDev> =
        Box::new(|k: &Option<MemDev>| k.clone().ok_or_else(|| "no such COW".to_string()));
    let o = SnapshotOrigin::dynamic(origin.clone(), set.clone(), make);

    // No snapshot: a pass-through.
    for _ in 0..10 {
        random_mutation(&ring, &o, &mut model, &mut rng, chunk);
    }
    assert_eq!(read_all(&ring, &origin), model);

    // Add one: the next writes copy for it; its view keeps the image.
    let cow = MemDev::new(1 << 20);
    let st = ring
        .block_on(ExceptionStore::format(&cow, chunk as u32, 9, size))
        .unwrap();
    set.insert(9, Some(cow.clone()), st.clone());
    let img = model.clone();
    let view = SnapshotView::new(origin.clone(), cow.clone(), st.clone());
    let mut touched = BTreeSet::new();
    for _ in 0..60 {
        let r = random_mutation(&ring, &o, &mut model, &mut rng, chunk);
        touch(&mut touched, r, chunk);
    }
    assert_eq!(st.exception_count(), touched.len() as u64);
    check_image(&ring, &view, &img, &mut rng, "view of the added snapshot");

    // Retire and remove it: the flag is persisted, nothing more is copied.
    ring.block_on(st.retire(&cow)).unwrap();
    assert!(set.remove(9));
    assert!(ring
        .block_on(ExceptionStore::open(&cow))
        .unwrap()
        .is_invalid());
    let copied = st.copied_chunks();
    for _ in 0..30 {
        random_mutation(&ring, &o, &mut model, &mut rng, chunk);
    }
    assert_eq!(st.copied_chunks(), copied);
    assert_eq!(read_all(&ring, &origin), model);

    // A snapshot whose COW device cannot be built: writes fail, origin intact.
    let st2 = ring
        .block_on(ExceptionStore::format(
            &MemDev::new(1 << 20),
            chunk as u32,
            10,
            size,
        ))
        .unwrap();
    set.insert(10, None, st2);
    let data = AlignedBuf::new(4096);
    assert_eq!(
        ring.block_on(o.write(0, &data, false)).unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(read_all(&ring, &origin), model);
}
