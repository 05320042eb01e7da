#!/bin/sh
# Benchmark: the same fio job set on the raw disk (the limit), on tierblk's
# linear, mirror and stripe volumes, and on the kernel's peer for each
# (dm-linear, md raid1, dm-striped), all in this one boot, one fio at a time.
# Prints one machine-readable line per measurement:
#   BENCH group=linear role=ours target=tierblk-linear job=randread-4k-qd1 iops=N bw_kib=N clat_us=N
# scripts/bench collects them and computes ratios. Not part of scripts/vm-test.
# Knobs: TIERBLK_BENCH_SECONDS (runtime per job, default 5),
# TIERBLK_BENCH_SIZE (region per target, default 128M).
# vm-run: --disks 4 --disk-size 1G --mem 2048
set -eu
. "$(dirname "$0")/lib.sh"

SECS="${TIERBLK_BENCH_SECONDS:-5}"
SIZE="${TIERBLK_BENCH_SIZE:-128M}"
require_disks 4

ENGINE=libaio
if fio --enghelp 2>/dev/null | grep -qw io_uring; then ENGINE=io_uring; fi

size_bytes() {
	case "$1" in
	*G) echo $((${1%G} * 1073741824)) ;;
	*M) echo $((${1%M} * 1048576)) ;;
	*K) echo $((${1%K} * 1024)) ;;
	*) echo "$1" ;;
	esac
}
BYTES=$(size_bytes "$SIZE")
SECT=$((BYTES / 512))
KIB=$((BYTES / 1024))

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1 | tr ' ' '_')
echo "BENCH-INFO kernel=$(uname -r) cpu=${cpu:-unknown} nproc=$(grep -c ^processor /proc/cpuinfo) engine=$ENGINE fio=$(fio --version) seconds=$SECS size=$SIZE"

# Layout of the disks: tierblk owns vda+vdb; the raw runs and every kernel
# peer use vdc (+vdd), each peer on its own region, one group at a time.
# Within a group each job runs on raw, ours and peer back to back.
#   raw        vdc [0, SIZE)
#   dm-linear  vdc [SIZE, 2*SIZE)
#   md raid1   vdc+vdd [2*SIZE, 3*SIZE)
#   dm-striped vdc+vdd [3*SIZE, 3.5*SIZE) each

# JOBS: name rw bs iodepth. Writes first, so the reads find written blocks.
JOBS="seqwrite-128k-qd8:write:128k:8
randwrite-4k-qd1:randwrite:4k:1
randwrite-4k-qd32:randwrite:4k:32
seqread-128k-qd8:read:128k:8
randread-4k-qd1:randread:4k:1
randread-4k-qd32:randread:4k:32"

# fill DEV NAME: write the region once (not measured) so reads hit written data.
fill() {
	_sz=$(blockdev --getsize64 "$1")
	[ "$_sz" -ge "$BYTES" ] || fail "$2: $1 has $_sz bytes < $BYTES"
	fio --name=fill --filename="$1" --rw=write --bs=1M --iodepth=8 --direct=1 \
		--ioengine="$ENGINE" --size="$SIZE" --output-format=terse --terse-version=3 \
		>/tmp/fio-fill.out 2>&1 || {
		cat /tmp/fio-fill.out
		fail "$2: fill failed"
	}
}

# run_job GROUP ROLE TARGET DEV JOBNAME RW BS QD: one measurement, one BENCH line.
run_job() {
	fio --name="$5" --filename="$4" --rw="$6" --bs="$7" --iodepth="$8" \
		--direct=1 --ioengine="$ENGINE" --size="$SIZE" --time_based --runtime="$SECS" \
		--ramp_time=1 --randrepeat=0 --norandommap --group_reporting \
		--output-format=terse --terse-version=3 >/tmp/fio-job.out 2>&1 || {
		cat /tmp/fio-job.out
		fail "$3: fio $5 failed"
	}
	_l=$(grep ';' /tmp/fio-job.out | tail -n 1)
	_err=$(echo "$_l" | cut -d';' -f5)
	[ "$_err" = 0 ] || fail "$3: fio $5 error=$_err"
	case "$6" in
	*read) _bw=$(echo "$_l" | cut -d';' -f7) _iops=$(echo "$_l" | cut -d';' -f8) _lat=$(echo "$_l" | cut -d';' -f16) ;;
	*) _bw=$(echo "$_l" | cut -d';' -f48) _iops=$(echo "$_l" | cut -d';' -f49) _lat=$(echo "$_l" | cut -d';' -f57) ;;
	esac
	echo "BENCH group=$1 role=$2 target=$3 job=$5 iops=$_iops bw_kib=$_bw clat_us=$_lat"
}

# bench_group GROUP ROLE:TARGET:DEV...: fill every target's region, then run
# each job on every target back to back (raw, ours, peer), so that a drift of
# the host's speed hits all of them alike.
bench_group() {
	_g="$1"
	shift
	say "bench $_g: $* ($ENGINE, ${SECS}s per job)"
	for _t in "$@"; do fill "${_t##*:}" "$_t"; done
	echo "$JOBS" | while IFS=: read -r _name _rw _bs _qd; do
		for _t in "$@"; do
			_role=${_t%%:*} _rest=${_t#*:}
			run_job "$_g" "$_role" "${_rest%%:*}" "${_rest#*:}" "$_name" "$_rw" "$_bs" "$_qd"
		done
	done
}

peer_unavailable() {
	echo "BENCH-PEER group=$1 peer=$2 status=unavailable reason=$3"
}

# md_raid1_create DEV1 DEV2 OFFSET_SECTORS SIZE_KIB: a raid1 without
# superblock (like `mdadm --build`) through md's sysfs interface, no mdadm
# needed; no initial resync (resync_start=none). Prints /dev/mdN.
md_raid1_create() {
	_p=/sys/module/md_mod/parameters/new_array
	[ -w "$_p" ] || return 1
	echo md127 >"$_p" 2>/dev/null || return 1
	_md=/sys/block/md127/md
	[ -d "$_md" ] || return 1
	echo none >"$_md/metadata_version" || return 1
	echo raid1 >"$_md/level" || return 1
	echo 2 >"$_md/raid_disks" || return 1
	_slot=0
	for _d in "$1" "$2"; do
		_b=$(basename "$_d")
		cat "/sys/class/block/$_b/dev" >"$_md/new_dev" || return 1
		echo "$3" >"$_md/dev-$_b/offset" || return 1
		echo "$4" >"$_md/dev-$_b/size" || return 1
		echo "$_slot" >"$_md/dev-$_b/slot" || return 1
		_slot=$((_slot + 1))
	done
	echo "$4" >"$_md/component_size" || return 1
	echo none >"$_md/resync_start" || return 1
	echo active >"$_md/array_state" || return 1
	wait_for_dev /dev/md127 5 >/dev/null || return 1
	echo /dev/md127
}
md_stop() { echo clear >/sys/block/md127/md/array_state 2>/dev/null || true; }

dm_dev() {
	dmsetup mknodes "$1" >/dev/null 2>&1 || true
	echo "/dev/mapper/$1"
}

# wait_jobs_idle: no tierblk job (initial sync, resync) running.
wait_jobs_idle() {
	_i=0
	while tbj job list | grep -q '"state":"running"'; do
		_i=$((_i + 1))
		[ "$_i" -le 600 ] || fail "tierblk jobs still running after 120s: $(tbj job list)"
		sleep 0.2
	done
}

# --- tierblk ------------------------------------------------------------------
start_daemon --alu /dev/vda --alu /dev/vdb
tb alu claim /dev/vda >/dev/null
tb alu claim /dev/vdb >/dev/null
tb vol create blin --size "$SIZE" --layout linear --alu /dev/vda >/dev/null
tb vol create bmir --size "$SIZE" --layout mirror --copies 2 >/dev/null
tb vol create bstr --size "$SIZE" --layout stripe --stripes 2 --chunk 64K >/dev/null
tb vol list
for v in blin bmir bstr; do wait_vol_state "$v" online; done
wait_jobs_idle
RAW=raw:raw-disk:/dev/vdc

# --- linear vs dm-linear ------------------------------------------------------
dmsetup create bench-linear --table "0 $SECT linear /dev/vdc $SECT"
bench_group linear "$RAW" "ours:tierblk-linear:$(vol_device blin)" "peer:dm-linear:$(dm_dev bench-linear)"
dmsetup remove bench-linear

# --- mirror (2 copies) vs md raid1 --------------------------------------------
wait_jobs_idle
if md=$(md_raid1_create /dev/vdc /dev/vdd $((2 * SECT)) "$KIB"); then
	cat /proc/mdstat
	bench_group mirror "$RAW" "ours:tierblk-mirror:$(vol_device bmir)" "peer:md-raid1:$md"
	md_stop
else
	cat /proc/mdstat 2>/dev/null || true
	md_stop
	peer_unavailable mirror md-raid1 "md_raid1_sysfs_assembly_failed"
	bench_group mirror "$RAW" "ours:tierblk-mirror:$(vol_device bmir)"
fi

# --- stripe (2 x 64K) vs dm-striped -------------------------------------------
dmsetup create bench-stripe --table "0 $SECT striped 2 128 /dev/vdc $((3 * SECT)) /dev/vdd $((3 * SECT))"
bench_group stripe "$RAW" "ours:tierblk-stripe:$(vol_device bstr)" "peer:dm-striped:$(dm_dev bench-stripe)"
dmsetup remove bench-stripe

stop_daemon
say "bench done"
