#!/bin/sh
# The write-intent bitmap (MD's bitmap; spec [0169]): regions are marked on
# disk before a write reaches the legs and cleared lazily once idle; after a
# kill -9 of the daemon, and when a failed leg returns (alu readd), only the
# marked regions are copied. Proof: a difference planted in a marked region is
# repaired, one planted in a clean region is left for the scrub to find (the
# copy never read it).
# vm-run: --disks 2 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 2
alus="--alu /dev/vda --alu /dev/vdb"
# shellcheck disable=SC2086
start_daemon $alus
tb alu claim /dev/vda >/dev/null
tb alu claim /dev/vdb >/dev/null
tb vol create m1 --size 256M --layout mirror
wait_vol_state m1 online
dev=$(vol_device m1)
MIB=1048576

b=$(vol_bitmap m1)
echo "$b"
json_has "$b" region_size "$MIB" || fail "expected 1 MiB regions: $b"
json_has "$b" dirty 0, || fail "a new mirror starts clean: $b"

# Fill it (both legs identical), then let the sweeper clear the bits.
dd if=/dev/urandom of="$dev" bs=1M count=256 oflag=direct status=none
# (Regions written first may already be cleared: two idle sweeps, 4 s apart.)
[ "$(json_num "$(vol_bitmap m1)" dirty)" -ge 1 ] || fail "writes did not mark the bitmap: $(vol_bitmap m1)"
wait_bitmap_clean m1
ok "256 MiB written; the sweeper cleared every region"

# Where leg 1 lives, for later.
set -- $(vol_json m1 | grep -o '{"alu":"[^}]*}' | while read -r s; do
	[ "$(json_num "$s" member)" = 1 ] && echo "$(json_str "$s" path) $(json_num "$s" start)"
done)
leg1=$1
start=$(($2 / MIB))

# Three regions written just before the crash stay marked.
dd if=/dev/urandom of="$dev" bs=1M seek=100 count=3 oflag=direct status=none
json_has "$(vol_bitmap m1)" dirty 3, || fail "expected 3 dirty regions: $(vol_bitmap m1)"
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
ok "3 regions dirty; daemon killed"

# Plant differences in leg 1 behind the daemon's back: one in a dirty region
# (a write that reached one leg only), one in a clean region.
dd if=/dev/urandom of="$leg1" bs=1M seek=$((start + 101)) count=1 oflag=direct status=none
dd if=/dev/urandom of="$leg1" bs=1M seek=$((start + 200)) count=1 oflag=direct status=none
ok "planted 1 MiB differences at 101M (dirty) and 200M (clean) on $leg1"

# shellcheck disable=SC2086
start_daemon $alus
wait_vol_state m1 online
dev=$(vol_device m1)
job=$(tbj job list | grep -o '"id":[0-9]*,"kind":"resync"' | head -n 1 | cut -d: -f2 | cut -d, -f1)
[ -n "$job" ] || fail "no resync job after the unclean stop: $(tbj job list)"
tb job show "$job" --wait
j=$(tbj job show "$job")
json_has "$j" state '"done"' || fail "resync not done: $j"
json_has "$j" repaired 3, || fail "the resync copied other than the 3 dirty regions: $j"
ok "resync copied exactly the 3 dirty regions"
wait_bitmap_clean m1

out=$(tbj vol scrub m1 --wait)
echo "$out"
json_has "$out" mismatches 256, || fail "scrub should find exactly the clean region's 256 blocks: $out"
ok "scrub finds only the clean region's difference (the dirty one was resynced)"
out=$(tbj vol scrub m1 --repair --wait)
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 0, || fail "mismatches left after repair: $out"
wait_bitmap_clean m1

# A leg's return (mdadm --re-add): while leg 1's ALU is failed the bitmap
# keeps every region written meanwhile; re-added, only those are copied.
tb alu fail "$leg1"
wait_vol_state m1 degraded
dd if=/dev/urandom of="$dev" bs=1M seek=50 count=2 oflag=direct status=none
sleep 10
json_has "$(vol_bitmap m1)" dirty 2, || fail "a failed leg must keep the bits: $(vol_bitmap m1)"
dd if=/dev/urandom of="$leg1" bs=1M seek=$((start + 150)) count=1 oflag=direct status=none
ok "leg 1 failed; 2 regions written; a difference planted in a clean region of leg 1"
out=$(tbj alu readd "$leg1" --wait)
echo "$out"
json_has "$out" state '"done"' || fail "re-add not done: $out"
json_has "$out" repaired 2, || fail "the re-add copied other than the 2 dirty regions: $out"
wait_vol_state m1 online
out=$(tbj vol scrub m1 --wait)
json_has "$out" mismatches 256, || fail "scrub should find exactly the planted clean-region difference: $out"
ok "re-add copied exactly the 2 regions written while the leg was away"
expect_fail_match 'not failed' tb alu readd "$leg1"
stop_daemon
say "mirror-crash passed"
