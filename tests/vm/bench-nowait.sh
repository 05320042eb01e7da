#!/bin/sh
# Why the snapshot group's kernel peer, dm-snapshot-origin, does more 4k
# random reads at depth 32 than the raw disk under it and far fewer at
# depth 1 (docs/benchmarks/README.md, peer/raw 1.21 and 0.54): in one boot,
# fio (io_uring, direct) on
#   raw          /dev/vdc [0, SIZE)
#   dm-linear    /dev/vdc [SIZE, 2*SIZE)
#   dm-origin    dm-snapshot-origin over a dm-linear of /dev/vdc
#                [2*SIZE, 3*SIZE), one snapshot (COW on /dev/vdd), as
#                scripts/bench sets it up
#   tierblk      a tierblk linear volume with one snapshot (its origin),
#                on /dev/vda, through ublk
#   dm-linear, async   the same dm-linear, fio asking io_uring to hand every
#                read to a worker thread (force_async=1, IOSQE_ASYNC): what
#                the snapshot origin gets without asking
# and, for each run, how many io_uring worker threads (iou-wrk) fio's
# process had: io_uring issues a read inline only on a device that takes
# REQ_NOWAIT; on any other it hands the read to a worker thread. dm builds a
# device that takes REQ_NOWAIT only when every target of its table does:
# dm-linear does, snapshot-origin does not. Also prints each device's
# queue/nowait attribute where the kernel has it.
# Not run by scripts/vm-test (a measurement, not a test); run it with
# scripts/vm-run tests/vm/bench-nowait.sh. Results:
# docs/benchmarks/nowait.md.
# vm-run: --disks 4 --disk-size 1G
set -eu
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS="${TIERBLK_BENCH_ROUNDS:-3}"
SECS="${TIERBLK_BENCH_SECONDS:-3}"
SIZE_MIB=128
SECT=$((SIZE_MIB * 2048))
echo "BENCH-NOWAIT-INFO kernel=$(uname -r) rounds=$ROUNDS seconds=$SECS size=${SIZE_MIB}M"

modprobe dm-snapshot >/dev/null 2>&1 || true
dmsetup targets | grep -q '^snapshot-origin' || fail "no dm-snapshot target in the guest kernel"
dmsetup create nw-lin --noudevsync --table "0 $SECT linear /dev/vdc $SECT"
dmsetup create nw-base --noudevsync --table "0 $SECT linear /dev/vdc $((2 * SECT))"
dmsetup create nw-cow --noudevsync --table "0 $((SECT * 9 / 8)) linear /dev/vdd 0"
dmsetup mknodes
dmsetup create nw-origin --noudevsync --table "0 $SECT snapshot-origin /dev/mapper/nw-base"
dmsetup mknodes

start_daemon --alu /dev/vda
tb alu claim /dev/vda >/dev/null
tb vol create nwsnp --size "${SIZE_MIB}M" --layout linear --alu /dev/vda >/dev/null
wait_vol_state nwsnp online
ours=$(vol_device nwsnp)

# Every region written once (not measured), so reads hit written blocks; the
# origins before their snapshots are taken, as in scripts/bench.
for d in /dev/vdc /dev/mapper/nw-lin /dev/mapper/nw-base "$ours"; do
	fio --name=fill --filename="$d" --rw=write --bs=1M --iodepth=8 --direct=1 \
		--ioengine=io_uring --size="${SIZE_MIB}M" >/tmp/nw-fill.out 2>&1 || {
		cat /tmp/nw-fill.out
		fail "fill of $d failed"
	}
done
dmsetup create nw-snap --noudevsync --table "0 $SECT snapshot /dev/mapper/nw-base /dev/mapper/nw-cow P 128"
dmsetup mknodes
tb snap create nwsnp nwsnp-s1 --chunk 64K >/dev/null

for d in /dev/vdc /dev/mapper/nw-lin /dev/mapper/nw-origin "$ours"; do
	q=/sys/block/$(basename "$(readlink -f "$d")")/queue/nowait
	[ -e "$q" ] && echo "BENCH-NOWAIT-ATTR dev=$d nowait=$(cat "$q")"
done

# iou_wrk: io_uring worker threads of the running fio processes.
iou_wrk() {
	_n=0
	for _p in /proc/[0-9]*; do
		[ "$(cat "$_p/comm" 2>/dev/null)" = fio ] || continue
		for _t in "$_p"/task/*/comm; do
			case "$(cat "$_t" 2>/dev/null)" in iou-wrk*) _n=$((_n + 1)) ;; esac
		done
	done
	echo "$_n"
}

# run TARGET DEV RW BS QD [FIO-OPTION]: one fio job; its IOPS and fio's
# worker threads (counted once the job is running) as a BENCH-NOWAIT line.
run() {
	# shellcheck disable=SC2086
	fio --name=nowait --filename="$2" --rw="$3" --bs="$4" --iodepth="$5" --direct=1 \
		--ioengine=io_uring --size="${SIZE_MIB}M" --time_based --runtime="$SECS" --ramp_time=0.5 \
		--norandommap --output-format=terse --terse-version=3 ${6:-} >/tmp/nw-job.out 2>&1 &
	_pid=$!
	sleep 1.5
	_w=$(iou_wrk)
	wait "$_pid" || {
		cat /tmp/nw-job.out
		fail "fio $3 $4 on $2 failed"
	}
	case $3 in *read) _f=8 ;; *) _f=49 ;; esac
	echo "BENCH-NOWAIT target=$1 job=$3-$4-qd$5 iops=$(grep ';' /tmp/nw-job.out | tail -n 1 | cut -d';' -f$_f) iou_wrk=$_w"
}

r=1
while [ "$r" -le "$ROUNDS" ]; do
	for job in randread:4k:32 randread:4k:1; do
		rw=${job%%:*} rest=${job#*:}
		bs=${rest%%:*} qd=${rest#*:}
		run raw /dev/vdc "$rw" "$bs" "$qd"
		run dm-linear /dev/mapper/nw-lin "$rw" "$bs" "$qd"
		run dm-snapshot-origin /dev/mapper/nw-origin "$rw" "$bs" "$qd"
		run tierblk-snapshot-origin "$ours" "$rw" "$bs" "$qd"
		run dm-linear-async /dev/mapper/nw-lin "$rw" "$bs" "$qd" --force_async=1
	done
	r=$((r + 1))
done
for m in nw-snap nw-origin nw-cow nw-base nw-lin; do dmsetup remove --noudevsync "$m"; done
echo "BENCH-NOWAIT-DONE"
