#!/bin/sh
# Profile: where the ublk queue thread's CPU goes per request, for tierblk's
# linear volume and for the ublk reference (rublk's loop target), in one
# boot. Not part of scripts/vm-test; run it by hand:
#   TIERBLK_VM_EXTRA=perf scripts/vm-run tests/vm/profile.sh
# (needs perf and rublk on the host: apt-get install linux-perf; cargo
# install rublk). For each job and server, `perf record -e cpu-clock` (TCG
# has no PMU) samples the server's threads while fio runs, and it prints
#   PROFILE job=randread-4k-qd32 target=ours ios=N user_us=X kernel_us=Y
# (CPU time per request, from the samples: 997 Hz), the server's user
# symbols above 0.3% (PROFILE-SYM lines), and what the server's threads
# did per request besides computing:
#   PROFILE-WAIT job=... target=... enters=X switches=Y
# (io_uring_enter calls, counted by perf stat on the syscall tracepoint, and
# context switches, voluntary and not, from /proc/PID/task/*/status).
# rublk's user time is the control: it is the same code in every run, so a
# change of ours against it is ours.
# IOPS under TCG vary by tens of percent from run to run; CPU time per
# request varies much less. docs/benchmarks/profile.md has the findings.
# Knobs: TIERBLK_PROFILE_SECONDS (per job, default 10), TIERBLK_PROFILE_JOBS
# (space-separated rw:bs:iodepth, default "randread:4k:32 read:128k:8").
# vm-run: --disks 8 --disk-size 1G --mem 2048
# vm-extra: rublk perf
set -eu
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

SECS="${TIERBLK_PROFILE_SECONDS:-10}"
JOBS="${TIERBLK_PROFILE_JOBS:-randread:4k:32 read:128k:8}"
command -v perf >/dev/null || fail "no perf in the guest (TIERBLK_VM_EXTRA=perf)"
command -v rublk >/dev/null || fail "no rublk in the guest (cargo install rublk on the host)"
echo 0 >/proc/sys/kernel/kptr_restrict 2>/dev/null || true
echo -1 >/proc/sys/kernel/perf_event_paranoid
# The syscall tracepoints perf stat counts need tracefs.
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
ENTER=syscalls:sys_enter_io_uring_enter
perf stat -e "$ENTER" -x, -o /dev/null -- true 2>/dev/null || ENTER=""

# switches PID: context switches of all of PID's threads so far.
switches() {
	cat /proc/"$1"/task/*/status 2>/dev/null |
		awk '/^(non)?voluntary_ctxt_switches:/ {s += $2} END {print s + 0}'
}

start_daemon --alu /dev/vda
tb alu claim /dev/vda >/dev/null
tb vol create plin --size 128M --layout linear --alu /dev/vda >/dev/null
wait_vol_state plin online
OURS=$(vol_device plin)
rublk add loop -n 90 -f /dev/vdg -q "$(grep -c ^processor /proc/cpuinfo)" -d 128 --quiet >/tmp/rublk.out 2>&1 ||
	fail "rublk add loop: $(cat /tmp/rublk.out)"
wait_for_dev /dev/ublkb90 10 >/dev/null || fail "/dev/ublkb90 did not appear"
rpid=""
for p in /proc/[0-9]*; do
	if [ "$(cat "$p/comm" 2>/dev/null)" = rublk ]; then rpid=${p#/proc/}; fi
done
[ -n "$rpid" ] || fail "no rublk process"
# Both servers' queue threads unbound, as bench.sh runs them.
taskset -a -p -c "0-$(($(grep -c ^processor /proc/cpuinfo) - 1))" "$rpid" >/dev/null
for dev in "$OURS" /dev/ublkb90; do
	fio --name=fill --filename="$dev" --rw=write --bs=1M --iodepth=8 --direct=1 \
		--ioengine=io_uring --size=128M >/dev/null 2>&1 || fail "fill $dev"
done

for job in $JOBS; do
	rw=${job%%:*} rest=${job#*:}
	bs=${rest%%:*} qd=${rest#*:}
	name="$rw-$bs-qd$qd"
	for target in ours ref; do
		if [ "$target" = ours ]; then dev=$OURS pid=$DAEMON_PID; else dev=/dev/ublkb90 pid=$rpid; fi
		sw0=$(switches "$pid")
		if [ -n "$ENTER" ]; then
			set -- perf stat -e "$ENTER" -x, -o /tmp/stat.out -p "$pid" --
		else
			set --
		fi
		"$@" perf record -q -e cpu-clock -F 997 -p "$pid" -o /tmp/p.data -- \
			fio --name="$name" --filename="$dev" --rw="$rw" --bs="$bs" --iodepth="$qd" \
			--direct=1 --ioengine=io_uring --size=128M --time_based --runtime="$SECS" \
			--randrepeat=0 --norandommap --output-format=terse --terse-version=3 \
			>/tmp/fio.out 2>/tmp/perf.err || fail "$target: $name failed: $(cat /tmp/perf.err)"
		l=$(grep ';' /tmp/fio.out | tail -n 1)
		ios=$(($(echo "$l" | cut -d';' -f8) + $(echo "$l" | cut -d';' -f49)))
		ios=$((ios * SECS))
		[ "$ios" -gt 0 ] || fail "$target: $name did no I/O"
		sw=$(($(switches "$pid") - sw0))
		enters=NA
		if [ -n "$ENTER" ]; then
			n=$(awk -F, -v e="$ENTER" '$3 == e {print $1}' /tmp/stat.out)
			[ -z "$n" ] || enters=$(awk "BEGIN {printf \"%.2f\", $n / $ios}")
		fi
		echo "PROFILE-WAIT job=$name target=$target enters=$enters switches=$(awk "BEGIN {printf \"%.2f\", $sw / $ios}")"
		perf report -i /tmp/p.data --stdio --no-children --sort dso -F sample,dso 2>/dev/null |
			grep -v '^#' | grep -v '^$' >/tmp/dso.out
		kernel=$(awk '$2 == "[kernel.kallsyms]" {s += $1} END {print s + 0}' /tmp/dso.out)
		user=$(awk '$2 != "[kernel.kallsyms]" {s += $1} END {print s + 0}' /tmp/dso.out)
		echo "PROFILE job=$name target=$target ios=$ios user_us=$(awk "BEGIN {printf \"%.1f\", $user * 1003 / $ios}") kernel_us=$(awk "BEGIN {printf \"%.1f\", $kernel * 1003 / $ios}")"
		perf report -i /tmp/p.data --stdio --no-children --sort dso,sym --percent-limit 0.3 2>/dev/null |
			grep -v '^#' | grep -v '^$' | grep -v kallsyms | sed "s/^/PROFILE-SYM job=$name target=$target /" || true
	done
done
rublk del -n 90 >/dev/null 2>&1 || fail "rublk del -n 90"
stop_daemon
