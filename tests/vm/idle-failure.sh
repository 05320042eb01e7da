#!/bin/sh
# The device inventory ([0168]-[0170]): a disk under an idle mirror dies
# (dm-error swapped in, no I/O running); the daemon's periodic inventory finds
# it within seconds, fails and persists it, and the mirror runs degraded. The
# last healthy leg is never failed this way: when the other disk dies too,
# its errors are left for the host to see.
# vm-run: --disks 2 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 2
i=0
for d in /dev/vda /dev/vdb; do
	sz=$(blockdev --getsz "$d")
	dmsetup create "alu$i" --noudevsync --table "0 $sz linear $d 0"
	i=$((i + 1))
done
dmsetup mknodes
start_daemon --alu /dev/mapper/alu0 --alu /dev/mapper/alu1
tb alu claim /dev/mapper/alu0 >/dev/null
tb alu claim /dev/mapper/alu1 >/dev/null
tb vol create m1 --size 128M --layout mirror
wait_vol_state m1 online

kill_disk() {
	_sz=$(blockdev --getsz "/dev/mapper/$1")
	dmsetup suspend --noudevsync "$1"
	dmsetup load "$1" --table "0 $_sz error"
	dmsetup resume --noudevsync "$1"
}
kill_disk alu1
ok "alu1 now fails every I/O; m1 is idle"
wait_vol_state m1 degraded 30
json_has "$(vol_json m1)" health '"failed"' || fail "no failed member: $(vol_json m1)"
grep -q "inventory: the ALU does not answer" "$DAEMON_LOG" || fail "not found by the inventory"
tbj events | grep -q '"alu-failed"' || fail "no alu-failed event: $(tbj events)"
ok "the inventory failed alu1 with no I/O running; m1 degraded"

kill_disk alu0
sleep 15
grep -q "not failed: it holds the last healthy leg of volume m1" "$DAEMON_LOG" ||
	fail "the inventory did not spare the last leg"
tbj alu show /dev/mapper/alu0 | grep -q '"state":"owned"' ||
	fail "the last leg's ALU was failed: $(tbj alu show /dev/mapper/alu0)"
ok "the last healthy leg is not failed by the inventory"
stop_daemon
