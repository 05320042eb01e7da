#!/bin/sh
# Bad input and damaged metadata: foreign disks are never claimed or written,
# bad commands fail with one stderr line, a damaged label directory copy and a
# damaged boot-set copy are repaired, and an ALU with every label directory
# copy damaged leaves its volume offline without anything being overwritten.
# vm-run: --disks 3 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

# On-disk layout (docs/FORMAT.md)
LABEL_DIR_A=$((0x10000)) # 256 KiB
LABEL_DIR_B=$((0x50000)) # 256 KiB
BOOT_PTR_A=$((0x2000))
BOOT_PTR_B=$((0x3000))

require_disks 3

# --- a foreign disk is not claimed and not touched ---------------------------
mkfs.ext4 -q -F /dev/vdc
vdc_sum=$(sha_dev /dev/vdc 8)
ok "/dev/vdc has ext4, sha256(first 8 MiB)=$vdc_sum"

start_daemon --alu /dev/vda --alu /dev/vdb --alu /dev/vdc
expect_fail tb alu claim /dev/vdc
[ "$(sha_dev /dev/vdc 8)" = "$vdc_sum" ] || fail "/dev/vdc changed after a refused claim"
ok "/dev/vdc unchanged after the refused claim"

tb alu claim /dev/vda
tb alu claim /dev/vdb
ok "claimed /dev/vda and /dev/vdb"
tb vol create v1 --size 64M
wait_for_dev /dev/ublkb0
wait_vol_state v1 online

# --- bad commands ---------------------------------------------------------------
expect_fail tb vol create v2 --size 100T
expect_fail tb vol create v1 --size 10M
expect_fail tb alu claim /dev/nonexistent
expect_fail tb vol show nosuch
expect_fail tb vol create bad/name --size 10M
# none of them left a volume behind
vols=$(tbj vol list)
case "$vols" in *'"name":"v2"'* | *'"name":"bad/name"'*) fail "a refused vol create left a volume: $vols" ;; esac
ok "vol list has only v1: $vols"

# --- known data -----------------------------------------------------------------
dd if=/dev/urandom of=/tmp/data bs=1M count=16 status=none
data_sum=$(sha256sum </tmp/data | cut -d' ' -f1)
dd if=/tmp/data of=/dev/ublkb0 bs=1M oflag=direct status=none
[ "$(sha_dev /dev/ublkb0 16)" = "$data_sum" ] || fail "read-back differs right after the write"
ok "wrote 16 MiB of known data to v1 ($data_sum)"
stop_daemon

# --- damage one label directory copy and one boot-set copy: repaired ---------
dd if=/dev/urandom of=/dev/vda bs=4096 seek=$((LABEL_DIR_A / 4096)) count=1 conv=notrunc oflag=direct status=none
dd if=/dev/zero of=/dev/vdb bs=4096 seek=$((BOOT_PTR_A / 4096)) count=1 conv=notrunc oflag=direct status=none
dd if=/dev/zero of=/dev/vdb bs=4096 seek=$((BOOT_PTR_B / 4096)) count=1 conv=notrunc oflag=direct status=none
sync
ok "damaged label directory copy A on /dev/vda and both boot pointers on /dev/vdb"

start_daemon --alu /dev/vda --alu /dev/vdb --alu /dev/vdc
wait_for_dev /dev/ublkb0
wait_vol_state v1 online
[ "$(sha_dev /dev/ublkb0 16)" = "$data_sum" ] || fail "v1 data differs after repair"
ok "v1 online with the same data after repair"
grep -i repaired "$DAEMON_LOG" || fail "daemon log does not mention 'repaired'"
ok "daemon log says repaired ($(grep -ci repaired "$DAEMON_LOG") lines)"
stop_daemon

# after the repair a clean start must not need to repair anything again
start_daemon --alu /dev/vda --alu /dev/vdb --alu /dev/vdc
wait_for_dev /dev/ublkb0
wait_vol_state v1 online
if grep -i repaired "$DAEMON_LOG"; then fail "daemon repaired again on the start after a repair"; fi
ok "no repair needed on the next start"
stop_daemon

# --- damage every label directory copy on /dev/vda: offline, untouched -------
dd if=/dev/urandom of=/dev/vda bs=4096 seek=$((LABEL_DIR_A / 4096)) count=64 conv=notrunc oflag=direct status=none
dd if=/dev/urandom of=/dev/vda bs=4096 seek=$((LABEL_DIR_B / 4096)) count=64 conv=notrunc oflag=direct status=none
sync
vda_sum=$(sha_dev /dev/vda 8)
ok "damaged both label directory copies on /dev/vda, sha256(first 8 MiB)=$vda_sum"

start_daemon --alu /dev/vda --alu /dev/vdb --alu /dev/vdc
sleep 2
tbj alu list
j=$(vol_json v1)
echo "$j"
json_has "$j" state '"offline"' || fail "v1 is not offline: $j"
json_has "$j" device null || fail "offline v1 has a device: $j"
problem=$(json_str "$j" problem)
[ -n "$problem" ] && [ "$problem" != null ] || fail "v1 has no problem: $j"
printf '%s\n' "$problem" | grep -qi 'label' || fail "v1's problem does not mention the label directory: $problem"
ok "v1 offline, problem: $problem"
expect_no_dev /dev/ublkb0 3
stop_daemon
[ "$(sha_dev /dev/vda 8)" = "$vda_sum" ] || fail "/dev/vda's first 8 MiB changed although its labels were unreadable"
ok "/dev/vda's first 8 MiB unchanged"
[ "$(sha_dev /dev/vdc 8)" = "$vdc_sum" ] || fail "/dev/vdc changed"
ok "/dev/vdc still unchanged"

# --- no daemon ------------------------------------------------------------------
expect_fail_match daemon tb vol list
say "bad-input passed"
