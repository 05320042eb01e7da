#!/bin/sh
# fio random 4k direct writes with crc32c verify headers on a volume spanning
# two ALUs, then a separate verify-only pass, before and after a daemon restart.
# vm-run: --disks 2 --disk-size 512M
set -eu
. "$(dirname "$0")/lib.sh"

size="${TIERBLK_FIO_SIZE:-128M}"
require_disks 2
start_daemon --alu /dev/vda --alu /dev/vdb
tb alu claim /dev/vda
tb alu claim /dev/vdb
ok "claimed /dev/vda and /dev/vdb"
tb vol create f1 --size 768M
wait_for_dev /dev/ublkb0
wait_vol_state f1 online

fio_write_verify /dev/ublkb0 "$size"

stop_daemon
start_daemon --alu /dev/vda --alu /dev/vdb
wait_for_dev /dev/ublkb0
wait_vol_state f1 online
echo "fio: verify pass after daemon restart"
fio --name=w --filename=/dev/ublkb0 --rw=randwrite --bs=4k --direct=1 --ioengine=libaio \
	--iodepth=16 --size="$size" --verify=crc32c --verify_fatal=1 --randrepeat=1 --verify_only \
	--output-format=terse --terse-version=3 >/tmp/fio-verify2.out 2>&1 || {
	cat /tmp/fio-verify2.out
	fail "fio verify after restart failed"
}
err=$(grep ';' /tmp/fio-verify2.out | tail -n 1 | cut -d';' -f5)
rkb=$(grep ';' /tmp/fio-verify2.out | tail -n 1 | cut -d';' -f6)
[ "$err" = 0 ] && [ "$rkb" -gt 0 ] || fail "fio verify after restart: error=$err read=${rkb}KiB"
ok "fio verified ${rkb} KiB after restart"

# Sequential pass over the whole volume, including the part on the 2nd ALU.
fio --name=seq --filename=/dev/ublkb0 --rw=write --bs=1M --direct=1 --ioengine=libaio \
	--iodepth=4 --size=768M --verify=crc32c --verify_fatal=1 --do_verify=1 \
	--output-format=terse --terse-version=3 >/tmp/fio-seq.out 2>&1 || {
	cat /tmp/fio-seq.out
	fail "fio sequential write+verify over the whole volume failed"
}
err=$(grep ';' /tmp/fio-seq.out | tail -n 1 | cut -d';' -f5)
[ "$err" = 0 ] || fail "fio sequential error=$err"
ok "fio sequential write+verify of the whole 768 MiB volume"
stop_daemon
say "fio-verify passed"
