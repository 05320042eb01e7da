#!/bin/sh
# What ublk's data copy costs on this kernel, for issue 6's "ublk data-copy
# features": rublk's null target (crates.io rublk, the ublk maintainers'
# server) twice, side by side in one boot:
#   copy    per-tag buffers, as tierblk runs: the kernel copies a write's
#           data into the tag's buffer before the server sees the request,
#           and a read's data out of it when the server commits;
#   nocopy  UBLK_F_USER_COPY with a server that never reads or writes the
#           data (null -u): no copy at all.
# A null target does no I/O, so copy/nocopy is the most that removing the
# copy could gain (zero copy: UBLK_F_SUPPORT_ZERO_COPY, Linux 6.15, and
# UBLK_F_AUTO_BUF_REG, 6.16). USER_COPY itself keeps the copy for a block
# stack (the server pread()s a write's data from /dev/ublkcN, pwrite()s a
# read's), one more system call or ring operation per request.
# Not run by scripts/vm-test (needs rublk on the host: cargo install rublk);
# run it with scripts/vm-run tests/vm/bench-copy.sh. Results:
# docs/benchmarks/copy.md.
# vm-run: --disks 1 --disk-size 64M
# vm-extra: rublk
set -eu
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS="${TIERBLK_BENCH_ROUNDS:-3}"
SECS="${TIERBLK_BENCH_SECONDS:-3}"
echo "BENCH-COPY-INFO kernel=$(uname -r) rounds=$ROUNDS seconds=$SECS"
rublk features 2>&1 | sed -n 's/^[[:space:]]*/BENCH-COPY-FEATURE /p'
rublk add null -n 91 -q 2 --quiet >/tmp/rublk-copy.out 2>&1 || {
	cat /tmp/rublk-copy.out
	fail "rublk null (copy) did not start"
}
rublk add null -n 92 -q 2 -u --quiet >/tmp/rublk-nocopy.out 2>&1 || {
	cat /tmp/rublk-nocopy.out
	fail "rublk null -u (USER_COPY) did not start"
}
wait_for_dev /dev/ublkb91
wait_for_dev /dev/ublkb92

# run MODE DEV RW BS QD: one fio job, its IOPS as a BENCH-COPY line.
run() {
	_out=$(fio --name=copy --filename="$2" --rw="$3" --bs="$4" --iodepth="$5" --direct=1 \
		--ioengine=io_uring --size=1G --time_based --runtime="$SECS" --ramp_time=0.5 \
		--norandommap --output-format=terse --terse-version=3 2>&1) || {
		echo "$_out"
		fail "fio $3 $4 on $2 failed"
	}
	case $3 in *read) _f=8 ;; *) _f=49 ;; esac
	echo "BENCH-COPY mode=$1 job=$3-$4-qd$5 iops=$(echo "$_out" | grep ';' | tail -n 1 | cut -d';' -f$_f)"
}

r=1
while [ "$r" -le "$ROUNDS" ]; do
	for job in randread:4k:32 randwrite:4k:32 read:128k:8 write:128k:8 read:1m:4 write:1m:4; do
		rw=${job%%:*} rest=${job#*:}
		bs=${rest%%:*} qd=${rest#*:}
		# Alternate which goes first, so a drift of the host hits both alike.
		if [ $((r % 2)) = 1 ]; then
			run copy /dev/ublkb91 "$rw" "$bs" "$qd"
			run nocopy /dev/ublkb92 "$rw" "$bs" "$qd"
		else
			run nocopy /dev/ublkb92 "$rw" "$bs" "$qd"
			run copy /dev/ublkb91 "$rw" "$bs" "$qd"
		fi
	done
	r=$((r + 1))
done
rublk del -n 91 >/dev/null 2>&1 || true
rublk del -n 92 >/dev/null 2>&1 || true
echo "BENCH-COPY-DONE"
