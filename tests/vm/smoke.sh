#!/bin/sh
# Kernel-side smoke test of the VM rig: needs no tierblk binaries.
# vm-run: --no-build --disks 2 --disk-size 512M
set -eu
. "$(dirname "$0")/lib.sh"

say "kernel $(uname -r)"
for m in ublk_drv dm_mod dm_flakey dm_delay raid1 raid10 virtio_blk; do
	grep -q "^$m " /proc/modules || fail "module $m not loaded"
done
ok "modules loaded: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
[ -c /dev/ublk-control ] || fail "/dev/ublk-control missing"
ok "/dev/ublk-control exists"
grep -qw ext4 /proc/filesystems || fail "no ext4 in /proc/filesystems"
ok "ext4 available"
require_disks 2
ok "virtio disks: $(vm_disks | tr '\n' ' ')"
[ "$(cat /sys/block/vda/serial)" = tierblk0 ] || fail "vda serial is not tierblk0"
ok "vda serial tierblk0, size $(($(cat /sys/block/vda/size) / 2048)) MiB"
[ -e /dev/mapper/control ] || fail "/dev/mapper/control missing (dm-mod)"
ok "/dev/mapper/control exists"

mkfs.ext4 -q -F /dev/vda
fsck_clean /dev/vda "e2fsck after mkfs"
ok "mkfs.ext4 + e2fsck -fn clean"
mkdir -p /mnt/a
mount -t ext4 /dev/vda /mnt/a
head -c 3000000 /dev/urandom >/mnt/a/f1
(cd /mnt/a && sha256sum f1 >/tmp/sums)
umount /mnt/a
mount -t ext4 /dev/vda /mnt/a
(cd /mnt/a && sha256sum -c /tmp/sums >/dev/null) || fail "checksum after remount"
umount /mnt/a
fsck_clean /dev/vda "e2fsck after writes"
ok "ext4 mount/write/remount/verify + e2fsck clean"

fio_write_verify /dev/vdb 16M
# Negative control: the verify pass must notice a clobbered block.
dd if=/dev/zero of=/dev/vdb bs=4096 seek=100 count=1 conv=notrunc oflag=direct status=none
if fio --name=w --filename=/dev/vdb --rw=randwrite --bs=4k --direct=1 --ioengine=libaio \
	--iodepth=16 --size=16M --verify=crc32c --verify_fatal=1 --randrepeat=1 --verify_only \
	>/tmp/fio-neg.out 2>&1; then
	cat /tmp/fio-neg.out
	fail "fio verify did not detect a zeroed block"
fi
grep -q 'bad magic' /tmp/fio-neg.out || { cat /tmp/fio-neg.out; fail "unexpected fio failure"; }
ok "fio verify detects a zeroed block (negative control)"


# dm-flakey works (for fault-injection scenarios)
sz=$(blockdev --getsz /dev/vdb)
dmsetup create flaky --table "0 $sz flakey /dev/vdb 0 5 5"
dd if=/dev/mapper/flaky of=/dev/null bs=1M count=4 iflag=direct status=none
dmsetup remove flaky
ok "dmsetup + dm-flakey table create/read/remove"
[ "$(readlink -f /dev/disk/by-id/virtio-tierblk1)" = /dev/vdb ] || fail "/dev/disk/by-id/virtio-tierblk1 does not point to /dev/vdb"
ok "/dev/disk/by-id/virtio-tierblkN links"
say "smoke passed"
