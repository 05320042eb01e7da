#!/bin/sh
# Legacy disks ([058], [060]): a disk with an ext4 filesystem and no tierblk
# metadata is adopted as a direct-access volume: its files read back through
# /dev/ublkbN, it survives a daemon restart, and adoption plus a read-only
# mount through tierblk change not a byte of the disk (sha256 of the whole
# disk before and after); writes through the volume land on the disk.
# vm-run: --disks 2 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 2
mkfs.ext4 -q -F /dev/vdb
mkdir -p /mnt/l
mount -t ext4 /dev/vdb /mnt/l
dd if=/dev/urandom of=/mnt/l/a bs=1M count=8 status=none
(cd /mnt/l && sha256sum a >/tmp/a.sum)
umount /mnt/l
before=$(sha256sum /dev/vdb | cut -d' ' -f1)
ok "ext4 with a file on /dev/vdb (sha256 of the disk ${before%????????????????????????????????????????????????????????})"

start_daemon --alu /dev/vda --alu /dev/vdb
tb alu claim /dev/vda >/dev/null
expect_fail_match 'foreign|ext4|force' tb alu claim /dev/vdb
tb alu adopt /dev/vdb old1
wait_vol_state old1 online
j=$(vol_json old1)
json_has "$j" layout '"legacy"' || fail "not a legacy volume: $j"
dev=$(vol_device old1)
[ "$(blockdev --getsize64 "$dev")" = "$(blockdev --getsize64 /dev/vdb)" ] || fail "size differs"
expect_fail_match 'adopted' tb alu claim --force /dev/vdb
mount -t ext4 -o ro,noload "$dev" /mnt/l
(cd /mnt/l && sha256sum -c /tmp/a.sum) || fail "the file does not read back through $dev"
umount /mnt/l
ok "the file reads back through $dev"

stop_daemon
[ "$(sha256sum /dev/vdb | cut -d' ' -f1)" = "$before" ] || fail "/dev/vdb changed"
ok "adoption, a read-only mount and a clean stop changed not a byte of /dev/vdb"

start_daemon --alu /dev/vda --alu /dev/vdb
wait_vol_state old1 online
dev=$(vol_device old1)
mount -t ext4 "$dev" /mnt/l
echo written-through-tierblk >/mnt/l/b
umount /mnt/l
tb vol remove old1
stop_daemon
[ "$(sha256sum /dev/vdb | cut -d' ' -f1)" != "$before" ] || fail "the write did not reach /dev/vdb"
fsck_clean /dev/vdb "e2fsck found errors on /dev/vdb"
mount -t ext4 -o ro /dev/vdb /mnt/l
grep -q written-through-tierblk /mnt/l/b || fail "the file written through tierblk is not on /dev/vdb"
(cd /mnt/l && sha256sum -c /tmp/a.sum) || fail "the old file changed"
umount /mnt/l
ok "after a restart and vol remove: writes through the volume are on /dev/vdb, e2fsck clean"
say "legacy passed"
