#!/bin/sh
# Daemon crash recovery (ublk user recovery, UBLK_F_USER_RECOVERY with
# re-issue): ext4 on a mirror under fio write+verify load; tierblkd is killed
# with SIGKILL and started again. The kernel keeps /dev/ublkbN and holds its
# I/O meanwhile; the new daemon recovers the same device: fio finishes with 0
# errors, the kernel logs no I/O error, the mount survives, e2fsck -fn is
# clean. A clean stop afterwards still removes the device.
# vm-run: --disks 2 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 2
alus="--alu /dev/vda --alu /dev/vdb"
# shellcheck disable=SC2086
start_daemon $alus
tb alu claim /dev/vda >/dev/null
tb alu claim /dev/vdb >/dev/null
tb vol create m1 --size 256M --layout mirror
wait_vol_state m1 online
dev=$(vol_device m1)
mkfs.ext4 -q -F "$dev"
mkdir -p /mnt
mount "$dev" /mnt
fio_load /mnt/data 96M
fio_pid=$FIO_PID
sleep 4
kill -0 "$fio_pid" || fail "fio ended before the crash"
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
ok "tierblkd killed with SIGKILL under load"
sleep 2
[ -b "$dev" ] || fail "$dev disappeared with the daemon"
kill -0 "$fio_pid" || fail "fio ended while the daemon was dead"
ok "$dev still exists, its I/O held"

# shellcheck disable=SC2086
start_daemon $alus
grep -q "recovering the device a previous daemon left" "$DAEMON_LOG" ||
	fail "the new daemon did not recover the device"
[ "$(vol_device m1)" = "$dev" ] || fail "m1 came back as $(vol_device m1), not $dev"
ok "the new daemon recovered $dev"
wait_fio "$fio_pid" /tmp/fio-load.out "across the daemon crash"
ok "fio: write + verify with 0 errors across the crash"
dmesg | grep -i "I/O error, dev ublkb" && fail "the kernel saw I/O errors on $dev"
ok "no I/O error reached the block layer"
grep -q "/mnt" /proc/mounts || fail "the mount went away"
umount /mnt
fsck_clean "$dev" "e2fsck found problems"
ok "mount survived; e2fsck -fn clean"
stop_daemon
[ -e "$dev" ] && fail "$dev left behind by a clean stop"
ok "a clean stop removes the device"
