#!/bin/sh
# Zero copy (issue 6, docs/benchmarks/copy.md, "Zero copy on a newer
# kernel"). On a kernel whose ublk driver offers UBLK_F_AUTO_BUF_REG and
# UBLK_F_USER_COPY (Linux 6.16 on: TIERBLK_VM_KERNEL=6.18 scripts/vm-run ...)
# a volume of local ALUs is created with zero copy: the kernel registers each
# request's pages in the queue's ring, the partitions read and write them with
# READ_FIXED/WRITE_FIXED, and the tags' buffers stay untouched (no page of
# them becomes resident while fio runs, as `tierblk stats` reads it with
# mincore). The daemon runs with --no-huge-buffers: in huge pages, a buffer
# the allocator carved from memory a finished resync job had touched could
# be made resident 2 MiB at a time by khugepaged, whoever touches it. Linear, stripe,
# mirror and raid10 volumes pass fio's crc32c write and verify, and ext4 on a
# mirror a clean e2fsck. A daemon restarted with --no-zero-copy exposes the
# same volumes copying, reads back what zero copy wrote, and its buffers fill.
# On an older kernel (the rig's default 6.12) every device copies, and the
# same data checks pass. The per-request fallback of a zero-copy device whose
# tree gains a remote leg is checked by cluster-reshape.sh.
# vm-run: --disks 4 --disk-size 512M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 4
kver=$(uname -r)
major=${kver%%.*}
minor=${kver#*.}
minor=${minor%%[!0-9]*}
if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 16 ]; }; then
	zc=1
	say "Linux $kver: the ublk driver offers zero copy"
else
	zc=0
	say "Linux $kver: no zero copy in this ublk driver; every device copies"
fi

start_daemon --no-huge-buffers
for d in /dev/vda /dev/vdb /dev/vdc /dev/vdd; do tb alu claim "$d" >/dev/null; done
tb vol create l1 --size 96M
tb vol create s1 --size 128M --layout stripe --stripes 2 --chunk 64K
tb vol create m1 --size 96M --layout mirror --copies 2
tb vol create r1 --size 128M --layout raid10 --stripes 2 --copies 2 --chunk 128K
for v in l1 s1 m1 r1; do wait_vol_state "$v" online 30; done

# resident VOL: bytes of the volume's tag buffers resident now.
resident() { json_num "$(tbj stats "$1")" buffer_resident; }

# Every device says how it serves its requests, once, as it comes online.
paths=$(grep -c "ublk device [0-9]*: zero copy" "$DAEMON_LOG" || true)
copies=$(grep -c "ublk device [0-9]*: copying through the tags' buffers" "$DAEMON_LOG" || true)
if [ "$zc" = 1 ]; then
	[ "$paths" = 4 ] && [ "$copies" = 0 ] ||
		fail "expected 4 zero-copy devices, the log says $paths zero copy and $copies copying"
else
	[ "$paths" = 0 ] && [ "$copies" = 4 ] ||
		fail "expected 4 copying devices, the log says $paths zero copy and $copies copying"
fi
ok "4 devices: $paths zero copy, $copies copying"

for v in l1 s1 m1 r1; do
	dev=$(vol_device "$v")
	res0=$(resident "$v")
	fio_write_verify "$dev" 48M
	# Sequential 1 MiB requests cross chunks, members and legs: each piece a
	# sub-range of the request's registered pages.
	fio --name=seq --filename="$dev" --rw=write --bs=1M --direct=1 --ioengine="$(fio_engine)" \
		--iodepth=4 --offset=48M --size=32M --verify=crc32c --verify_fatal=1 --do_verify=1 \
		--output-format=terse --terse-version=3 >/tmp/fio-seq.out 2>&1 || {
		cat /tmp/fio-seq.out
		fail "$v: 1 MiB sequential write+verify failed"
	}
	[ "$(grep ';' /tmp/fio-seq.out | tail -n 1 | cut -d';' -f5)" = 0 ] || fail "$v: sequential fio error"
	res=$(resident "$v")
	if [ "$zc" = 1 ]; then
		[ "$res" = "$res0" ] ||
			fail "$v: its tag buffers went from $res0 to $res bytes resident: requests' data passed through them"
		ok "$v: fio verified, with zero copy (tag buffers untouched: $res bytes resident before and after)"
	else
		[ "$res" -gt "$res0" ] || fail "$v: copying, yet its tag buffers stayed at $res bytes resident"
		ok "$v: fio verified, copying (tag buffers from $res0 to $res bytes resident)"
	fi
done

# A filesystem on the mirror: every write goes to both legs from the same
# registered pages.
dev=$(vol_device m1)
mkfs.ext4 -q -F "$dev" 2>/dev/null || fail "mkfs.ext4 on m1"
mkdir -p /mnt/m1
mount -t ext4 "$dev" /mnt/m1 || fail "mount m1"
dd if=/dev/urandom of=/mnt/m1/blob bs=1M count=24 2>/dev/null
sum=$(sha256sum /mnt/m1/blob | cut -d' ' -f1)
umount /mnt/m1
fsck_clean "$dev" "e2fsck found errors on m1"
ok "ext4 on m1: 24 MiB written, clean e2fsck"
stop_daemon

# The same volumes copying: what zero copy wrote reads back.
start_daemon --no-huge-buffers --no-zero-copy
for v in l1 s1 m1 r1; do wait_vol_state "$v" online 30; done
paths=$(grep -c "ublk device [0-9]*: zero copy" "$DAEMON_LOG" || true)
[ "$paths" = 0 ] || fail "--no-zero-copy: $paths devices with zero copy"
# m1 holds the filesystem now: its file is checked instead.
for v in l1 s1 r1 m1; do
	res0=$(resident "$v")
	if [ "$v" = m1 ]; then
		mount -t ext4 "$(vol_device m1)" /mnt/m1 || fail "mount m1 after the restart"
		[ "$(sha256sum /mnt/m1/blob | cut -d' ' -f1)" = "$sum" ] || fail "m1's file changed"
		umount /mnt/m1
	else
		fio_verify_load "$(vol_device "$v")" 48M "$v after --no-zero-copy"
	fi
	[ "$(resident "$v")" -gt "$res0" ] || fail "$v: copying, yet its tag buffers stayed at $res0 bytes resident"
done
ok "--no-zero-copy: 4 devices copying; fio verify passes on l1, s1 and r1, m1's file reads back"
stop_daemon
say "zero-copy passed"
