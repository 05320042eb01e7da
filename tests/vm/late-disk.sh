#!/bin/sh
# A disk that is missing at start-up and returns later ([0172]-[0174]): the
# mirror comes online degraded and, before it serves a write without that
# leg, records the leg failed (as MD records a missing member), so that the
# returning disk's stale copy is never read as current, even after a clean
# stop; it rejoins through `alu readd` (mdadm --re-add), which copies only
# the regions the bitmap marked while it was away; the same with
# --auto-reclaim, then again with ext4 mounted under fio load.
# vm-run: --disks 2 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 2
start_daemon --alu /dev/vda --alu /dev/vdb
tb alu claim /dev/vda >/dev/null
tb alu claim /dev/vdb >/dev/null
tb vol create m1 --size 256M --layout mirror
wait_vol_state m1 online
dev=$(vol_device m1)
MIB=1048576
dd if=/dev/urandom of="$dev" bs=1M count=256 oflag=direct status=none
wait_bitmap_clean m1
set -- $(vol_json m1 | grep -o '{"alu":"[^}]*}' | while read -r s; do
	[ "$(json_num "$s" member)" = 1 ] && echo "$(json_str "$s" path) $(json_num "$s" start)"
done)
leg1=$1
start=$(($2 / MIB))
[ "$leg1" = /dev/vdb ] || fail "expected leg 1 on /dev/vdb, got $leg1"
stop_daemon
ok "m1 filled, both legs equal, clean stop"

# Start without vdb (a late disk): degraded, and the leg is recorded failed
# before any write.
start_daemon --alu /dev/vda
wait_vol_state m1 degraded
j=$(vol_json m1)
json_has "$j" health '"failed"' || fail "the missing leg was not recorded failed: $j"
grep -q "recording the leg failed before serving writes" "$DAEMON_LOG" || fail "no log of the recorded failure"
dd if=/dev/urandom of="$dev" bs=1M seek=100 count=3 oflag=direct status=none
sleep 10
json_has "$(vol_bitmap m1)" dirty 3, || fail "the writes without leg 1 must keep their bits: $(vol_bitmap m1)"
want=$(dd if="$dev" bs=1M count=256 iflag=direct status=none | sha256sum)
stop_daemon
ok "3 MiB written while vdb was away; clean stop"

# vdb returns. Also plant a difference in one of its clean regions: the
# re-add must not copy it (only marked regions are copied).
dd if=/dev/urandom of="$leg1" bs=1M seek=$((start + 200)) count=1 oflag=direct status=none
start_daemon --alu /dev/vda --alu /dev/vdb
wait_vol_state m1 degraded
got=$(dd if="$dev" bs=1M count=256 iflag=direct status=none | sha256sum)
[ "$got" = "$want" ] || fail "the stale leg was read after its return"
ok "vdb is back but still failed: reads come from vda only"
out=$(tbj alu readd /dev/vdb --wait)
echo "$out"
json_has "$out" state '"done"' || fail "re-add not done: $out"
json_has "$out" repaired 3, || fail "the re-add copied other than the 3 regions written while vdb was away: $out"
wait_vol_state m1 online
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 256, || fail "scrub should find exactly the planted clean-region difference: $out"
ok "re-add copied exactly the 3 marked regions"
# The planted difference is ours, not the re-add's: repair it from leg 0,
# then every read, from either leg, gives what was written.
tbj vol scrub m1 --repair --wait >/dev/null
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 0, || fail "mismatches left after repair: $out"
got=$(dd if="$dev" bs=1M count=256 iflag=direct status=none | sha256sum)
[ "$got" = "$want" ] || fail "data changed across the re-add"
ok "legs equal; data intact"
stop_daemon

# --auto-reclaim: vdb, now reached as /dev/mapper/late, is missing at start
# and appears while the daemon runs: the periodic scan finds it and re-adds
# it, copying only what was written meanwhile.
sz=$(blockdev --getsz /dev/vdb)
start_daemon --alu /dev/vda --alu /dev/mapper/late --auto-reclaim
wait_vol_state m1 degraded
dd if=/dev/urandom of="$dev" bs=1M seek=30 count=2 oflag=direct status=none
want=$(dd if="$dev" bs=1M count=256 iflag=direct status=none | sha256sum)
dmsetup create late --noudevsync --table "0 $sz linear /dev/vdb 0"
dmsetup mknodes
ok "the disk appears as /dev/mapper/late while the daemon runs"
wait_vol_state m1 online 60
grep -q "re-adding it (--auto-reclaim)" "$DAEMON_LOG" || fail "not re-added by the periodic scan"
j=$(tbj job list | grep -o '{[^}]*"kind":"rebuild"[^}]*}' | tail -n 1)
json_has "$j" state '"done"' || fail "no finished rebuild: $(tbj job list)"
json_has "$j" repaired 2, || fail "the auto re-add copied other than the 2 regions written meanwhile: $j"
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 0, || fail "legs differ after the auto re-add: $out"
got=$(dd if="$dev" bs=1M count=256 iflag=direct status=none | sha256sum)
[ "$got" = "$want" ] || fail "data changed across the auto re-add"
ok "re-added without asking; exactly the 2 marked regions copied; legs equal"

# Under load: ext4 mounted on m1 and fio write+verify running while the
# disk is away, appears, and is re-added by the scan and resynced; fio sees
# no error, the copy takes only the regions written while the disk was away
# (fewer than all), and verify, scrub and e2fsck are clean afterwards.
mkfs.ext4 -q -F "$dev"
wait_bitmap_clean m1
stop_daemon
dmsetup remove late
start_daemon --alu /dev/vda --alu /dev/mapper/late --auto-reclaim
wait_vol_state m1 degraded
mkdir -p /mnt
mount "$dev" /mnt
fio_load /mnt/load 48M
sleep 3
dmsetup create late --noudevsync --table "0 $sz linear /dev/vdb 0"
dmsetup mknodes
ok "the disk appears again under fio load"
wait_vol_state m1 online 120
wait_fio "$FIO_PID" /tmp/fio-load.out "across the late disk's return"
ok "fio write+verify: 0 errors while the disk returned and resynced"
no_io_error "late disk under load"
j=$(tbj job list | grep -o '{[^}]*"kind":"rebuild"[^}]*}' | tail -n 1)
json_has "$j" state '"done"' || fail "no finished rebuild under load: $(tbj job list)"
copied=$(json_num "$j" repaired)
[ "$copied" -gt 0 ] && [ "$copied" -lt 256 ] || fail "the re-add under load copied $copied of 256 regions (want only the dirty ones): $j"
ok "re-added under load, $copied of 256 regions copied"
fio_verify_load /mnt/load 48M "after the re-add under load"
umount /mnt
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 0, || fail "legs differ after the re-add under load: $out"
fsck_clean "$dev" "e2fsck after the re-add under load"
ok "verify, scrub (0 mismatches) and e2fsck clean"
stop_daemon
say "late-disk passed"
