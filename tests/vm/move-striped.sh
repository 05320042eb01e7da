#!/bin/sh
# Moving one member of a stripe and of a raid10 volume online (pvmove of one
# leg; spec claims 14-18, [0111]-[0113]), under load:
# - stripe, ext4 mounted, fio write+verify on a file: member 0 moves to the
#   ALU that holds member 1 (emptying /dev/vda, the usual reason to move).
#   While the copy runs the stripe's column 0 is a mirror of the source and
#   the target; tierblkd is killed with SIGKILL mid-copy; a stripe keeps no
#   write-intent bitmap, so the unclean stop queues a repairing scrub (it
#   makes the target agree with the source below the copy's checkpoint,
#   where writes were in flight), which runs first; then the copy resumes
#   from its checkpoint (not 0), and the move ends with the target renumbered
#   as member 0 and the source's extents free (alu release /dev/vda then
#   works);
# - raid10 (2 x 2), fio write+verify on the raw device: a move of member 0
#   is abandoned (remove-leg of the target: the job fails, the volume is as
#   before), then started again and completed; a scrub finds the legs equal.
# Ends with fio's verify at 0 errors, no I/O error in the kernel log, and
# e2fsck -fn clean.
# vm-run: --disks 4 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 4
alus="--alu /dev/vda --alu /dev/vdb --alu /dev/vdc --alu /dev/vdd"
# shellcheck disable=SC2086
start_daemon $alus
for d in vda vdb vdc vdd; do tb alu claim /dev/$d >/dev/null; done

# --- stripe, killed mid-copy ---------------------------------------------------
tb vol create s1 --size 256M --layout stripe --stripes 2 --chunk 64K --alu /dev/vda --alu /dev/vdb >/dev/null
wait_vol_state s1 online
[ "$(members_on s1)" = "0:/dev/vda 1:/dev/vdb " ] || fail "s1 placed as $(members_on s1)"
dev=$(vol_device s1)
mkfs.ext4 -q -F "$dev"
mkdir -p /mnt
mount "$dev" /mnt
fio_load /mnt/data 128M --rate=,2m
fio_pid=$FIO_PID
sleep 2
expect_fail tb vol move s1 --to /dev/vdc
expect_fail_match "member 0 is on ALU" tb vol move s1 --member 0 --to /dev/vda
out=$(tbj vol move s1 --member 0 --to /dev/vdb --rate 2M)
job=$(json_num "$out" id)
[ -n "$job" ] || fail "vol move returned no job: $out"
# Killed past the first persisted checkpoint (32 MiB) and well before the
# end (64 s at 2M/s); the checks follow the restart.
wait_job_past "$job" $((36 << 20))
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
ok "tierblkd killed with SIGKILL at $done_b bytes into the copy"
sleep 1
kill -0 "$fio_pid" || fail "fio ended while the daemon was dead"
# shellcheck disable=SC2086
start_daemon $alus
[ "$(vol_device s1)" = "$dev" ] || fail "s1 came back as $(vol_device s1), not $dev"
[ "$done_b" -lt $((128 << 20)) ] || fail "the copy was complete before the kill: no mid-copy crash"
s1_jobs() { tbj job list | grep -o '{[^}]*}' | grep '"volume":"s1"'; }
s1_jobs | grep -q '"kind":"scrub-repair"' ||
	fail "the unclean stop queued no repair of s1: $(tb job list | tr '\n' '|')"
ok "the unclean stop queued a repairing scrub of s1 (a stripe's move keeps no bitmap)"
v=$(vol_json s1)
json_has "$v" layout '"stripe"' || fail "s1 is not a stripe during the move: $v"
[ "$(members_on s1)" = "0:/dev/vda 1:/dev/vdb 2:/dev/vdb " ] || fail "during the move: $(members_on s1)"
echo "$v" | grep -q '"health":"rebuilding","index":2' || fail "the move target is not member 2, rebuilding: $v"
ok "during the move s1 is a stripe whose member 2 on /dev/vdb copies member 0"
expect_fail_match "is unfinished" tb vol move s1 --member 1 --to /dev/vdc
wait_job_started "$DAEMON_LOG" "$job" || fail "the move never resumed: $(tb job list)"
rep=$(s1_jobs | grep '"kind":"scrub-repair"')
json_has "$rep" state '"done"' || fail "the move resumed before the repair of s1 ended: $rep"
from=$(job_from "$DAEMON_LOG" "$job")
[ "${from:-0}" -gt 0 ] || fail "the move did not resume from its checkpoint (from=${from:-?})"
ok "after the repair, the move resumed from byte $from, not from 0"
out=$(tbj job show "$job" --wait)
json_has "$out" state '"done"' || fail "move not done: $out"
i=0
until [ "$(members_on s1)" = "0:/dev/vdb 1:/dev/vdb " ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "the source member was never dropped: $(members_on s1)"
	sleep 0.2
done
v=$(vol_json s1)
json_has "$v" layout '"stripe"' || fail "s1 not a stripe after the move: $v"
echo "$v" | grep -q '"index":2' && fail "s1 still has a third member: $v"
ok "move done after the restart: s1's member 0 is on /dev/vdb, the layout a 2-column stripe"
tb alu release /dev/vda >/dev/null || fail "/dev/vda still in use after the move: $(tb alu list)"
ok "/dev/vda, emptied by the move, was released"
wait_fio "$fio_pid" /tmp/fio-load.out "across the stripe move and kill -9"
ok "fio: write + verify with 0 errors across the stripe move and kill -9"
umount /mnt
fsck_clean "$dev" "e2fsck found problems after the stripe move"
ok "e2fsck -fn clean"

# --- raid10: abandon a move, then move ------------------------------------------
tb alu claim /dev/vda >/dev/null
tb vol create r1 --size 128M --layout raid10 --stripes 2 --copies 2 >/dev/null
wait_vol_state r1 online
rdev=$(vol_device r1)
before=$(members_on r1)
src=$(echo "$before" | tr ' ' '\n' | sed -n 's/^0://p')
# The target: an ALU holding no leg of mirror 0 (members 0 and 1), /dev/vdb
# (full of s1) last.
leg1=$(echo "$before" | tr ' ' '\n' | sed -n 's/^1://p')
to=""
for d in /dev/vdd /dev/vdc /dev/vda /dev/vdb; do
	[ "$d" != "$src" ] && [ "$d" != "$leg1" ] && to=$d && break
done
[ -n "$to" ] || fail "no target ALU for r1's member 0 (legs on $before)"
expect_fail_match "another leg of mirror 0" tb vol move r1 --member 0 --to "$leg1"
fio --name=r10 --filename="$rdev" --rw=randwrite --bs=4k --direct=1 --ioengine="$(fio_engine)" \
	--iodepth=16 --size=128M --verify=crc32c --verify_fatal=1 --randrepeat=1 --do_verify=1 \
	--rate=,2m --output-format=terse --terse-version=3 >/tmp/fio-r10.out 2>&1 &
rfio=$!
# fio writes every block of r1 (a new raid10's legs are not synced, as with
# mdadm --assume-clean): the scrub at the end compares them all.
sleep 2
out=$(tbj vol move r1 --member 0 --to "$to" --rate 1M)
job=$(json_num "$out" id)
[ -n "$job" ] || fail "vol move returned no job: $out"
echo "$(vol_json r1)" | grep -q '"health":"rebuilding","index":4' || fail "the target is not member 4: $(vol_json r1)"
sleep 1
tb vol remove-leg r1 --member 4 >/dev/null
out=$(tbj job show "$job")
json_has "$out" state '"failed"' || fail "the abandoned move's job is not failed: $out"
[ "$(members_on r1)" = "$before" ] || fail "after abandoning: $(members_on r1), was $before"
ok "move of r1's member 0 abandoned (remove-leg of the target): job failed, r1 as before"
out=$(tbj vol move r1 --member 0 --to "$to" --rate 32M --wait)
json_has "$out" state '"done"' || fail "r1 move not done: $out"
i=0
while echo "$(vol_json r1)" | grep -q '"index":4'; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "the source member was never dropped: $(vol_json r1)"
	sleep 0.2
done
echo "$(members_on r1)" | grep -q "0:$to " || fail "r1's member 0 is not on $to: $(members_on r1)"
ok "r1's member 0 moved from $src to $to online"
wait_fio "$rfio" /tmp/fio-r10.out "across the raid10 moves"
ok "fio on $rdev: write + verify with 0 errors across the raid10 moves"
out=$(tbj vol scrub r1 --wait)
json_has "$out" state '"done"' || fail "scrub not done: $out"
[ "$(json_num "$out" mismatches)" = 0 ] || fail "r1's legs differ after the move: $out"
ok "scrub: r1's legs are identical"
no_io_error "stripe and raid10 moves"
stop_daemon
