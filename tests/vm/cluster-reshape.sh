#!/bin/sh
# Changing a volume across storage processors online (spec [0109]-[0116],
# claims 7-18 of 001_...; issue 5), three SPs in one VM as in cluster.sh:
# sp1 (master by rule: vda, vdb), sp2 (vdc), sp3 (vdd). A mirror m1 on sp1's
# two ALUs, ext4 mounted on sp1's /dev/ublkbN, fio write+verify running:
#
# 1. Moving a tier-1 object between SPs (claims 14-17: "move an existing
#    first tier object from a first storage processor to a second storage
#    processor", "sends a copy of the existing first tier object to the
#    second processor", "a new second tier object tree ... having a new local
#    reference to the copy"; claim 10: the tree on sp1 gets "a Remote
#    Reference Node (RRN) that references the new first tier object"):
#    `vol move m1 --from /dev/vda --to sp2` copies the leg into sp2's vdc
#    through a remote reference; sp1's tierblkd is killed with SIGKILL in the
#    middle of the copy and started again with the same arguments before its
#    peers give it up: it is master again, recovers the same /dev/ublkbN
#    (ublk user recovery: the mount stays, fio sees a pause). The leg on
#    sp2 keeps no write-intent bitmap, so the unclean stop resyncs m1 whole
#    (a repairing scrub, which also covers the new leg below the copy's
#    checkpoint) before the copy goes on; the copy resumes from its
#    checkpoint (not 0), completes, and the source piece on vda is dropped
#    and freed (claim 13: "deletes all references to the existing first
#    tier object").
# 2. A second tier-2 tree on another SP ([0109]-[0110], claims 7-8: "add a
#    new second tier object to a target storage processor maintaining a
#    first tier object ... a Local Reference Node (LRN) that references the
#    first tier object" and "a Remote Reference Node (RRN) that references
#    another first tier object maintained by a storage processor different
#    from the target"; claim 18: "the new second tier object tree to a third
#    storage processor with a remote reference to the copy"): `vol expose
#    m1 --on sp2` (LRN to its vdc, RRN to sp1's vdb) and `--on sp3` (RRNs
#    only) while fio writes through sp1: the three devices read the same
#    bytes of a region outside the filesystem.
# 3. Removing a tier-2 tree while another SP keeps serving ([0114]-[0116],
#    claims 11-12: "deletes all second tier objects in the second tier tree
#    before deleting any first tier objects that are solely referenced by
#    the removed second tier object tree", "maintains the existing first
#    tier object" still referenced by a remote second tier object): `vol
#    unexpose m1 --on sp2` and `--on sp3` under fio load on sp1: their
#    devices go, sp1 serves on with 0 errors, and the tier-1 object on sp2's
#    vdc stays allocated and referenced by sp1's tree.
# Ends with fio's verify passes at 0 errors, no I/O error in the kernel log,
# e2fsck -fn clean and a scrub of the two legs (one per SP) finding 0
# mismatches.
# vm-run: --disks 4 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 4
sp_secret
TIERBLK_SOCKET="$R/sp1.ctl"
TB2="tierblk --socket $R/sp2.ctl"
TB3="tierblk --socket $R/sp3.ctl"

SP1_PID=""
start_sp1() {
	start_sp sp1 --alu /dev/vda --alu /dev/vdb \
		--peer "sp2=unix:$R/sp2.sock" --peer "sp3=unix:$R/sp3.sock"
	SP1_PID=$LAST_PID
}
trap 'sp_cleanup $?' EXIT

wait_master() { wait_role "$TIERBLK_SOCKET" sp1 master; }

start_sp1
start_sp sp2 --alu /dev/vdc --peer "sp1=unix:$R/sp1.sock" --peer "sp3=unix:$R/sp3.sock"
start_sp sp3 --alu /dev/vdd --peer "sp1=unix:$R/sp1.sock" --peer "sp2=unix:$R/sp2.sock"
wait_master
ok "sp1 is master"
for a in /dev/vda /dev/vdb sp2:/dev/vdc sp3:/dev/vdd; do tb alu claim "$a" >/dev/null; done
tb vol create m1 --size 256M --layout mirror --alu /dev/vda --alu /dev/vdb
wait_vol_state m1 online 30
dev=$(vol_device m1)
[ "$(members_on m1)" = "0:/dev/vda 1:/dev/vdb " ] || fail "m1 legs: $(members_on m1)"
# A region outside the filesystem, never written by the host again: what
# every exposure must read the same.
tail_and_fs "$dev"
ok "m1 is a mirror of sp1's /dev/vda and /dev/vdb, ext4 mounted from $dev"

# --- 1. move the leg on vda to sp2, sp1 killed -9 mid-copy ------------------
fio_load /mnt/data 96M --rate=,1m
fio1=$FIO_PID
sleep 2
out=$(tbj vol move m1 --from /dev/vda --to sp2 --rate 16M)
job=$(json_num "$out" id)
[ -n "$job" ] || fail "vol move returned no job: $out"
case "$(members_on m1)" in
*":sp2:/dev/vdc "*) ;;
*) fail "no temporary leg on sp2's ALU: $(members_on m1)" ;;
esac
ok "move started as job $job: a temporary leg on sp2:/dev/vdc, copied through a remote reference"
# On a kernel with zero copy (TIERBLK_VM_KERNEL=6.18) m1's device was created
# with it, its legs all local then; the remote leg needs the requests' bytes,
# so from now on its queues copy them per request (user copy).
zc=0
if grep -q "ublk device [0-9]*: zero copy" /tmp/sp1.log; then
	zc=1
	wait_log /tmp/sp1.log "needs the requests' bytes: copying them (user copy)" \
		"m1's zero-copy device never fell back to copying with a remote leg"
	ok "m1's zero-copy device copies each request's data now that a leg is remote"
fi
wait_job_past "$job" $((64 << 20))
kill -KILL "$SP1_PID"
wait "$SP1_PID" 2>/dev/null || true
ok "sp1's tierblkd killed with SIGKILL at $done_b bytes into the copy"
# At once: the peers give a master up after three missed heartbeats.
start_sp1
[ -b "$dev" ] || fail "$dev disappeared with the daemon"
kill -0 "$fio1" || fail "fio ended while the daemon was dead"
wait_master
i=0
until [ "$(vol_device m1 2>/dev/null)" = "$dev" ]; do
	i=$((i + 1))
	[ "$i" -le 150 ] || fail "m1 did not come back as $dev: $(vol_json m1 2>&1)"
	sleep 0.2
done
grep -q "recovering the device a previous daemon left" /tmp/sp1.log ||
	fail "the new sp1 did not recover $dev"
# A recovered device keeps its flags: still zero copy, copying per request.
if [ "$zc" = 1 ]; then
	grep -q "ublk device [0-9]*: zero copy" /tmp/sp1.log || fail "the recovered $dev lost zero copy"
fi
for n in sp2 sp3; do
	grep -q "taking the master role" "/tmp/$n.log" && fail "$n took over while sp1 was restarting"
done
tb sp list
ok "sp1 master again (no takeover), $dev recovered by the new daemon"
# m1's leg on sp2 kept no write-intent bitmap (its copy would live in sp2's
# metadata region): the unclean stop must resync m1 whole, not by a bitmap
# that no write marked.
m1_jobs() { tbj job list | grep -o '{[^}]*}' | grep '"volume":"m1"'; }
m1_jobs | grep -q '"kind":"scrub-repair"' ||
	fail "the unclean stop did not queue a whole resync of m1: $(tb job list)"
ok "the unclean stop queued a whole repairing resync of m1 (a mirror with a leg on a peer has no bitmap)"
# The repair runs first (it also makes the new leg agree below the copy's
# checkpoint); then the move resumes from that checkpoint.
wait_job_started /tmp/sp1.log "$job" || fail "the move never resumed: $(tb job list)"
rep=$(m1_jobs | grep '"kind":"scrub-repair"')
json_has "$rep" state '"done"' || fail "the move resumed before the repair of m1 ended: $rep"
from=$(job_from /tmp/sp1.log "$job")
[ "${from:-0}" -gt 0 ] || fail "the move did not resume from its checkpoint (from=${from:-?})"
ok "after the repair, the move resumed from byte $from, not from 0"
out=$(tbj job show "$job" --wait)
json_has "$out" state '"done"' || fail "move not done: $out"
i=0
until [ "$(members_on m1)" = "0:sp2:/dev/vdc 1:/dev/vdb " ] || [ "$(members_on m1)" = "0:/dev/vdb 1:sp2:/dev/vdc " ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "the source leg was never dropped: $(members_on m1)"
	sleep 0.2
done
kill -0 "$fio1" || fail "fio's write pass ended before the move did: no load across it"
json_has "$(alu_of /dev/vda)" partitions '[]' || fail "vda still holds a piece: $(alu_of /dev/vda)"
tb vol show m1
ok "move done: m1 is a mirror of sp1's /dev/vdb and sp2's /dev/vdc (a remote reference from sp1); vda freed"
wait_fio "$fio1" /tmp/fio-load.out "across the move and sp1's kill -9"
ok "fio: write + verify with 0 errors across the move and the crash"
no_io_error "move, kill -9"
grep -q "/mnt" /proc/mounts || fail "the mount went away"
[ "$(tail_sha "$dev")" = "$want" ] || fail "the region outside the filesystem changed across the move"
# The resync the unclean stop queued ends before anything else is exposed.
i=0
while m1_jobs | grep -q '"state":"running"'; do
	i=$((i + 1))
	[ "$i" -le 600 ] || fail "m1's jobs never ended: $(tb job list)"
	sleep 0.2
done
m1_jobs | grep '"kind":"scrub-repair"' | grep -q '"state":"done"' || fail "m1's resync did not end done: $(tb job list)"
tb job list
ok "m1 resynced whole after the unclean stop"

# --- 2. expose on sp2 (LRN + RRN) and sp3 (RRNs), under load on sp1 ----------
fio_load /mnt/data2 48M --rate=,1m
fio2=$FIO_PID
sleep 1
tb vol expose m1 --on sp2 >/dev/null
tb vol expose m1 --on sp3 >/dev/null
dev2=$(dev_on "$R/sp2.ctl" m1)
dev3=$(dev_on "$R/sp3.ctl" m1)
if [ -z "$dev2" ] || [ -z "$dev3" ] || [ "$dev2" = "$dev" ] || [ "$dev3" = "$dev" ] || [ "$dev2" = "$dev3" ]; then
	fail "m1 not exposed on sp2 and sp3: sp2 '$dev2', sp3 '$dev3'"
fi
$TB2 vol list
$TB3 vol list
j=$(vol_json m1)
for s in sp1 sp2 sp3; do
	case "$j" in *"\"exposed_on\":["*"\"$s\""*"]"*) ;; *) fail "$s not in m1's exposure map: $j" ;; esac
done
ok "m1 exposed by sp1 ($dev), sp2 ($dev2) and sp3 ($dev3)"
for d in "$dev" "$dev2" "$dev3"; do
	[ "$(tail_sha "$d")" = "$want" ] || fail "$d reads other bytes than written"
done
# The head of the filesystem (superblock, group 0's bitmaps and inode table)
# changes while fio lays out data2 through sp1: freeze it so the three reads
# see one image, flushed to both legs, then let fio go on.
fsfreeze --freeze /mnt
a=$(sha_dev "$dev" 8)
b=$(sha_dev "$dev2" 8)
c=$(sha_dev "$dev3" 8)
fsfreeze --unfreeze /mnt
[ "$a" = "$b" ] && [ "$a" = "$c" ] || fail "the frozen filesystem's first 8 MiB differ: sp1 $a, sp2 $b, sp3 $c"
kill -0 "$fio2" || fail "fio ended before the exposures were read"
ok "the three exposures read the same 16 MiB written before the move, and the same frozen 8 MiB head of the filesystem, while fio writes through sp1"

# --- 3. unexpose sp2 and sp3 while sp1 keeps serving ---------------------------
before=$(members_on m1)
tb vol unexpose m1 --on sp2 >/dev/null
[ -e "$dev2" ] && fail "$dev2 still exists after unexpose"
tb vol unexpose m1 --on sp3 >/dev/null
[ -e "$dev3" ] && fail "$dev3 still exists after unexpose"
kill -0 "$fio2" || fail "fio's write pass ended before the unexposes: no load across them"
for n in "$TB2" "$TB3"; do
	$n --json vol list | grep -q '"name":"m1"' && fail "m1 still listed by ${n##* }"
done
[ "$(members_on m1)" = "$before" ] || fail "m1's tree changed: $before -> $(members_on m1)"
c=$(alu_of sp2:/dev/vdc)
case "$c" in *'"partitions":[{'*'"volume":"m1"'*) ;; *) fail "the tier-1 object on sp2:/dev/vdc is gone: $c" ;; esac
j=$(vol_json m1)
json_has "$j" state '"online"' || fail "m1 is not online and whole on sp1: $j"
ok "sp2's and sp3's trees removed; m1 still online on sp1 with its tier-1 object on sp2:/dev/vdc"
wait_fio "$fio2" /tmp/fio-load.out "while exposed on and withdrawn from sp2 and sp3"
ok "fio: write + verify with 0 errors across expose and unexpose"
no_io_error "expose, unexpose"

# --- the end: verify everything, e2fsck, scrub the two legs -------------------
fio_verify_load /mnt/data 96M "final verify"
fio_verify_load /mnt/data2 48M "final verify"
ok "final verify pass of both files: 0 errors"
umount /mnt
fsck_clean "$dev" "e2fsck found problems"
ok "e2fsck -fn clean"
out=$(tbj vol scrub m1 --wait)
json_has "$out" state '"done"' || fail "scrub not done: $out"
[ "$(json_num "$out" mismatches)" = 0 ] || fail "the legs on sp1 and sp2 differ: $out"
ok "scrub: the legs on sp1's vdb and sp2's vdc are identical"
no_io_error "end"
