#!/bin/sh
# Snapshots (spec VIII, [0153]-[0167]): a snapshot of a mounted ext4 on a
# mirror, taken online under fio load (zero errors), keeps the old data while
# the origin is overwritten (checksums); it is a read-only /dev/ublkbN that
# e2fsck finds clean; a second snapshot is removed; a rollback of the offline
# origin survives a kill -9 of the daemon (it resumes from its checkpoint),
# restores the old data, and e2fsck finds the origin clean. A leg of the
# origin moves to another ALU online, under load, while s1 is exposed (spec
# VI with VIII: the snapshot reads through its origin's tree, so it is held
# and loads the new tree with the origin): s1 keeps its old data.
# vm-run: --disks 3 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 3
alus="--alu /dev/vda --alu /dev/vdb --alu /dev/vdc"
# shellcheck disable=SC2086
start_daemon $alus
tb alu claim /dev/vda >/dev/null
tb alu claim /dev/vdb >/dev/null
tb alu claim /dev/vdc >/dev/null
tb vol create v1 --size 128M --layout mirror --alu /dev/vda --alu /dev/vdb
wait_vol_state v1 online
dev=$(vol_device v1)
mkfs.ext4 -q -F "$dev"
mkdir -p /mnt/o /mnt/s
mount -t ext4 "$dev" /mnt/o
for f in a b c; do
	dd if=/dev/urandom of="/mnt/o/$f" bs=1M count=8 status=none
done
(cd /mnt/o && sha256sum a b c >/tmp/old.sums)
sync
ok "ext4 on $dev with 3 files of 8 MiB"

# Load on the origin while the snapshot is taken: fio writes with crc32c
# headers into a file of the mounted filesystem.
fio --name=l --filename=/mnt/o/load --size=24M --rw=randwrite --bs=4k --direct=1 \
	--ioengine=libaio --iodepth=16 --verify=crc32c --verify_fatal=1 --randrepeat=1 \
	--number_ios=12000 --output-format=terse --terse-version=3 >/tmp/fio-load.out 2>&1 &
fio_pid=$!
sleep 1
# A consistent filesystem image: freeze, snapshot, thaw (LVM does the same).
fsfreeze --freeze /mnt/o
tb snap create v1 s1
fsfreeze --unfreeze /mnt/o
wait "$fio_pid" || {
	cat /tmp/fio-load.out
	fail "fio failed while the snapshot was taken"
}
[ "$(grep ';' /tmp/fio-load.out | tail -n 1 | cut -d';' -f5)" = 0 ] || {
	cat /tmp/fio-load.out
	fail "fio reported errors"
}
ok "snapshot s1 taken under fio load: 0 errors"
tbj snap list
s=$(tbj snap list v1)
json_has "$s" state '"valid"' || fail "s1 not valid: $s"
sdev=$(json_str "$s" device)
[ "$sdev" != null ] || fail "s1 not exposed: $s"
wait_for_dev "$sdev"
[ "$(blockdev --getro "$sdev")" = 1 ] || fail "$sdev is not read-only"
[ "$(blockdev --getsize64 "$sdev")" = $((128 * 1048576)) ] || fail "$sdev has the wrong size"
if dd if=/dev/zero of="$sdev" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
	fail "a write to the snapshot $sdev succeeded"
fi
ok "s1 is $sdev: read-only, 128 MiB"

# Overwrite the origin's files.
for f in a b; do
	dd if=/dev/urandom of="/mnt/o/$f" bs=1M count=8 conv=notrunc status=none
done
rm /mnt/o/c
sync
(cd /mnt/o && sha256sum a b >/tmp/new.sums)
if cmp -s /tmp/new.sums /tmp/old.sums; then fail "the overwrite changed nothing"; fi
used=$(json_num "$(tbj snap list v1)" used)
[ "$used" -ge $((16 * 1048576)) ] || fail "s1 copied only $used bytes for 16 MiB overwritten"
ok "origin overwritten; s1 holds $used bytes of old chunks"

fsck_clean "$sdev" "e2fsck found errors on the snapshot"
mount -t ext4 -o ro "$sdev" /mnt/s
(cd /mnt/s && sha256sum -c /tmp/old.sums) || fail "the snapshot lost the old data"
umount /mnt/s
ok "s1 shows the old files (checksums); e2fsck clean"

# Move the origin's leg on /dev/vda to /dev/vdc under load, s1 online.
fio_load /mnt/o/load2 32M --rate=,1m
fio_pid=$FIO_PID
sleep 1
out=$(tbj vol move v1 --to /dev/vdc --from /dev/vda --rate 16M --wait)
json_has "$out" state '"done"' || fail "the move of v1's leg is not done: $out"
i=0
while vol_json v1 | grep -q '"path":"/dev/vda"'; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "the moved leg was never dropped: $(vol_json v1)"
	sleep 0.2
done
vol_json v1 | grep -q '"path":"/dev/vdc"' || fail "v1 has no leg on /dev/vdc: $(vol_json v1)"
wait_fio "$fio_pid" /tmp/fio-load.out "while v1's leg moved with s1 online"
json_has "$(tbj snap list v1)" state '"valid"' || fail "s1 not valid after the move: $(tbj snap list v1)"
# Random bytes where the old leg was: a snapshot still reading through the
# origin's old tree would read them.
tb vol create junk --size 128M --alu /dev/vda >/dev/null
wait_vol_state junk online
dd if=/dev/urandom of="$(vol_device junk)" bs=1M count=128 oflag=direct 2>/dev/null
fsck_clean "$sdev" "e2fsck found errors on the snapshot after the move"
mount -t ext4 -o ro "$sdev" /mnt/s
(cd /mnt/s && sha256sum -c /tmp/old.sums) || fail "the snapshot lost the old data in the move"
umount /mnt/s
(cd /mnt/o && sha256sum -c /tmp/new.sums) || fail "the origin lost data in the move"
tb vol offline junk >/dev/null
tb vol remove junk >/dev/null
ok "v1's leg moved from /dev/vda to /dev/vdc under fio load (0 errors); s1 still shows the old files"

# A second snapshot, then removed: its store is freed, s1 is unaffected.
tb snap create v1 s2 --size 32M --chunk 16K
[ "$(tbj snap list v1 | grep -o '"name"' | wc -l)" = 2 ] || fail "two snapshots expected"
dd if=/dev/urandom of=/mnt/o/d bs=1M count=4 status=none
sync
expect_fail_match 'in use|busy|mounted' tb vol offline v1
tb snap remove s2
[ "$(tbj snap list v1 | grep -o '"name"' | wc -l)" = 1 ] || fail "s2 not removed"
ok "s2 created and removed"

# Rollback: refused while the origin is online; then offline, slowly, with a
# kill -9 of the daemon in the middle.
expect_fail_match 'offline' tb snap rollback s1
umount /mnt/o
tb vol offline v1
expect_no_dev "$sdev" 1
tb snap rollback s1 --rate 4M
job=$(tbj job list | grep -o '"id":[0-9]*,"kind":"rollback"' | head -n 1 | cut -d: -f2 | cut -d, -f1)
[ -n "$job" ] || fail "no rollback job: $(tbj job list)"
i=0
while :; do
	done_b=$(json_num "$(tbj job show "$job")" done)
	[ "$done_b" -ge $((4 * 1048576)) ] && break
	i=$((i + 1))
	[ "$i" -le 200 ] || fail "rollback made no progress: $(tbj job show "$job")"
	sleep 0.2
done
expect_fail_match 'rollback' tb vol online v1
ok "rollback at $done_b bytes; v1 held offline; kill -9 the daemon"
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
# shellcheck disable=SC2086
start_daemon $alus
grep -q "rollback running.*from=[1-9]" "$DAEMON_LOG" || {
	grep -i rollback "$DAEMON_LOG" || true
	fail "the rollback did not resume from a checkpoint"
}
j=$(vol_json v1)
json_has "$j" state '"offline"' || fail "v1 came online during the rollback: $j"
tb job show "$job" --wait
json_has "$(tbj job show "$job")" state '"done"' || fail "rollback not done: $(tbj job show "$job")"
# The snapshot stays, empty: a valid image of the origin as it now is.
s=$(tbj snap list v1)
json_has "$s" state '"valid"' || fail "s1 not valid after the rollback: $s"
json_has "$s" used 0 || fail "s1 not empty after the rollback: $s"
ok "rollback resumed from its checkpoint and finished; s1 is empty"

tb vol online v1
wait_vol_state v1 online
dev=$(vol_device v1)
fsck_clean "$dev" "e2fsck found errors on the rolled-back origin"
mount -t ext4 "$dev" /mnt/o
(cd /mnt/o && sha256sum -c /tmp/old.sums) || fail "the rollback did not restore the old data"
[ ! -e /mnt/o/d ] || fail "a file written after the snapshot survived the rollback"
ok "v1 rolled back: the old files are back, e2fsck clean"
# Mounting wrote the superblock: s1 copied its first chunks again.
[ "$(json_num "$(tbj snap list v1)" used)" -gt 0 ] || fail "s1 did not copy the origin's new writes"
umount /mnt/o
stop_daemon
say "snapshot passed"
