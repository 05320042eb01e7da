#!/bin/sh
# Where a volume's ublk queue threads may run. libublk binds each queue
# thread to the CPUs the kernel maps to its hardware queue; tierblkd lets
# them run on any CPU it may (so a queue thread need not share one CPU with
# the application submitting to it), unless started with --pin-queues.
# Checked on a fresh device, with --pin-queues, and on a device recovered
# after kill -9 (the recovery path starts the queues again); data written
# before the kill reads back.
# Also the tags' I/O buffers and transparent huge pages: by default they
# follow the host's policy (not advised MADV_NOHUGEPAGE); the daemon that
# recovers the device runs with --no-huge-buffers, and then every buffer of
# both queues is (docs/ADMIN.md, *ublk I/O buffers and huge pages*).
# vm-run: --disks 1 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

[ "$(grep -c ^processor /proc/cpuinfo)" -ge 2 ] || fail "needs at least 2 vCPUs"

# queue_cpus VOL: one line per thread of the volume's device ("ublk-VOL"):
# its allowed CPUs.
queue_cpus() {
	for _t in /proc/"$DAEMON_PID"/task/*; do
		[ "$(cat "$_t/comm" 2>/dev/null)" = "ublk-$1" ] || continue
		sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "$_t/status"
	done
}
# nohuge_kib: KiB of the daemon's mappings advised MADV_NOHUGEPAGE (the
# "nh" flag of /proc/PID/smaps). The kernel marks thread stacks so too
# (MAP_STACK; about 14 MiB here), far less than the buffers (BUF_KIB).
nohuge_kib() {
	awk '/^Size:/ { s = $2 } /^VmFlags:/ && / nh( |$)/ { t += s } END { print t + 0 }' /proc/"$DAEMON_PID"/smaps
}
# expect_unpinned VOL WHAT: every thread of the volume may run on every CPU
# the daemon may.
expect_unpinned() {
	all_cpus=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/"$DAEMON_PID"/status)
	_l=$(queue_cpus "$1")
	[ "$(echo "$_l" | wc -l)" -ge 3 ] || fail "$2: expected a device thread and 2 queue threads, got: $_l"
	echo "$_l" | grep -qvx "$all_cpus" && fail "$2: a ublk thread is bound: $(echo "$_l" | tr '\n' ' ') (daemon: $all_cpus)"
	ok "$2: every ublk thread of $1 may run on CPUs $all_cpus ($(echo "$_l" | wc -l) threads)"
}

start_daemon --alu /dev/vda --queues 2
tb alu claim /dev/vda >/dev/null
tb vol create qa --size 64M >/dev/null
wait_vol_state qa online
dev=$(vol_device qa)
expect_unpinned qa "default"
# The buffers of 2 queues x 128 tags x 512 KiB.
BUF_KIB=$((2 * 128 * 512))
nh=$(nohuge_kib)
[ "$nh" -lt $((BUF_KIB / 2)) ] || fail "default: $nh KiB of the daemon advised MADV_NOHUGEPAGE: the I/O buffers ($BUF_KIB KiB) are"
ok "default: the I/O buffers follow the host's huge page policy ($nh KiB advised MADV_NOHUGEPAGE, the buffers are $BUF_KIB KiB)"

stop_daemon
start_daemon --alu /dev/vda --queues 2 --pin-queues
wait_vol_state qa online
l=$(queue_cpus qa)
# The device thread keeps the daemon's CPUs; each queue thread is bound to
# its own single CPU.
single=$(echo "$l" | grep -cx '[0-9]*' || true)
[ "$single" -eq 2 ] || fail "--pin-queues: expected 2 queue threads on one CPU each, got: $(echo "$l" | tr '\n' ' ')"
[ "$(echo "$l" | grep -x '[0-9]*' | sort -u | wc -l)" -eq 2 ] ||
	fail "--pin-queues: both queue threads on the same CPU: $(echo "$l" | tr '\n' ' ')"
ok "--pin-queues: queue threads bound to CPUs $(echo "$l" | grep -x '[0-9]*' | tr '\n' ' ')"

# Write under the pinned daemon, kill it, recover without --pin-queues and
# with --no-huge-buffers.
dd if=/dev/urandom of=/tmp/qa.bin bs=1M count=8 status=none
dd if=/tmp/qa.bin of="$dev" bs=1M oflag=direct status=none
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
start_daemon --alu /dev/vda --queues 2 --no-huge-buffers
wait_vol_state qa online
[ "$(vol_device qa)" = "$dev" ] || fail "recovered volume is $(vol_device qa), not $dev"
grep -q "recovering the device" "$DAEMON_LOG" || fail "the device was not recovered (no 'recovering the device' in the log)"
expect_unpinned qa "after recovery"
[ "$(sha_dev "$dev" 8)" = "$(sha256sum </tmp/qa.bin | cut -d' ' -f1)" ] ||
	fail "data written before the kill does not read back"
ok "data written before the kill reads back after recovery"
nh=$(nohuge_kib)
[ "$nh" -ge "$BUF_KIB" ] ||
	fail "--no-huge-buffers: $nh KiB advised MADV_NOHUGEPAGE, expected at least the buffers' $BUF_KIB KiB"
ok "--no-huge-buffers: $nh KiB advised MADV_NOHUGEPAGE (the buffers are $BUF_KIB KiB)"
stop_daemon
