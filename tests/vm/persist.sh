#!/bin/sh
# A volume spanning two ALUs keeps an ext4 filesystem's data across a daemon
# restart.
# vm-run: --disks 2 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 2
start_daemon --alu /dev/vda --alu /dev/vdb
tb alu claim /dev/vda
tb alu claim /dev/vdb
ok "claimed /dev/vda and /dev/vdb"
tbj alu list
alus=$(tbj alu list)
[ "$(printf '%s' "$alus" | grep -o '"state":"owned"' | wc -l)" -eq 2 ] || fail "expected 2 owned ALUs: $alus"
ok "alu list shows 2 owned ALUs"

# 384 MiB does not fit on one 256 MiB disk: the volume must span both.
tb vol create v1 --size 384M
wait_for_dev /dev/ublkb0
wait_vol_state v1 online
j=$(vol_json v1)
echo "$j"
json_has "$j" size $((384 * 1024 * 1024)) || fail "volume size is not 384 MiB: $j"
json_has "$j" device '"/dev/ublkb0"' || fail "volume device is not /dev/ublkb0: $j"
json_has "$j" problem null || fail "volume has a problem: $j"
# If the JSON lists the volume's segments, they must be on both ALUs.
case "$j" in *'"segments"'*)
	case "$j" in *'"/dev/vda"'*'"/dev/vdb"'* | *'"/dev/vdb"'*'"/dev/vda"'*) ok "v1 has segments on /dev/vda and /dev/vdb" ;;
	*) fail "v1 does not span both ALUs: $j" ;; esac
	;;
esac
[ "$(blockdev --getsize64 /dev/ublkb0)" = $((384 * 1024 * 1024)) ] || fail "/dev/ublkb0 size is not 384 MiB"
ok "v1 online as /dev/ublkb0, 384 MiB"

mkfs.ext4 -q -F /dev/ublkb0
mkdir -p /mnt/v1
mount -t ext4 /dev/ublkb0 /mnt/v1
i=1
while [ "$i" -le 20 ]; do
	# sizes from 1 KiB up to ~12 MiB, spread over the volume
	kib=$(((i * i * i * 37 + i * 5) % 12288 + 1))
	dd if=/dev/urandom of="/mnt/v1/file$i" bs=1024 count="$kib" status=none
	i=$((i + 1))
done
mkdir -p /mnt/v1/dir
dd if=/dev/urandom of=/mnt/v1/dir/big bs=1M count=100 status=none
(cd /mnt/v1 && sha256sum file* dir/big >/tmp/sums)
ok "wrote 21 files ($(du -sk /mnt/v1 | cut -f1) KiB)"
umount /mnt/v1
ok "unmounted"

stop_daemon
start_daemon --alu /dev/vda --alu /dev/vdb
wait_for_dev /dev/ublkb0
wait_vol_state v1 online
mount -t ext4 /dev/ublkb0 /mnt/v1
(cd /mnt/v1 && sha256sum -c /tmp/sums >/tmp/sums.out 2>&1) || {
	cat /tmp/sums.out
	fail "checksums differ after daemon restart"
}
ok "all $(wc -l </tmp/sums) checksums match after restart"
umount /mnt/v1
fsck_clean /dev/ublkb0 "e2fsck -fn found problems"
ok "e2fsck -fn clean"
stop_daemon
say "persist passed"
