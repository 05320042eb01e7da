#!/bin/sh
# RAID10 over 4 disks with ext4 mounted; one disk dies under fio write+verify
# (dm-error swapped in under the ALU). The system handles it as Fig. 15 of
# section IX: the failure is persisted before the write that found it
# completes, then the volume is quiesced (in-flight I/O completes, new I/O
# is held), its tree is rebuilt without the failed part and loaded, and I/O
# resumes (spec [0168]-[0171]; claims 1-8 and 17-18 of 003_...). fio sees
# zero errors, the kernel no I/O error, the data path keeps no descriptor of
# the dead disk, the failure survives a restart, the data verifies and e2fsck is
# clean (MD's raid10 semantics).
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
name=$(basename "$victim")
minor=$(dmsetup info -c --noheadings -o minor "$name" | tr -d ' ')
# holds_dead: the daemon's open descriptors on the victim's dm device.
holds_dead() { ls -l "/proc/$DAEMON_PID/fd" 2>/dev/null | grep -c "/dev/dm-$minor\$\|/dev/mapper/$name\$" || true; }
before=$(holds_dead)
ls -l "/proc/$DAEMON_PID/fd" | grep "dm-$minor\|$name"
[ "$before" -gt 0 ] || fail "the daemon holds no descriptor of $victim before the failure (looked for dm-$minor)"
ok "will fail $victim (dm-$minor) under load; the daemon has $before descriptors on it"

mkfs.ext4 -q -F "$dev"
mkdir -p /mnt
mount "$dev" /mnt
fio_load /mnt/load 160M
sleep 4
sz=$(blockdev --getsz "$victim")
dmsetup suspend "$name"
dmsetup load "$name" --table "0 $sz error"
dmsetup resume "$name"
ok "$victim now fails every I/O (dm-error)"
wait_fio "$FIO_PID" /tmp/fio-load.out "while a disk died"
ok "fio: write + verify with 0 errors across the disk failure"
no_io_error "disk failure under raid10"

wait_vol_state r1 degraded
j=$(vol_json r1)
echo "$j"
json_has "$j" health '"failed"' || fail "no failed member in $j"
grep -q "leg failure persisted\|member failed" "$DAEMON_LOG" || fail "daemon did not log the persisted failure"
ok "r1 degraded, member failed"

# Fig. 15 in the event log, in this order: the failure persisted, the
# volume quiesced, its new tree (without the dead disk) loaded, resumed.
wait_event "volume-reshaped *r1: reconfiguration (alu $victim failed)" 100
seq=$(tb events | awk '$4 == "r1:" { print $3 }' | grep -v volume-online | tr '\n' ' ')
echo "events: $seq"
case "$seq" in
*member-failed*volume-quiesced*volume-reshaped*volume-resumed*) ;;
*) fail "not failure, quiesce, new tree, resume in order: $seq" ;;
esac
tb events | grep "reconfiguration" || true
ok "the failure persisted, r1 quiesced, reconfigured without $victim, resumed"
# Each queue takes the new tree at its next request: one read from every
# CPU reaches every queue. The descriptor left is the metadata store's (it
# keeps one for every ALU it was given); the data path has none.
for c in $(seq 0 $(($(nproc) - 1))); do
	fio --name=q$c --filename="$dev" --rw=read --bs=4k --direct=1 --size=1M --cpus_allowed="$c" \
		--output-format=terse >/dev/null || fail "read on cpu $c"
done
[ "$(holds_dead)" = 1 ] || {
	ls -l "/proc/$DAEMON_PID/fd"
	fail "the daemon still holds $(holds_dead) descriptors on the dead $victim (want 1: the store's)"
}
ok "the data path holds no descriptor of the dead disk: the new tree leaves it out"

# More writes on the reconfigured tree.
fio_load /mnt/load2 32M
wait_fio "$FIO_PID" /tmp/fio-load.out "after the reconfiguration"
ok "fio write + verify on the reconfigured tree: 0 errors"

# The failure is on disk: after a restart the volume comes up degraded and
# never reads (nor opens) the dead leg.
umount /mnt
stop_daemon
# shellcheck disable=SC2086
start_daemon $alus
wait_vol_state r1 degraded
[ "$(holds_dead)" = 1 ] || fail "the restarted daemon opened the dead $victim for data ($(holds_dead) descriptors)"
fsck_clean "$dev" "e2fsck after the failure and a restart"
ok "e2fsck -fn clean"
mount "$dev" /mnt
fio_verify_load /mnt/load 160M "after restart, degraded"
fio_verify_load /mnt/load2 32M "after restart, degraded"
ok "data verified after restart, degraded"
umount /mnt
no_io_error "end"
stop_daemon
say "raid10-fail passed"
