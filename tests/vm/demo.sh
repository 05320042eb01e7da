#!/bin/sh
# Demo: claim two disks, create a volume, put ext4 on it and show the state.
# vm-run: --disks 2 --disk-size 1G
set -eu
. "$(dirname "$0")/lib.sh"

start_daemon --alu /dev/vda --alu /dev/vdb
say "tierblk alu scan"
tb alu scan
say "tierblk alu claim /dev/vda /dev/vdb"
tb alu claim /dev/vda
tb alu claim /dev/vdb
say "tierblk vol create demo --size 1500M"
tb vol create demo --size 1500M
wait_for_dev /dev/ublkb0
mkfs.ext4 -q -F -L demo /dev/ublkb0
mkdir -p /mnt/demo
mount -t ext4 /dev/ublkb0 /mnt/demo
echo "hello from tierblk" >/mnt/demo/hello.txt
dd if=/dev/urandom of=/mnt/demo/random.bin bs=1M count=32 status=none
sync
say "df /mnt/demo"
df -h /mnt/demo
ls -l /mnt/demo
cat /mnt/demo/hello.txt
say "tierblk vol list"
tb vol list
say "tierblk alu list"
tb alu list
say "tierblk vol show demo"
tb vol show demo
say "tierblk --json vol list"
tbj vol list
umount /mnt/demo
stop_daemon
say "demo done"
