#!/bin/sh
# RAID10 over 4 disks; one disk dies under load (dm-error swapped in under the
# ALU): fio sees zero errors, the volume reports degraded, the failure is
# persisted (it survives a daemon restart) and the data still verifies
# (spec [0168]-[0171]; MD's raid10 semantics).
# vm-run: --disks 4 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 4
i=0
for d in /dev/vda /dev/vdb /dev/vdc /dev/vdd; do
	sz=$(blockdev --getsz "$d")
	dmsetup create "alu$i" --table "0 $sz linear $d 0"
	i=$((i + 1))
done
dmsetup mknodes
alus="--alu /dev/mapper/alu0 --alu /dev/mapper/alu1 --alu /dev/mapper/alu2 --alu /dev/mapper/alu3"
# shellcheck disable=SC2086
start_daemon $alus
for n in 0 1 2 3; do tb alu claim "/dev/mapper/alu$n" >/dev/null; done
tb vol create r1 --size 256M --layout raid10 --stripes 2 --copies 2
wait_vol_state r1 online
dev=$(vol_device r1)
tb vol show r1

# Which ALU holds member 1 (a leg of the first mirror)?
victim=$(vol_json r1 | grep -o '{"alu":"[^}]*}' | while read -r s; do
	[ "$(json_num "$s" member)" = 1 ] && json_str "$s" path
done | head -n 1)
[ -n "$victim" ] || fail "no member 1 in r1"
ok "will fail $victim under load"

engine=libaio
fio --name=load --filename="$dev" --rw=randwrite --bs=4k --direct=1 --ioengine=$engine \
	--iodepth=16 --size=200M --verify=crc32c --verify_fatal=1 --randrepeat=1 --do_verify=1 \
	--output-format=terse --terse-version=3 >/tmp/fio-load.out 2>&1 &
fio_pid=$!
sleep 4
name=$(basename "$victim")
sz=$(blockdev --getsz "$victim")
dmsetup suspend "$name"
dmsetup load "$name" --table "0 $sz error"
dmsetup resume "$name"
ok "$victim now fails every I/O (dm-error)"
wait "$fio_pid" || {
	cat /tmp/fio-load.out
	fail "fio failed while a disk died"
}
err=$(grep ';' /tmp/fio-load.out | tail -n 1 | cut -d';' -f5)
[ "$err" = 0 ] || {
	cat /tmp/fio-load.out
	fail "fio saw error=$err"
}
ok "fio: write + verify with 0 errors across the disk failure"
dmesg | grep -i "ublkb.*error\|I/O error, dev ublkb" && fail "the kernel saw I/O errors on $dev"
ok "no I/O error reached the block layer"

wait_vol_state r1 degraded
j=$(vol_json r1)
echo "$j"
json_has "$j" health '"failed"' || fail "no failed member in $j"
grep -q "leg failure persisted\|member failed" "$DAEMON_LOG" || fail "daemon did not log the persisted failure"
ok "r1 degraded, member failed"

# The failure is on disk: after a restart the volume comes up degraded and
# never reads the dead leg.
stop_daemon
# shellcheck disable=SC2086
start_daemon $alus
wait_vol_state r1 degraded
fio --name=load --filename="$dev" --rw=randwrite --bs=4k --direct=1 --ioengine=$engine \
	--iodepth=16 --size=200M --verify=crc32c --verify_fatal=1 --randrepeat=1 --verify_only \
	--output-format=terse --terse-version=3 >/tmp/fio-re.out 2>&1 || {
	cat /tmp/fio-re.out
	fail "verify after restart failed"
}
[ "$(grep ';' /tmp/fio-re.out | tail -n 1 | cut -d';' -f5)" = 0 ] || fail "verify errors after restart"
ok "data verified after restart, degraded"
stop_daemon
say "raid10-fail passed"
