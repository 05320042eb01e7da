#!/bin/sh
# Changing a volume's shape online (spec VI, [0109]-[0115]; claims 7-18 of
# 001_...), all under an ext4 mount with fio write+verify running:
# - move the linear volume's only piece to another ALU (pvmove): a temporary
#   mirror leg copied with checkpoints; tierblkd is killed with SIGKILL in
#   the middle of the copy and the copy resumes from its checkpoint;
# - add a mirror leg (linear -> mirror), rebuilt online; remove the first
#   leg (mirror -> linear);
# - release the ALU everything was moved off; the one in use is refused;
# - grow the volume, a mirror again, by concatenation: the second leg copies
#   its new part from the first (a rebuild job from the old end), which a
#   scrub proves (Linux 6.12 cannot resize a live ublk device: the device
#   grows when the volume comes online again).
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
tb vol create l1 --size 256M --alu /dev/vda
wait_vol_state l1 online
dev=$(vol_device l1)
mkfs.ext4 -q -F "$dev"
mkdir -p /mnt
mount "$dev" /mnt
fio_load /mnt/data 96M --rate=,2m
fio_pid=$FIO_PID
sleep 2

# --- move, killed mid-copy ---------------------------------------------------
out=$(tbj vol move l1 --to /dev/vdb --rate 16M)
job=$(json_num "$out" id)
[ -n "$job" ] || fail "vol move returned no job: $out"
json_has "$(vol_json l1)" layout '"mirror"' || fail "l1 is not a temporary mirror during the move"
ok "move started as job $job (temporary mirror leg on /dev/vdb)"
wait_job_past "$job" $((64 << 20))
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
ok "tierblkd killed with SIGKILL at $done_b bytes into the copy"
sleep 1
kill -0 "$fio_pid" || fail "fio ended while the daemon was dead"
# shellcheck disable=SC2086
start_daemon $alus
[ "$(vol_device l1)" = "$dev" ] || fail "l1 came back as $(vol_device l1), not $dev"
# The crash resync runs first (it also copies the dirty regions onto the new
# leg below the copy's checkpoint); then the move resumes from that checkpoint.
wait_job_started "$DAEMON_LOG" "$job" 600 || fail "the move never resumed: $(tb job list)"
rs=$(tbj job list | grep -o '{[^}]*}' | grep '"volume":"l1"' | grep '"kind":"resync"')
json_has "$rs" state '"done"' || fail "the move resumed before the crash resync of l1 ended: $rs"
from=$(job_from "$DAEMON_LOG" "$job")
[ "${from:-0}" -gt 0 ] || fail "the move did not resume from its checkpoint (from=${from:-?})"
ok "after the crash resync, the move resumed from byte $from, not from 0"
out=$(tbj job show "$job" --wait)
json_has "$out" state '"done"' || fail "move not done: $out"
i=0
while json_has "$(vol_json l1)" layout '"mirror"'; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "the source member was never dropped: $(vol_json l1)"
	sleep 0.2
done
json_has "$(vol_json l1)" layout '"linear"' || fail "l1 not linear after the move: $(vol_json l1)"
[ "$(members_on l1)" = "0:/dev/vdb " ] || fail "l1 is not on /dev/vdb alone: $(members_on l1)"
ok "move done: l1 is linear on /dev/vdb"

# --- add a leg, remove the first ---------------------------------------------
out=$(tbj vol add-leg l1 /dev/vdc --wait)
json_has "$out" state '"done"' || fail "add-leg rebuild not done: $out"
json_has "$(vol_json l1)" layout '"mirror"' || fail "l1 not a mirror after add-leg"
[ "$(members_on l1)" = "0:/dev/vdb 1:/dev/vdc " ] || fail "legs: $(members_on l1)"
ok "add-leg: l1 is a mirror of /dev/vdb and /dev/vdc, rebuilt online"
expect_fail tb vol remove-leg l1 --member 7
tb vol remove-leg l1 --alu /dev/vdb >/dev/null
json_has "$(vol_json l1)" layout '"linear"' || fail "l1 not linear after remove-leg"
[ "$(members_on l1)" = "0:/dev/vdc " ] || fail "after remove-leg: $(members_on l1)"
ok "remove-leg: l1 is linear on /dev/vdc"

# --- an ALU emptied by the moves can go; the one in use cannot ----------------
tb alu release /dev/vda >/dev/null
tb alu release /dev/vdb >/dev/null
expect_fail tb alu release /dev/vdc
ok "the ALUs moved off were released; /dev/vdc (in use) was refused"

# --- grow a mirror by concatenation --------------------------------------------
# l1 becomes a mirror of /dev/vdc and /dev/vdd again. The extend takes new
# pieces where a scratch volume left random bytes on /dev/vdd (and zeros on
# /dev/vdc): unless the second leg copies its new part from the first, the
# legs differ there and the scrub at the end finds it.
wait_fio "$fio_pid" /tmp/fio-load.out "across move, kill -9, add-leg and remove-leg"
ok "fio: write + verify with 0 errors across move, kill -9, add-leg and remove-leg"
out=$(tbj vol add-leg l1 /dev/vdd --wait)
json_has "$out" state '"done"' || fail "add-leg rebuild not done: $out"
tb vol create junk --size 64M --alu /dev/vdd >/dev/null
wait_vol_state junk online
dd if=/dev/urandom of="$(vol_device junk)" bs=1M count=64 oflag=direct 2>/dev/null
tb vol offline junk >/dev/null
tb vol remove junk >/dev/null
fio_load /mnt/data 96M --rate=,2m
fio_pid=$FIO_PID
sleep 2
expect_fail tb vol extend l1 --by 64M --alu /dev/vdd --alu /dev/vdd
out=$(tb vol extend l1 --by 64M --alu /dev/vdc --alu /dev/vdd)
echo "$out"
json_has "$(vol_json l1)" size 335544320 || fail "l1 not 320 MiB in its definition: $(vol_json l1)"
case "$out" in
*"grew online"*) grew=1 ;;
*"UBLK_CMD_UPDATE_SIZE"*) grew=0 ;;
*) fail "extend said neither: $out" ;;
esac
job=$(echo "$out" | sed -n 's/.*copies the new part of its other legs: job \([0-9]*\).*/\1/p')
[ -n "$job" ] || fail "extend of a mirror started no copy: $out"
out=$(tbj job show "$job" --wait)
json_has "$out" state '"done"' || fail "the copy of the new part is not done: $out"
from=$(job_from "$DAEMON_LOG" "$job")
[ "$from" = 268435456 ] || fail "the copy started at ${from:-?}, not at the old end (256 MiB)"
[ "$(members_on l1)" = "0:/dev/vdc 1:/dev/vdd " ] || fail "legs: $(members_on l1)"
ok "extend: l1 is a 320 MiB mirror; leg 1 copied its new part from byte 256 MiB (job $job)"
kill -0 "$fio_pid" || fail "fio's write pass ended before the extend's copy: no load across it"

wait_fio "$fio_pid" /tmp/fio-load.out "across the extend of a mirror and its copy"
ok "fio: write + verify with 0 errors across the extend and its copy"
dmesg | grep -i "I/O error, dev ublkb" && fail "the kernel saw I/O errors on $dev"
ok "no I/O error reached the block layer"
umount /mnt
fsck_clean "$dev" "e2fsck found problems"
ok "e2fsck -fn clean"
if [ "$grew" = 0 ]; then
	tb vol offline l1 >/dev/null
	tb vol online l1 >/dev/null
	wait_vol_state l1 online
	dev=$(vol_device l1)
fi
[ "$(blockdev --getsize64 "$dev")" = 335544320 ] || fail "$dev is $(blockdev --getsize64 "$dev") bytes, not 320 MiB"
# resize2fs refuses an unmounted filesystem whose last check is older than
# its last mount ("Please run e2fsck -f first"); the read-only check above
# records nothing, and mkfs and mount fall in different seconds at random.
e2fsck -fp "$dev" >/dev/null 2>&1 || fail "e2fsck -fp before resize2fs failed"
out=$(resize2fs "$dev" 2>&1) || fail "resize2fs failed: $out"
fsck_clean "$dev" "e2fsck found problems after resize2fs"
ok "$dev is 320 MiB; ext4 grown into it, e2fsck -fn clean"
out=$(tbj vol scrub l1 --wait)
json_has "$out" state '"done"' || fail "scrub not done: $out"
[ "$(json_num "$out" mismatches)" = 0 ] || fail "the legs differ after the extend: $out"
ok "scrub: the two legs are identical, the new part included"
stop_daemon
