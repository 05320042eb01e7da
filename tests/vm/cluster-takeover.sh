#!/bin/sh
# A takeover while other SPs expose a mounted volume (spec [062], [069]: a
# new master with a newer generation; section V's fencing; [0109]-[0110]).
# Three SPs, one ALU each: sp1 (vda, master by rule: equal ALUs, lowest
# name), sp2 (vdb), sp3 (vdc). A mirror m1 with a leg on sp2's vdb and one
# on sp3's vdc, exposed on sp1, sp2 and sp3; ext4 on sp2's /dev/ublkbN with
# fio write+verify running, and a region outside the filesystem written
# through sp3 under it.
#
# sp1's tierblkd is killed with SIGKILL and not restarted: sp2 takes over
# with generation 2, and every SP cuts generation 1's sessions, so the trees
# on sp2 and sp3, whose remote references still name generation 1, would
# wait and then fail their remote legs (EIO after the no-path timeout: a
# degraded mirror, or an I/O error with a single leg). Instead:
# - sp2 keeps m1 online on the same device, its tree confirmed by the object
#   database it now holds, and re-admits its reference to sp3's leg under
#   generation 2 (`path list` shows part:2:...);
# - sp3 gets m1's assignment from the new master (retried until sp3 follows
#   it), the same tree: it re-admits its reference to sp2's leg in place;
# - no leg fails, fio sees 0 errors, the kernel logs no I/O error.
# The takeover queues a repairing scrub (a mirror that ran on a master now
# gone). It writes legs while sp3 can still write m1, and no longer waits for
# sp3 to go: the new master fences each span it repairs on sp3 (md-cluster's
# suspend range: sp3 holds its writes there until the span is done; sp1,
# given up on, holds no session), so the repair runs and ends done while
# sp3's writes go on and fio writes through sp2. Then `vol unexpose --on
# sp3`; a checking scrub finds 0 mismatches, fio's verify pass and e2fsck
# -fn are clean. (sp3 runs with the fence module's debug log: it must have
# held its writes for the repair, and no hold may run out its lease.)
# vm-run: --disks 3 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 3
sp_secret
TIERBLK_SOCKET="$R/sp1.ctl"
TB2="tierblk --socket $R/sp2.ctl"
TB3="tierblk --socket $R/sp3.ctl"
trap 'sp_cleanup $?' EXIT

start_sp sp1 --alu /dev/vda --peer "sp2=unix:$R/sp2.sock" --peer "sp3=unix:$R/sp3.sock"
SP1_PID=$LAST_PID
start_sp sp2 --alu /dev/vdb --peer "sp1=unix:$R/sp1.sock" --peer "sp3=unix:$R/sp3.sock"
# sp3 logs each hold it takes for the master's jobs (a debug line of the
# fence module).
log_was=${TIERBLK_LOG-}
export TIERBLK_LOG="${TIERBLK_LOG:-info},tierblk::daemon::fence=debug"
start_sp sp3 --alu /dev/vdc --peer "sp1=unix:$R/sp1.sock" --peer "sp2=unix:$R/sp2.sock"
if [ -n "$log_was" ]; then TIERBLK_LOG=$log_was; else unset TIERBLK_LOG; fi
wait_role "$TIERBLK_SOCKET" sp1 master
ok "sp1 is master"
for a in /dev/vda sp2:/dev/vdb sp3:/dev/vdc; do tb alu claim "$a" >/dev/null; done
tb vol create m1 --size 256M --layout mirror --alu sp2:/dev/vdb --alu sp3:/dev/vdc
wait_vol_state m1 online 30
tb vol expose m1 --on sp2 >/dev/null
tb vol expose m1 --on sp3 >/dev/null
dev2=$(dev_on "$R/sp2.ctl" m1)
dev3=$(dev_on "$R/sp3.ctl" m1)
[ -n "$dev2" ] && [ -n "$dev3" ] && [ "$dev2" != "$dev3" ] ||
	fail "m1 not exposed on sp2 and sp3: sp2 '$dev2', sp3 '$dev3'"
mkfs.ext4 -q -F "$dev2" 224M
mkdir -p /mnt
mount "$dev2" /mnt
ok "m1: a mirror of sp2's vdb and sp3's vdc, exposed on sp1, sp2 ($dev2, ext4 mounted) and sp3 ($dev3)"

# Writes through sp3 land on sp2's leg through sp3's remote reference: a
# region after the filesystem (MiB 224-231), rewritten in a loop with two
# random patterns in turn. They and their sha256 are made once, before: in
# the emulated guest, 32 random MiB and their sha256 per round took longer
# than the writes, and with the repair, fio and three daemons on 2 vCPUs a
# round could outlast the 8 s window below (seen in about 1 run of 10, with
# no process blocked: dump_stuck). A round is now only the direct writes
# and their flush, the thing checked.
for p in a b; do
	dd if=/dev/urandom of=/tmp/tail.$p bs=1M count=8 2>/dev/null
	sha256sum </tmp/tail.$p | cut -d' ' -f1 >/tmp/tail.$p.sha
done
tail_loop() {
	_k=0
	while [ ! -f /tmp/stop-tail ]; do
		_p=a
		[ $((_k % 2)) = 1 ] && _p=b
		dd if=/tmp/tail.$_p of="$dev3" bs=1M seek=224 count=8 oflag=direct conv=fsync 2>/dev/null ||
			{ echo "write $_k through sp3 failed" >/tmp/tail-failed; return; }
		cp /tmp/tail.$_p.sha /tmp/tail.sha
		_k=$((_k + 1))
		echo "$_k" >/tmp/tail.count
	done
}
rm -f /tmp/stop-tail /tmp/tail-failed /tmp/tail.count
tail_loop &
TAIL_PID=$!
PIDS="$PIDS $TAIL_PID"
fio_load /mnt/data 96M --rate=,1m
fio1=$FIO_PID
sleep 3

kill -KILL "$SP1_PID"
wait "$SP1_PID" 2>/dev/null || true
ok "sp1's tierblkd (the master) killed with SIGKILL, not restarted"
wait_role "$R/sp2.ctl" sp2 master
wait_role "$R/sp3.ctl" sp2 master
$TB2 sp list
grep -q "taking the master role" /tmp/sp2.log || fail "sp2 did not take office"
ok "sp2 took over; sp3 follows it"
# From now on, the takeover's repair of m1 and the writes through sp3 side by
# side: "STATE COUNT" every ~0.2 s until the repair ends (checked below).
m1_jobs() { $TB2 --json job list | grep -o '{[^}]*}' | grep '"volume":"m1"'; }
rep_trace() {
	_k=0
	while [ "$_k" -lt 1500 ]; do
		_s=$(m1_jobs 2>/dev/null | grep '"kind":"scrub-repair"' | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
		echo "${_s:-none} $(cat /tmp/tail.count 2>/dev/null || echo 0)" >>/tmp/rep.trace
		case "$_s" in done | failed) return ;; esac
		_k=$((_k + 1))
		sleep 0.2
	done
}
rm -f /tmp/rep.trace
rep_trace &
TRACE_PID=$!
PIDS="$PIDS $TRACE_PID"

wait_log /tmp/sp2.log "kept online across the takeover" "sp2 did not keep m1 online"
[ "$(dev_on "$R/sp2.ctl" m1)" = "$dev2" ] || fail "m1 is no longer $dev2 on sp2: $($TB2 --json vol show m1)"
grep -q "/mnt" /proc/mounts || fail "the mount went away"
# Both trees' remote references name generation 2 now, and are connected.
i=0
while :; do
	p2=$($TB2 --json path list)
	p3=$($TB3 --json path list)
	if printf '%s' "$p2" | grep -q '"export":"part:2:' && printf '%s' "$p3" | grep -q '"export":"part:2:' &&
		! printf '%s' "$p2$p3" | grep -q '"export":"part:1:'; then
		break
	fi
	i=$((i + 1))
	[ "$i" -le 150 ] || fail "the references were not re-admitted under generation 2: sp2 $p2; sp3 $p3"
	sleep 0.2
done
$TB2 path list
$TB3 path list
ok "sp2's and sp3's remote references re-admitted under generation 2"

# Load keeps going through both SPs for a while under the new master.
c0=$(cat /tmp/tail.count 2>/dev/null || echo 0)
sleep 8
c1=$(cat /tmp/tail.count 2>/dev/null || echo 0)
[ -f /tmp/tail-failed ] && fail "$(cat /tmp/tail-failed)"
[ "$c1" -gt "$c0" ] || fail "no write through sp3 completed after the takeover ($c0 -> $c1)"
kill -0 "$fio1" || fail "fio ended before the load after the takeover was seen"
j=$($TB2 --json vol show m1)
case "$j" in *'"health":"failed"'* | *'"health":"rebuilding"'*) fail "a leg of m1 failed across the takeover: $j" ;; esac
json_has "$j" state '"online"' || fail "m1 is not online on sp2: $j"
ok "writes through sp3 go on ($c0 -> $c1 rounds), both legs healthy"

# The takeover's repair of m1 writes legs: it runs, fenced, while sp3 still
# exposes m1 and writes it.
rep=$(m1_jobs | grep '"kind":"scrub-repair"') || fail "the takeover queued no repair of m1: $($TB2 job list)"
rid=$(json_num "$rep" id)
# (It may wait a round while sp3 does not follow sp2 yet: it needs m1's tree
# from the new master first. It must not wait for an unexpose.)
wait_job_started /tmp/sp2.log "$rid" 150 ||
	fail "the repair of m1 never started while sp3 exposes m1: $($TB2 job list)"
out=$($TB2 --json job show "$rid" --wait) || fail "the repair failed: $out"
json_has "$out" state '"done"' || fail "the repair did not end done: $out"
wait "$TRACE_PID" || true
[ -f /tmp/tail-failed ] && fail "$(cat /tmp/tail-failed)"
[ -b "$dev3" ] || fail "$dev3 went away during the repair"
kill -0 "$fio1" || fail "fio's write pass ended before the repair did: no load across it"
# sp3's writes go on while the repair runs: a fence holds them only for the
# span being repaired, never for the whole job.
n=$(grep -c '^running ' /tmp/rep.trace || true)
c0=$(grep '^running ' /tmp/rep.trace | head -n 1 | cut -d' ' -f2)
c1=$(grep '^running ' /tmp/rep.trace | tail -n 1 | cut -d' ' -f2)
echo "repair seen running in $n samples; writes through sp3: round ${c0:-?} -> ${c1:-?}"
if [ "$n" -ge 20 ] && [ "$c1" -le "$c0" ]; then
	cat /tmp/rep.trace
	fail "no write through sp3 completed while the repair ran ($n samples)"
fi
grep -q "holding writes for the master's job.*volume=m1" /tmp/sp3.log ||
	fail "sp3 never held its writes for the new master's repair"
if grep "hold on writes ran out" /tmp/sp3.log; then
	fail "a hold on sp3 ran out its lease (the master lost track of it)"
fi
ok "the takeover's repairing scrub ran while sp3 exposes m1 and writes it: done, $(json_num "$out" repaired) regions repaired"

wait_fio "$fio1" /tmp/fio-load.out "across sp1's kill -9, sp2's takeover and the repair"
ok "fio: write + verify with 0 errors across the takeover and the repair"
touch /tmp/stop-tail
wait "$TAIL_PID" || true
[ -f /tmp/tail-failed ] && fail "$(cat /tmp/tail-failed)"
want=$(cat /tmp/tail.sha)
got=$(dd if="$dev2" bs=1M skip=224 count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "sp2 reads other bytes than sp3 last wrote"
ok "sp2 reads what sp3 last wrote through its re-admitted reference"
no_io_error "takeover"

$TB2 vol unexpose m1 --on sp3 >/dev/null
[ -e "$dev3" ] && fail "$dev3 still exists after unexpose"
ok "m1 unexposed on sp3"
out=$($TB2 --json vol scrub m1 --wait)
json_has "$out" state '"done"' || fail "scrub not done: $out"
[ "$(json_num "$out" mismatches)" = 0 ] || fail "the legs differ: $out"
ok "scrub: sp2's and sp3's legs are identical"

fio_verify_load /mnt/data 96M "final verify"
ok "final verify pass: 0 errors"
umount /mnt
fsck_clean "$dev2" "e2fsck found problems"
ok "e2fsck -fn clean"
no_io_error "end"
