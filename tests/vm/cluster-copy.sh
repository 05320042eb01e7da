#!/bin/sh
# Jobs that copy mirror legs while another storage processor writes the
# volume (spec [0109]-[0110], claims 14-18 of 001_...; issue 5), three SPs in
# one VM as in cluster.sh: sp1 (master by rule: vda, vdb), sp2 (vdc), sp3
# (vdd). A mirror m1 on sp1's two ALUs is exposed on sp2 too ([0109]: "VCM
# 337 distributes the object definitions based on the newly added T2 object
# sub-tree to SPs 910 and 920"; [0110]: sp2's tree references sp1's tier-1
# objects remotely); ext4 is mounted from sp2's /dev/ublkbN and fio
# write+verify runs there, so every host write comes from the peer, not from
# the master that runs the jobs.
#
# A job writing legs no longer waits while a peer exposes the volume: the
# master sends every exposing SP the tree with the copied leg marked
# rebuilding (written at every offset, never read) and, for each span the
# job works on, a fence (md-cluster's suspend range): the peer holds its host
# writes there until the span is done. Without it a peer write racing the
# copy leaves the legs different, which the checking scrubs below catch.
# sp2 runs with the fence module's debug log: each job below must have taken
# a hold there, and no hold may run out its lease (10 s).
# 1. A leg failed and re-added while sp2 writes (`alu fail /dev/vdb`, `alu
#    readd /dev/vdb`): sp2 is told to stop writing the failed leg (its view
#    degraded), then gets it back as rebuilding; the rebuild runs under the
#    load and ends done with both legs healthy on sp1 and sp2. The legs are
#    both on sp1, which keeps a write-intent bitmap, but sp2's writes while
#    the leg was failed never marked it: sp1 marks every region of it dirty
#    when the leg fails while another SP writes, so the re-add's dirty-region
#    copy takes the whole leg. fio stops; a checking scrub finds 0 mismatches.
# 2. Moving a tier-1 object to another SP under the peer's writes (claims
#    14-17: "move an existing first tier object from a first storage
#    processor to a second storage processor", "sends a copy of the existing
#    first tier object"; claim 18: "the new second tier object tree to a
#    third storage processor with a remote reference to the copy"): `vol move
#    m1 --from /dev/vda --to sp3` is accepted (not refused with "also
#    exposed on"), runs at once (no "job waits" line) while fio writes
#    through sp2, and ends done: m1 is a mirror of sp3's vdd and sp1's vdb,
#    vda is freed, and sp2's tree shows the new leg rebuilding during the
#    copy and healthy after it.
# 3. A repairing scrub under the same load finds and rewrites nothing (the
#    fenced copy left the legs identical); fio stops; a checking scrub finds
#    0 mismatches.
# 4. The master stops exposing m1 (`vol unexpose m1 --on sp1`: sp2 alone
#    does) and keeps its tree without a device, for its jobs: vdb failed and
#    re-added under sp2's writes is rebuilt there (fenced, done, both legs
#    healthy in sp2's view) without exposing m1 on sp1 again; a checking
#    scrub runs there too and finds 0 mismatches. Then sp1 exposes it again.
# Ends with fio's verify pass at 0 errors, e2fsck -fn clean, both exposures
# reading the bytes written after the filesystem before the copies, and no
# I/O error in the kernel log.
# vm-run: --disks 4 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 4
sp_secret
TIERBLK_SOCKET="$R/sp1.ctl"
TB2="tierblk --socket $R/sp2.ctl"
trap 'sp_cleanup $?' EXIT

# no_wait WHEN: the master never parked a job because a peer exposes m1.
no_wait() {
	if grep "job waits" /tmp/sp1.log; then
		fail "a job waited for sp2 to unexpose m1 ($1)"
	fi
}
# holds: how many times sp2 held its writes to m1 for a job of the master.
holds() { grep -c "holding writes for the master's job.*volume=m1" /tmp/sp2.log || true; }
# held_for WHAT PREVIOUS: sp2 took a new hold since PREVIOUS (then in h), and
# never kept one until its lease ran out.
held_for() {
	h=$(holds)
	[ "$h" -gt "$2" ] || fail "sp2 never held its writes for the $1 ($2 -> $h holds)"
	if grep "hold on writes ran out" /tmp/sp2.log; then
		fail "a hold on sp2 ran out its lease (the master lost track of it) by the end of the $1"
	fi
}
# sp2_health: the member healths in sp2's own view of m1.
sp2_health() { $TB2 --json vol show m1 | grep -o '"health":"[a-z]*"' | tr '\n' ' '; }
# sp2_state: the state of m1 in sp2's view (online, degraded, ...).
sp2_state() { json_str "$($TB2 --json vol show m1)" state; }
# sp2_settled: sp2 has m1 online with every leg healthy.
sp2_settled() {
	[ "$(sp2_state)" = online ] || return 1
	case "$(sp2_health)" in *'"health":"ok"'*) ;; *) return 1 ;; esac
	case "$(sp2_health)" in *rebuilding* | *failed*) return 1 ;; esac
}
# sp2_degraded / sp2_rebuilding: sp2's view of m1 is degraded / has a leg
# rebuilding.
sp2_degraded() { [ "$(sp2_state)" = degraded ]; }
sp2_rebuilding() { sp2_health | grep -q '"health":"rebuilding"'; }
# sp2_until COND WHY: wait (up to 10 s) until COND (one of the above) holds;
# else fail with WHY and sp2's view of m1.
sp2_until() {
	i=0
	until $1; do
		i=$((i + 1))
		[ "$i" -le 100 ] || fail "$2: $($TB2 --json vol show m1)"
		sleep 0.1
	done
}
# check_scrub WHAT: a checking scrub of m1 (no load) finds 0 mismatches.
check_scrub() {
	out=$(tbj vol scrub m1 --wait) || fail "checking scrub failed ($1): $out"
	json_has "$out" state '"done"' || fail "checking scrub not done ($1): $out"
	[ "$(json_num "$out" mismatches)" = 0 ] || fail "the legs differ after $1: $out"
	ok "checking scrub after $1: 0 mismatches"
}

start_sp sp1 --alu /dev/vda --alu /dev/vdb --peer "sp2=unix:$R/sp2.sock" --peer "sp3=unix:$R/sp3.sock"
# sp2 logs each hold it takes for the master's jobs (a debug line of the
# fence module, once per job and mirror: later spans move the held window).
log_was=${TIERBLK_LOG-}
export TIERBLK_LOG="${TIERBLK_LOG:-info},tierblk::daemon::fence=debug"
start_sp sp2 --alu /dev/vdc --peer "sp1=unix:$R/sp1.sock" --peer "sp3=unix:$R/sp3.sock"
if [ -n "$log_was" ]; then TIERBLK_LOG=$log_was; else unset TIERBLK_LOG; fi
start_sp sp3 --alu /dev/vdd --peer "sp1=unix:$R/sp1.sock" --peer "sp2=unix:$R/sp2.sock"
wait_role "$TIERBLK_SOCKET" sp1 master
ok "sp1 is master"
for a in /dev/vda /dev/vdb sp2:/dev/vdc sp3:/dev/vdd; do tb alu claim "$a" >/dev/null; done
tb vol create m1 --size 256M --layout mirror --alu /dev/vda --alu /dev/vdb
wait_vol_state m1 online 30
dev1=$(vol_device m1)
[ "$(members_on m1)" = "0:/dev/vda 1:/dev/vdb " ] || fail "m1 legs: $(members_on m1)"
tb vol expose m1 --on sp2 >/dev/null
dev2=$(dev_on "$R/sp2.ctl" m1)
[ -n "$dev2" ] && [ -b "$dev2" ] && [ "$dev2" != "$dev1" ] || fail "m1 not exposed on sp2: '$dev2'"
# A region outside the filesystem, written once through sp2 before any copy:
# what both exposures must read at the end.
tail_and_fs "$dev2"
ok "m1: a mirror of sp1's /dev/vda and /dev/vdb, exposed on sp1 ($dev1) and sp2 ($dev2, ext4 mounted)"

# --- 1. a leg failed and re-added while sp2 writes ---------------------------
fio_load /mnt/data 32M --rate=,1m
fio1=$FIO_PID
sleep 2
tb alu fail /dev/vdb
wait_vol_state m1 degraded
# The master tells sp2: it writes vda's leg only.
sp2_until sp2_degraded "sp2 still writes the failed leg"
sp2_health | grep -q '"health":"failed"' || fail "sp2's view shows no failed leg: $(sp2_health)"
# Writes through sp2 now land on vda only, and never mark sp1's bitmap: sp1
# marked every region of it dirty instead.
grep -q "failed leg while other SPs write: every region dirty" /tmp/sp1.log ||
	fail "sp1 did not mark its bitmap whole for sp2's writes"
sleep 4
out=$(tbj alu readd /dev/vdb --rate 32M) || fail "alu readd refused: $out"
rj=$(json_num "$out" id)
[ -n "$rj" ] || fail "alu readd started no job: $out"
# sp2 writes the returning leg again while it is rebuilt.
sp2_until sp2_rebuilding "sp2's tree never got vdb's leg back as rebuilding"
ok "sp2's tree has the returning leg as rebuilding"
out=$(tbj job show "$rj" --wait) || fail "the re-add's rebuild failed: $out"
json_has "$out" state '"done"' || fail "the re-add's rebuild not done: $out"
no_wait "re-add"
kill -0 "$fio1" || fail "fio's write pass ended before the re-add's rebuild did: no load across it"
wait_vol_state m1 online
sp2_until sp2_settled "sp2 does not have both legs healthy after the re-add"
held_for "re-add's rebuild" 0
ok "vdb failed and re-added under sp2's writes: rebuild job $rj done (fenced), both legs healthy on sp1 and sp2"
h0=$h
wait_fio "$fio1" /tmp/fio-load.out "across the leg failure and the re-add"
ok "fio through sp2: write + verify with 0 errors across the failure and the re-add"
check_scrub "the re-add"
no_io_error "re-add"

# --- 2. move the leg on vda to sp3 while sp2 writes ---------------------------
fio_load /mnt/data2 64M --rate=,1m
fio2=$FIO_PID
sleep 2
out=$(tbj vol move m1 --from /dev/vda --to sp3 --rate 16M 2>/tmp/move.err) ||
	fail "vol move refused while sp2 exposes m1: $(cat /tmp/move.err)"
job=$(json_num "$out" id)
[ -n "$job" ] || fail "vol move returned no job: $out"
case "$(members_on m1)" in
*":sp3:/dev/vdd "*) ;;
*) fail "no temporary leg on sp3's ALU: $(members_on m1)" ;;
esac
ok "move accepted as job $job while sp2 exposes m1: a temporary leg on sp3:/dev/vdd"
# sp2 writes the new leg too while it is copied: its tree has it rebuilding.
sp2_until sp2_rebuilding "sp2's tree never got the new leg as rebuilding"
$TB2 vol show m1
ok "sp2's tree has the leg being copied as rebuilding"
wait_job_past "$job" $((64 << 20))
no_wait "move"
grep "job started" /tmp/sp1.log | grep -q "job=$job " || fail "the move is past $done_b bytes but never started?"
kill -0 "$fio2" || fail "fio's write pass ended before the move got going: no load across it"
ok "the move runs ($done_b bytes) while fio writes through sp2: no job waits"
out=$(tbj job show "$job" --wait) || fail "move failed: $out"
json_has "$out" state '"done"' || fail "move not done: $out"
i=0
until [ "$(members_on m1)" = "0:sp3:/dev/vdd 1:/dev/vdb " ] || [ "$(members_on m1)" = "0:/dev/vdb 1:sp3:/dev/vdd " ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "the source leg was never dropped: $(members_on m1)"
	sleep 0.2
done
json_has "$(alu_of /dev/vda)" partitions '[]' || fail "vda still holds a piece: $(alu_of /dev/vda)"
kill -0 "$fio2" || fail "fio's write pass ended before the move did: no load across it"
# The copy is over: sp2 gets the tree with the leg healthy.
sp2_until sp2_settled "sp2 still has a rebuilding leg after the move"
[ "$(dev_on "$R/sp2.ctl" m1)" = "$dev2" ] || fail "m1 is no longer $dev2 on sp2: $($TB2 --json vol show m1)"
tb vol show m1
$TB2 vol show m1
held_for move "$h0"
h0=$h
ok "move done under sp2's writes (fenced): m1 is a mirror of sp3's vdd and sp1's vdb, vda freed; sp2's legs healthy"

# --- 3. a repairing scrub under the same load ---------------------------------
out=$(tbj vol scrub m1 --repair --rate 32M --wait) || fail "repairing scrub failed: $out"
json_has "$out" state '"done"' || fail "repairing scrub not done: $out"
no_wait "repairing scrub"
kill -0 "$fio2" || fail "fio's write pass ended before the repairing scrub did: no load across it"
[ "$(json_num "$out" mismatches)" = 0 ] ||
	fail "the repairing scrub found differences the move left (or raced sp2's writes): $out"
held_for "repairing scrub" "$h0"
ok "repairing scrub done under sp2's writes (fenced): nothing to repair"
wait_fio "$fio2" /tmp/fio-load.out "across the move and the repairing scrub"
ok "fio through sp2: write + verify with 0 errors across the move and the repairing scrub"
check_scrub "the move and the repairing scrub"
no_io_error "move, repairing scrub"

# --- 4. a rebuild of a volume the master does not expose --------------------
# sp1 stops exposing m1 (sp2 alone does). The master runs m1's jobs all the
# same, on a tree it keeps without a device: a leg failed and re-added while
# sp2 writes is rebuilt without `vol expose --on sp1` (before, the job stayed
# queued until then), and a checking scrub runs there too.
tb vol unexpose m1 --on sp1 >/dev/null
json_has "$(vol_json m1)" device null || fail "m1 still has a device on sp1 after unexpose: $(vol_json m1)"
[ ! -b "$dev1" ] || fail "$dev1 still exists after unexpose on sp1"
case "$(vol_json m1)" in *'"problem":"exposed on sp sp2"'*) ;; *) fail "sp1 does not say where m1 is exposed: $(vol_json m1)" ;; esac
grep -q "its tree kept here for its jobs.*volume=m1" /tmp/sp1.log ||
	fail "sp1 kept no tree of m1 for its jobs"
ok "m1 unexposed on sp1: exposed on sp2 alone, sp1 keeps its tree for its jobs (no device)"
fio_load /mnt/data3 32M --rate=,1m
fio3=$FIO_PID
sleep 2
tb alu fail /dev/vdb
sp2_until sp2_degraded "sp2 still writes the failed leg (m1 unexposed on sp1)"
sleep 3
out=$(tbj alu readd /dev/vdb --rate 32M 2>&1) || fail "alu readd refused (m1 unexposed on sp1): $out"
rj=$(json_num "$out" id)
[ -n "$rj" ] || fail "alu readd started no job (m1 unexposed on sp1): $out"
wait_job_started /tmp/sp1.log "$rj" 150 ||
	fail "the rebuild of m1 never started while sp1 does not expose it: $(tbj job show "$rj")"
sp2_until sp2_rebuilding "sp2's tree never got vdb's leg back as rebuilding"
out=$(tbj job show "$rj" --wait) || fail "the rebuild on sp1's device-less tree failed: $out"
json_has "$out" state '"done"' || fail "the rebuild on sp1's device-less tree not done: $out"
no_wait "rebuild, m1 unexposed on sp1"
kill -0 "$fio3" || fail "fio's write pass ended before the rebuild did: no load across it"
sp2_until sp2_settled "sp2 does not have both legs healthy after the rebuild"
held_for "rebuild with m1 unexposed on sp1" "$h0"
ok "vdb failed and re-added under sp2's writes, m1 not exposed on sp1: rebuild job $rj done (fenced), both legs healthy on sp2"
wait_fio "$fio3" /tmp/fio-load.out "across the rebuild with m1 unexposed on sp1"
check_scrub "the rebuild with m1 unexposed on sp1"
# sp1 exposes m1 again, over the tree its jobs left.
tb vol expose m1 --on sp1 >/dev/null
dev1=$(vol_device m1)
[ -n "$dev1" ] && [ -b "$dev1" ] || fail "m1 not exposed on sp1 again: $(vol_json m1)"
wait_vol_state m1 online
ok "m1 exposed on sp1 again ($dev1)"
no_io_error "rebuild, m1 unexposed on sp1"

# --- the end ---------------------------------------------------------------------
fio_verify_load /mnt/data 32M "final verify"
fio_verify_load /mnt/data2 64M "final verify"
fio_verify_load /mnt/data3 32M "final verify"
ok "final verify pass of the three files through sp2: 0 errors"
umount /mnt
fsck_clean "$dev2" "e2fsck found problems"
ok "e2fsck -fn clean"
for d in "$dev1" "$dev2"; do
	[ "$(tail_sha "$d")" = "$want" ] || fail "$d reads other bytes after the filesystem than sp2 wrote before the copies"
done
ok "sp1 and sp2 read the region after the filesystem as written before the copies"
no_io_error "end"
