#!/bin/sh
# A storage processor exposing a mirror dies (claim 3 of 003_...: a processor
# fails; [0168]-[0171]). Its writes in flight may have reached one leg and
# not the other, and the master's write-intent bitmap never saw them, so the
# master resyncs every mirrored volume the dead SP exposed (a repairing
# scrub, as md-cluster resyncs a failed node's dirty regions from another
# node). Two SPs: sp1 (master, vda + vdb), sp2 (vdc); a mirror m1 of sp1's
# vda and vdb exposed on sp1 and sp2. A write torn between the legs is
# planted on member 1's disk (as sp2 dying mid-write could leave it), sp2 is
# killed with SIGKILL: the master sees it gone, queues the resync and runs
# it; the legs agree afterwards. sp2 restarted gets the volume back on its
# device and reads what sp1 reads.
# vm-run: --disks 3 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 3
sp_secret
TIERBLK_SOCKET="$R/sp1.ctl"
trap 'sp_cleanup $?' EXIT

start_sp sp1 --alu /dev/vda --alu /dev/vdb --peer "sp2=unix:$R/sp2.sock"
start_sp sp2 --alu /dev/vdc --peer "sp1=unix:$R/sp1.sock"
SP2=$LAST_PID
wait_role "$TIERBLK_SOCKET" sp1 master
for a in /dev/vda /dev/vdb sp2:/dev/vdc; do tb alu claim "$a" >/dev/null; done
tb vol create m1 --size 128M --layout mirror --alu /dev/vda --alu /dev/vdb
wait_vol_state m1 online 30
tb vol expose m1 --on sp2 >/dev/null
dev1=$(vol_device m1)
dev2=$(dev_on "$R/sp2.ctl" m1)
[ -n "$dev2" ] || fail "m1 not exposed on sp2"
ok "m1 (vda + vdb on sp1) exposed on sp1 ($dev1) and sp2 ($dev2)"

dd if=/dev/urandom of="$dev2" bs=1M count=64 oflag=direct conv=fsync 2>/dev/null
sha() { dd if="$1" bs=1M count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }
[ "$(sha "$dev1")" = "$(sha "$dev2")" ] || fail "sp1 and sp2 read different bytes"
ok "64 MiB written through sp2 read the same through sp1"

# The torn write: 1 MiB at 8 MiB of the volume on member 1's disk only.
set -- $(vol_json m1 | grep -o '{"alu":"[^}]*}' | while read -r s; do
	[ "$(json_num "$s" member)" = 1 ] && echo "$(json_str "$s" path) $(json_num "$s" start)"
done)
leg1=$1
start=$(($2 / 1048576))
dd if=/dev/urandom of="$leg1" bs=1M seek=$((start + 8)) count=1 oflag=direct conv=fsync 2>/dev/null
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 0, && fail "the planted difference is not seen: $out"
ok "member 1 ($leg1) differs from member 0 in one region: $(json_num "$out" mismatches) blocks"

kill -9 "$SP2"
ok "sp2 killed with SIGKILL"
wait_event "resync-queued *m1: job [0-9]* after sp sp2 stopped answering"
tb events | grep "sp-down\|resync-queued"
job=$(tb events | sed -n 's/.*resync-queued *m1: job \([0-9]*\) after sp sp2.*/\1/p' | tail -n 1)
out=$(tbj job show "$job" --wait)
echo "$out"
json_has "$out" state '"done"' || fail "the resync after sp2's death did not finish: $out"
[ "$(json_num "$out" repaired)" -ge 1 ] || fail "the resync repaired nothing: $out"
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 0, || fail "the legs still differ after the resync: $out"
ok "the master resynced m1 after sp2's death: legs identical"

start_sp sp2 --alu /dev/vdc --peer "sp1=unix:$R/sp1.sock"
wait_role "$R/sp2.ctl" sp1 master
i=0
until [ "$(dev_on "$R/sp2.ctl" m1)" = "$dev2" ]; do
	i=$((i + 1))
	[ "$i" -le 150 ] || fail "sp2 did not get m1 back on $dev2: $(tierblk --socket "$R/sp2.ctl" vol list 2>&1)"
	sleep 0.2
done
[ "$(sha "$dev1")" = "$(sha "$dev2")" ] || fail "sp1 and sp2 read different bytes after sp2's return"
ok "sp2 restarted: m1 back on $dev2, reading what sp1 reads"
no_io_error "peer death"
say "cluster-peerdeath passed"
