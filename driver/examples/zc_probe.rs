//! Zero-copy probe (issue 6, docs/benchmarks/copy.md, *Zero copy on a newer
//! kernel*): can one ublk device serve some requests with zero copy and
//! others through a buffer of the server's own?
//!
//! Exposes BACKING (a block device or a file) as a ublk device created with
//! `UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY` (Linux 6.16 on) and serves its
//! requests two ways, alternately:
//!
//! * zero copy: the kernel registered the request's pages at index `tag` of
//!   the queue ring's buffer table before delivering it; the request is one
//!   `READ_FIXED` or `WRITE_FIXED` on BACKING with that buffer;
//! * user copy (what a tree that needs the request's bytes would do): a
//!   write's data is read from `/dev/ublkcN` at the tag's user-copy offset
//!   into a buffer of ours and written to BACKING from there; a read's data
//!   is read from BACKING into that buffer and written to `/dev/ublkcN`.
//!
//! Both go through the queue's own io_uring. The device lives until it is
//! deleted (`rublk del`/`kill`); its id is printed first (`ZC-PROBE dev=N`).
//! `tests/vm/zero-copy-probe.sh` runs it in the VM rig on a 6.16+ kernel and
//! checks the data both ways.
//!
//! Usage: `[ZC_PROBE_MODE=alternate|zc|uc] zc_probe BACKING`

use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{ctrl::UblkCtrl, BufDesc, UblkError, UblkFlags, UblkUringData};
use std::cell::Cell;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::rc::Rc;

/// Fixed-file index of BACKING in each queue's ring (0 is `/dev/ublkcN`).
const BACKING: types::Fixed = types::Fixed(1);
const CDEV: types::Fixed = types::Fixed(0);
const BUF_BYTES: u32 = 512 << 10;

/// Which requests take which path (`ZC_PROBE_MODE`: `alternate`, the
/// default, or `zc` / `uc` for every request one way, to time each path).
#[derive(Clone, Copy)]
enum Mode {
    Alternate,
    ZeroCopy,
    UserCopy,
}

async fn submit(sqe: io_uring::squeue::Entry) -> i32 {
    ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
        .await
        .unwrap_or(-libc::EIO)
}

/// One request, served with zero copy (`zc`) or through `buf`. Returns the
/// bytes done or -errno.
async fn serve(q: &UblkQueue<'_>, tag: u16, buf: &mut [u8], zc: bool) -> i32 {
    let iod = *q.get_iod(tag);
    let op = iod.op_flags & 0xff;
    let off = iod.start_sector << 9;
    let len = iod.nr_sectors << 9;
    if len > BUF_BYTES {
        return -libc::EINVAL;
    }
    let pos = UblkIOCtx::ublk_user_copy_pos(q.get_qid(), tag, 0);
    match op {
        libublk::sys::UBLK_IO_OP_FLUSH => submit(opcode::Fsync::new(BACKING).build()).await,
        // For a kernel-registered buffer the "address" is the offset into
        // the request's data, from 0.
        libublk::sys::UBLK_IO_OP_READ if zc => {
            submit(
                opcode::ReadFixed::new(BACKING, std::ptr::null_mut(), len, tag)
                    .offset(off)
                    .build(),
            )
            .await
        }
        libublk::sys::UBLK_IO_OP_WRITE if zc => {
            submit(
                opcode::WriteFixed::new(BACKING, std::ptr::null(), len, tag)
                    .offset(off)
                    .build(),
            )
            .await
        }
        // By user copy: a read goes BACKING -> buf -> the request, a write
        // the request -> buf -> BACKING.
        libublk::sys::UBLK_IO_OP_READ | libublk::sys::UBLK_IO_OP_WRITE => {
            let ((from, from_off), (to, to_off)) = if op == libublk::sys::UBLK_IO_OP_READ {
                ((BACKING, off), (CDEV, pos))
            } else {
                ((CDEV, pos), (BACKING, off))
            };
            let from = opcode::Read::new(from, buf.as_mut_ptr(), len).offset(from_off);
            let r = submit(from.build()).await;
            if r < 0 {
                return r;
            }
            submit(
                opcode::Write::new(to, buf.as_ptr(), len)
                    .offset(to_off)
                    .build(),
            )
            .await
        }
        _ => -libc::EOPNOTSUPP,
    }
}

async fn tag_task(
    q: &UblkQueue<'_>,
    tag: u16,
    mode: Mode,
    served: &Cell<u64>,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(BUF_BYTES as usize);
    let reg = libublk::sys::ublk_auto_buf_reg {
        index: tag,
        ..Default::default()
    };
    q.submit_io_prep_cmd(tag, BufDesc::AutoReg(reg), 0, None)
        .await?;
    loop {
        let n = served.get();
        served.set(n + 1);
        let zc = match mode {
            Mode::Alternate => n.is_multiple_of(2),
            Mode::ZeroCopy => true,
            Mode::UserCopy => false,
        };
        let res = serve(q, tag, buf.as_mut_slice(), zc).await;
        q.submit_io_commit_cmd(tag, BufDesc::AutoReg(reg), res)
            .await?;
    }
}

fn queue(qid: u16, dev: &UblkDev, mode: Mode) {
    let q = Rc::new(UblkQueue::new(qid, dev).expect("ublk queue"));
    let served = Rc::new(Cell::new(0u64));
    let exe = Rc::new(smol::LocalExecutor::new());
    let tasks: Vec<_> = q
        .tags()
        .map(|tag| {
            let (q, served) = (q.clone(), served.clone());
            exe.spawn(async move {
                match tag_task(&q, tag, mode, &served).await {
                    Err(UblkError::QueueIsDown) | Ok(()) => {}
                    Err(e) => eprintln!("zc_probe: tag {tag}: {e}"),
                }
            })
        })
        .collect();
    let ex = exe.clone();
    smol::block_on(exe.run(async move {
        let run_ops = || while ex.try_tick() {};
        let done = || tasks.iter().all(|t| t.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, done).await {
            eprintln!("zc_probe: queue {qid}: {e}");
        }
    }));
}

fn main() -> anyhow::Result<()> {
    let mode = match std::env::var("ZC_PROBE_MODE").as_deref() {
        Err(_) | Ok("alternate") => Mode::Alternate,
        Ok("zc") => Mode::ZeroCopy,
        Ok("uc") => Mode::UserCopy,
        Ok(m) => anyhow::bail!("ZC_PROBE_MODE={m}: expected alternate, zc or uc"),
    };
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: zc_probe BACKING"))?;
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    // The end of a block device is its size, as for a file.
    let bytes = (&backing)
        .seek(SeekFrom::End(0))
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let flags = u64::from(libublk::sys::UBLK_F_AUTO_BUF_REG | libublk::sys::UBLK_F_USER_COPY);
    let have = UblkCtrl::get_features().unwrap_or(0);
    anyhow::ensure!(
        have & flags == flags,
        "this kernel's ublk driver lacks AUTO_BUF_REG or USER_COPY (features {have:#x})"
    );
    let ctrl = libublk::ctrl::UblkCtrlBuilder::default()
        .name("zc_probe")
        .nr_queues(1)
        .depth(32)
        .io_buf_bytes(BUF_BYTES)
        .ctrl_flags(flags)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()?;
    let fd = backing.as_raw_fd();
    let init = move |dev: &mut UblkDev| {
        let tgt = &mut dev.tgt;
        tgt.fds[tgt.nr_fds as usize] = fd;
        tgt.nr_fds += 1;
        tgt.dev_size = bytes;
        tgt.params = libublk::sys::ublk_params {
            types: libublk::sys::UBLK_PARAM_TYPE_BASIC,
            basic: libublk::sys::ublk_param_basic {
                logical_bs_shift: 9,
                physical_bs_shift: 12,
                io_opt_shift: 12,
                io_min_shift: 9,
                max_sectors: BUF_BYTES >> 9,
                dev_sectors: bytes >> 9,
                ..Default::default()
            },
            ..Default::default()
        };
        Ok(())
    };
    ctrl.run_target(
        init,
        move |qid, dev: &_| queue(qid, dev, mode),
        |c: &UblkCtrl| {
            println!(
                "ZC-PROBE dev={} flags={:#x}",
                c.dev_info().dev_id,
                c.dev_info().flags
            );
        },
    )?;
    drop(backing);
    Ok(())
}
