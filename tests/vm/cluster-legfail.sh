#!/bin/sh
# A leg failure found by one exposing SP reconfigures every SP exposing the
# volume (spec [0168]-[0171]: "the SP decides ..., tells the coordinator,
# the system quiesces and reconfigures without the failed part"). Three SPs:
# sp1 (vda, master), sp2 (vdb), sp3 (vdc); sp2 reaches sp3 only through a
# proxy. A mirror m1 of sp2's vdb (member 0) and sp3's vdc (member 1),
# exposed on sp1, sp2 and sp3.
#
# The proxy dies: sp2 loses its path to the leg on sp3 (sp1 and sp3 still
# reach it). A write through sp2 finds the leg failed after the no-path
# timeout; sp2 reports it, the master persists it (the ALU fails
# cluster-wide) and, before answering, tells sp3, which stops using its
# local leg, though that leg still works for it. Then the write completes.
# sp3 must read what sp2 wrote: reads go round-robin over healthy legs, and
# the leg on vdc missed the write, so without the reconfiguration half of
# sp3's reads would return the old bytes.
# vm-run: --disks 3 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 3
command -v faultproxy >/dev/null || fail "faultproxy missing (built by scripts/lib/vm.sh)"
sp_secret
TIERBLK_SOCKET="$R/sp1.ctl"
TB2="tierblk --socket $R/sp2.ctl"
TB3="tierblk --socket $R/sp3.ctl"
trap 'sp_cleanup $?' EXIT

faultproxy "$R/sp3-p.sock" "$R/sp3.sock" &
PROXY=$!
start_sp sp1 --alu /dev/vda --peer "sp2=unix:$R/sp2.sock" --peer "sp3=unix:$R/sp3.sock"
start_sp sp2 --alu /dev/vdb --peer "sp1=unix:$R/sp1.sock" --peer "sp3=unix:$R/sp3-p.sock"
start_sp sp3 --alu /dev/vdc --peer "sp1=unix:$R/sp1.sock" --peer "sp2=unix:$R/sp2.sock"
wait_role "$TIERBLK_SOCKET" sp1 master
for a in /dev/vda sp2:/dev/vdb sp3:/dev/vdc; do tb alu claim "$a" >/dev/null; done
tb vol create m1 --size 128M --layout mirror --alu sp2:/dev/vdb --alu sp3:/dev/vdc
wait_vol_state m1 online 30
tb vol expose m1 --on sp2 >/dev/null
tb vol expose m1 --on sp3 >/dev/null
dev1=$(vol_device m1)
dev2=$(dev_on "$R/sp2.ctl" m1)
dev3=$(dev_on "$R/sp3.ctl" m1)
[ -n "$dev2" ] && [ -n "$dev3" ] || fail "m1 not exposed on sp2 and sp3: '$dev2' '$dev3'"
ok "m1 (sp2:vdb + sp3:vdc) exposed on sp1 ($dev1), sp2 ($dev2) and sp3 ($dev3)"

# region_sha DEV: sha256 of MiB 0-15, read with O_DIRECT in 1 MiB requests.
region_sha() { dd if="$1" bs=1M count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }
dd if=/dev/urandom of=/tmp/a bs=1M count=16 2>/dev/null
dd if=/tmp/a of="$dev2" bs=1M count=16 oflag=direct conv=fsync 2>/dev/null
a=$(sha256sum </tmp/a | cut -d' ' -f1)
[ "$(region_sha "$dev3")" = "$a" ] || fail "sp3 does not read what sp2 wrote (both legs healthy)"
ok "a write through sp2 reads back through sp3"

kill -9 "$PROXY"
ok "sp2's only path to sp3 is gone; sp1 and sp3 still reach sp3's vdc"
dd if=/dev/urandom of=/tmp/b bs=1M count=16 2>/dev/null
b=$(sha256sum </tmp/b | cut -d' ' -f1)
dd if=/tmp/b of="$dev2" bs=1M count=16 oflag=direct conv=fsync 2>/dev/null ||
	fail "the write through sp2 failed: a mirror survives a leg"
ok "the write through sp2 completed on the leg left"
j=$(vol_json m1)
json_has "$j" health '"failed"' || fail "the master did not persist the leg failure: $j"
for i in 1 2 3; do
	[ "$(region_sha "$dev3")" = "$b" ] || fail "sp3 read stale bytes from the failed leg (read $i)"
done
[ "$(region_sha "$dev1")" = "$b" ] || fail "sp1 read stale bytes from the failed leg"
ok "sp3 and sp1 read what sp2 wrote after the failure: the failed leg is out of every tree"
grep -q "leg failure reported to the master" /tmp/sp2.log || fail "sp2 did not report the failure"
grep -q "the master failed legs: no longer used here" /tmp/sp3.log ||
	fail "sp3 was not told: $(tail -n 20 /tmp/sp3.log)"
ok "the master persisted the failure and told sp3 before the write completed"
no_io_error "leg failure"
