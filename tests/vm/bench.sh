#!/bin/sh
# Benchmark: the same fio job set on the raw disk (the limit), on tierblk's
# linear, mirror, stripe, raid10 and snapshot-origin volumes, and on the
# kernel's peer for each (dm-linear, md raid1, dm-striped, md raid10,
# dm-snapshot-origin), and for linear also on the ublk reference server
# (rublk's loop target, when the host has rublk), all in this one boot, one
# fio at a time; then
# tierblkd's resident memory with 10 online volumes: idle, after I/O, and
# idle again after a restart of tierblkd.
# Prints one machine-readable line per measurement:
#   BENCH group=linear role=ours target=tierblk-linear job=randread-4k-qd1 iops=N bw_kib=N clat_us=N
#   BENCH-MEM phase=idle volumes=10 rss_kib=N ...
# scripts/bench collects them and computes ratios. Not part of scripts/vm-test.
# Knobs: TIERBLK_BENCH_SECONDS (runtime per job, default 5),
# TIERBLK_BENCH_ROUNDS (cut each job into N slices run in alternating
# target order, default 1),
# TIERBLK_BENCH_SIZE (region per target, default 128M; at most 160M with
# these 1G disks), TIERBLK_BENCH_GROUPS (space-separated subset of
# "linear mirror stripe raid10 snapshot memory", default all),
# TIERBLK_BENCH_JOBS (comma-separated subset of the job names, default all),
# TIERBLK_BENCH_UBLK_REF=0 (no rublk reference even if the guest has it).
# With TIERBLK_LOG=info,tierblk::ublk=debug the memory phases also count the
# request servers the ublk queues started (BENCH-MEM-SERVERS).
# vm-run: --disks 8 --disk-size 1G --mem 2048
# vm-extra: rublk?
set -eu
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

SECS="${TIERBLK_BENCH_SECONDS:-5}"
ROUNDS="${TIERBLK_BENCH_ROUNDS:-1}"
SIZE="${TIERBLK_BENCH_SIZE:-128M}"
BENCH_GROUPS="${TIERBLK_BENCH_GROUPS:-linear mirror stripe raid10 snapshot memory}"
ONLY_JOBS="${TIERBLK_BENCH_JOBS:-}"
require_disks 8

# One slice: SECS/ROUNDS (in ms) after a ramp of 1 s, or 200 ms when cut.
if [ "$ROUNDS" -gt 1 ]; then
	RUNTIME="$((SECS * 1000 / ROUNDS))ms" RAMP=200ms
else
	RUNTIME="$SECS" RAMP=1
fi

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
echo "BENCH-INFO kernel=$(uname -r) cpu=${cpu:-unknown} nproc=$(grep -c ^processor /proc/cpuinfo) engine=$ENGINE fio=$(fio --version) seconds=$SECS rounds=$ROUNDS size=$SIZE"

# Layout of the disks: tierblk owns vda, vdb, vde, vdf (raid10 needs four
# ALUs: every member on its own); the raw runs and every kernel peer use
# vdc, vdd, vdg, vdh, each peer on its own region, one group at a time.
# Within a group each job runs on raw, ours and peer back to back.
#   raw           vdc [0, SIZE)
#   dm-linear     vdc [SIZE, 2*SIZE)
#   md raid1      vdc+vdd [2*SIZE, 3*SIZE)
#   dm-striped    vdc+vdd [3*SIZE, 3.5*SIZE) each
#   md raid10     vdc+vdd+vdg+vdh [4*SIZE, 4.5*SIZE) each (2 stripes x 2 copies)
#   dm-snapshot   origin vdc [5*SIZE, 6*SIZE), COW store vdd [5*SIZE, 6.125*SIZE)

# JOBS: name rw bs iodepth. Writes first, so the reads find written blocks.
JOBS="seqwrite-128k-qd8:write:128k:8
seqwrite-1m-qd4:write:1m:4
randwrite-4k-qd1:randwrite:4k:1
randwrite-4k-qd32:randwrite:4k:32
seqread-128k-qd8:read:128k:8
seqread-1m-qd4:read:1m:4
randread-4k-qd1:randread:4k:1
randread-4k-qd32:randread:4k:32"

# Only the jobs asked for (TIERBLK_BENCH_JOBS), in the order above.
if [ -n "$ONLY_JOBS" ]; then
	for _j in $(echo "$ONLY_JOBS" | tr ',' ' '); do
		echo "$JOBS" | grep -q "^$_j:" || fail "TIERBLK_BENCH_JOBS: unknown job $_j"
	done
	JOBS=$(echo "$JOBS" | while IFS=: read -r _name _rest; do
		case ",$ONLY_JOBS," in *",$_name,"*) echo "$_name:$_rest" ;; esac
	done)
fi
want() { case " $BENCH_GROUPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# Devices already written (not to be filled again by bench_group: a
# snapshot origin is written before its snapshot is taken).
PREFILLED=""

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
		--direct=1 --ioengine="$ENGINE" --size="$SIZE" --time_based --runtime="$RUNTIME" \
		--ramp_time="$RAMP" --randrepeat=0 --norandommap --group_reporting \
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
# the host's speed hits all of them alike. With ROUNDS > 1 each job's time is
# cut into ROUNDS slices run in alternating order (raw ours peer, peer ours
# raw, ...), one BENCH line per slice (scripts/bench takes the median of the
# slices' ratios).
bench_group() {
	_g="$1"
	shift
	say "bench $_g: $* ($ENGINE, ${SECS}s per job)"
	for _t in "$@"; do
		case " $PREFILLED " in *" ${_t##*:} "*) ;; *) fill "${_t##*:}" "$_t" ;; esac
	done
	_fwd="$*"
	_rev=""
	for _t in "$@"; do _rev="$_t $_rev"; done
	echo "$JOBS" | while IFS=: read -r _name _rw _bs _qd; do
		_r=0
		while [ "$_r" -lt "$ROUNDS" ]; do
			if [ $((_r % 2)) = 0 ]; then _order=$_fwd; else _order=$_rev; fi
			for _t in $_order; do
				_role=${_t%%:*} _rest=${_t#*:}
				run_job "$_g" "$_role" "${_rest%%:*}" "${_rest#*:}" "$_name" "$_rw" "$_bs" "$_qd"
			done
			_r=$((_r + 1))
		done
	done
}

peer_unavailable() {
	echo "BENCH-PEER group=$1 peer=$2 status=unavailable reason=$3"
}

# md_create NAME LEVEL LAYOUT CHUNK_KIB OFFSET_SECTORS COMPONENT_KIB DEV...: an md
# array without superblock (like `mdadm --build`) through md's sysfs
# interface, no mdadm needed; no initial resync (resync_start=none). Every
# DEV is used from OFFSET_SECTORS for COMPONENT_KIB. LAYOUT and CHUNK_KIB
# are "-" for raid1. Prints /dev/NAME.
md_create() {
	_mdn=$1 _lvl=$2 _lay=$3 _chunk=$4 _off=$5 _csz=$6
	shift 6
	_p=/sys/module/md_mod/parameters/new_array
	[ -w "$_p" ] || return 1
	echo "$_mdn" >"$_p" 2>/dev/null || return 1
	_md=/sys/block/$_mdn/md
	[ -d "$_md" ] || return 1
	echo none >"$_md/metadata_version" || return 1
	echo "$_lvl" >"$_md/level" || return 1
	if [ "$_chunk" != - ]; then echo $((_chunk * 1024)) >"$_md/chunk_size" || return 1; fi
	if [ "$_lay" != - ]; then echo "$_lay" >"$_md/layout" || return 1; fi
	echo $# >"$_md/raid_disks" || return 1
	_slot=0
	for _d in "$@"; do
		_b=$(basename "$_d")
		cat "/sys/class/block/$_b/dev" >"$_md/new_dev" || return 1
		echo "$_off" >"$_md/dev-$_b/offset" || return 1
		echo "$_csz" >"$_md/dev-$_b/size" || return 1
		echo "$_slot" >"$_md/dev-$_b/slot" || return 1
		_slot=$((_slot + 1))
	done
	echo "$_csz" >"$_md/component_size" || return 1
	echo none >"$_md/resync_start" || return 1
	echo active >"$_md/array_state" || return 1
	wait_for_dev "/dev/$_mdn" 5 >/dev/null || return 1
	echo "/dev/$_mdn"
}
md_stop() { echo clear >"/sys/block/$1/md/array_state" 2>/dev/null || true; }

# md_create_bitmap NAME LEVEL "MDADM_OPTIONS" OFFSET_SECTORS COMPONENT_KIB
# DEV...: an md array with a version 1.2 superblock and an internal
# write-intent bitmap of 1 MiB chunks (as tierblk's mirrors keep:
# docs/ADMIN.md), made by mdadm (TIERBLK_VM_EXTRA=mdadm) over dm-linear
# windows of each DEV from OFFSET_SECTORS (so that the superblock and bitmap
# stay out of the raw disk's region); no initial resync (--assume-clean).
# Prints /dev/NAME.
md_create_bitmap() {
	_mdn=$1 _lvl=$2 _opts=$3 _off=$4 _csz=$5
	shift 5
	command -v mdadm >/dev/null || return 1
	_comps=""
	for _d in "$@"; do
		_b=bench-mdc-$(basename "$_d")
		# The component, the 8 MiB data offset and 1 MiB to spare.
		dmsetup create "$_b" --noudevsync --table "0 $(((_csz + 9216) * 2)) linear $_d $_off" || return 1
		_comps="$_comps $(dm_dev "$_b")"
	done
	# shellcheck disable=SC2086
	MDADM_NO_UDEV=1 mdadm --create "/dev/$_mdn" --run --quiet --level="$_lvl" $_opts --raid-devices=$# \
		--metadata=1.2 --data-offset=8M --size="$_csz" --assume-clean \
		--bitmap=internal --bitmap-chunk=1M $_comps >&2 || return 1
	wait_for_dev "/dev/$_mdn" 5 >/dev/null || return 1
	echo "/dev/$_mdn"
}
md_stop_bitmap() {
	MDADM_NO_UDEV=1 mdadm --stop "/dev/$1" >/dev/null 2>&1 || true
	for _b in $(dmsetup ls 2>/dev/null | awk '/^bench-mdc-/ {print $1}'); do
		dmsetup remove --noudevsync "$_b" 2>/dev/null || true
	done
}

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
# TIERBLK_BENCH_THP=never|madvise|always (diagnosis only): the guest's
# transparent huge page mode, set before tierblkd starts.
if [ -n "${TIERBLK_BENCH_THP:-}" ]; then
	echo "$TIERBLK_BENCH_THP" >/sys/kernel/mm/transparent_hugepage/enabled
fi
# TIERBLK_BENCH_MALLOC_MMAP_THRESHOLD (diagnosis only): a fixed glibc mmap
# threshold for tierblkd, so that every 512 KiB I/O buffer is a mapping of
# its own in /proc/PID/smaps and the memory report can tell them apart.
if [ -n "${TIERBLK_BENCH_MALLOC_MMAP_THRESHOLD:-}" ]; then
	export MALLOC_MMAP_THRESHOLD_="$TIERBLK_BENCH_MALLOC_MMAP_THRESHOLD"
fi
# TIERBLK_BENCH_DAEMON_ARGS (diagnosis only): more tierblkd options, e.g.
# --no-huge-buffers to measure the I/O buffers in 4 KiB pages.
# shellcheck disable=SC2086
start_daemon --alu /dev/vda --alu /dev/vdb --alu /dev/vde --alu /dev/vdf ${TIERBLK_BENCH_DAEMON_ARGS:-}
unset MALLOC_MMAP_THRESHOLD_
for d in /dev/vda /dev/vdb /dev/vde /dev/vdf; do tb alu claim "$d" >/dev/null; done
RAW=raw:raw-disk:/dev/vdc

# --- linear vs dm-linear ------------------------------------------------------
if want linear; then
	tb vol create blin --size "$SIZE" --layout linear --alu /dev/vda >/dev/null
	wait_vol_state blin online
	dmsetup create bench-linear --table "0 $SECT linear /dev/vdc $SECT"
	# The ublk reference: the loop target of rublk (the ublk maintainers'
	# server, built on the same libublk) over its own disk, vdg [0, SIZE),
	# with as many queues as ours and the same depth and buffer size. libublk
	# binds its queue threads to their hardware queue's CPUs; tierblkd undoes
	# that (docs/ADMIN.md, *ublk queues and CPUs*), and so does this test for
	# rublk (taskset -a), so that ours/ref compares request paths, not
	# placement. What ref/peer leaves below 1 is ublk's round trip through a
	# server process, which no server avoids.
	# TIERBLK_BENCH_REF_ARGS (diagnosis only): more `rublk add loop` options,
	# e.g. -z (zero copy by UBLK_F_AUTO_BUF_REG, Linux 6.16 on: boot a newer
	# kernel with TIERBLK_VM_KERNEL, docs/benchmarks/copy.md).
	REF=""
	if [ "${TIERBLK_BENCH_UBLK_REF:-1}" = 0 ]; then
		:
	elif command -v rublk >/dev/null 2>&1; then
		# shellcheck disable=SC2086
		if rublk add loop -n 90 -f /dev/vdg -q "$(grep -c ^processor /proc/cpuinfo)" -d 128 --quiet \
			${TIERBLK_BENCH_REF_ARGS:-} >/tmp/rublk.out 2>&1; then
			wait_for_dev /dev/ublkb90 10 >/dev/null
			REF="ref:rublk-loop:/dev/ublkb90"
			ncpu=$(grep -c ^processor /proc/cpuinfo)
			rpid=""
			for p in /proc/[0-9]*; do
				if [ "$(cat "$p/comm" 2>/dev/null)" = rublk ]; then
					rpid=${p##*/}
					break
				fi
			done
			[ -n "$rpid" ] || fail "rublk add loop succeeded but no rublk process runs"
			taskset -a -p -c "0-$((ncpu - 1))" "$rpid" >/dev/null || fail "taskset: cannot unbind rublk's threads"
			for t in /proc/"$rpid"/task/*; do
				case "$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "$t/status")" in
				"0-$((ncpu - 1))") ;;
				*) fail "rublk thread ${t##*/} is still bound: $(grep Cpus_allowed_list "$t/status")" ;;
				esac
			done
			echo "BENCH-REF group=linear peer=rublk-loop queues=unbound threads=$(ls /proc/"$rpid"/task | wc -l) args=${TIERBLK_BENCH_REF_ARGS:-none}"
		else
			echo "BENCH-PEER group=linear role=ref peer=rublk-loop status=unavailable reason=rublk_add_loop_failed"
			sed 's/^/rublk: /' /tmp/rublk.out
		fi
	else
		echo "BENCH-PEER group=linear role=ref peer=rublk-loop status=unavailable reason=no_rublk_on_the_host"
	fi
	bench_group linear "$RAW" "ours:tierblk-linear:$(vol_device blin)" "peer:dm-linear:$(dm_dev bench-linear)" $REF
	dmsetup remove bench-linear
	if [ -n "$REF" ]; then rublk del -n 90 >/dev/null 2>&1 || fail "rublk del -n 90 failed"; fi
fi

# --- mirror (2 copies) vs md raid1 --------------------------------------------
if want mirror; then
	tb vol create bmir --size "$SIZE" --layout mirror --copies 2 >/dev/null
	wait_vol_state bmir online
	wait_jobs_idle
	# TIERBLK_BENCH_MD_BITMAP=1 (diagnosis only; needs
	# TIERBLK_VM_EXTRA=mdadm): the peer keeps a write-intent bitmap as our
	# mirror does (md-raid1-bitmap), instead of the array without a
	# superblock. The same for raid10.
	if [ "${TIERBLK_BENCH_MD_BITMAP:-0}" = 1 ]; then
		md=$(md_create_bitmap md125 1 "" $((2 * SECT)) "$KIB" /dev/vdc /dev/vdd) ||
			fail "md raid1 with a bitmap: mdadm --create failed (TIERBLK_VM_EXTRA=mdadm?)"
		cat /proc/mdstat
		bench_group mirror "$RAW" "ours:tierblk-mirror:$(vol_device bmir)" "peer:md-raid1-bitmap:$md"
		md_stop_bitmap md125
	elif md=$(md_create md127 raid1 - - $((2 * SECT)) "$KIB" /dev/vdc /dev/vdd); then
		cat /proc/mdstat
		bench_group mirror "$RAW" "ours:tierblk-mirror:$(vol_device bmir)" "peer:md-raid1:$md"
		md_stop md127
	else
		cat /proc/mdstat 2>/dev/null || true
		md_stop md127
		peer_unavailable mirror md-raid1 "md_raid1_sysfs_assembly_failed"
		bench_group mirror "$RAW" "ours:tierblk-mirror:$(vol_device bmir)"
	fi
fi

# --- stripe (2 x 64K) vs dm-striped -------------------------------------------
if want stripe; then
	tb vol create bstr --size "$SIZE" --layout stripe --stripes 2 --chunk 64K >/dev/null
	wait_vol_state bstr online
	dmsetup create bench-stripe --table "0 $SECT striped 2 128 /dev/vdc $((3 * SECT)) /dev/vdd $((3 * SECT))"
	bench_group stripe "$RAW" "ours:tierblk-stripe:$(vol_device bstr)" "peer:dm-striped:$(dm_dev bench-stripe)"
	dmsetup remove bench-stripe
fi

# --- raid10 (2 stripes x 2 copies, 64K) vs md raid10 (near 2, 64K) ------------
# md's layout 0x102 = near copies 2, far 1: chunk k on devices 2k%4 and
# 2k%4+1, i.e. a stripe over the mirrors (vdc,vdd) and (vdg,vdh), as ours.
if want raid10; then
	tb vol create br10 --size "$SIZE" --layout raid10 --stripes 2 --copies 2 --chunk 64K >/dev/null
	wait_vol_state br10 online
	wait_jobs_idle
	# TIERBLK_BENCH_MD_BITMAP=1: as for the mirror group (md raid10 near 2,
	# 64K chunks, with a bitmap).
	if [ "${TIERBLK_BENCH_MD_BITMAP:-0}" = 1 ]; then
		md=$(md_create_bitmap md124 10 "--layout=n2 --chunk=64" $((4 * SECT)) $((KIB / 2)) \
			/dev/vdc /dev/vdd /dev/vdg /dev/vdh) ||
			fail "md raid10 with a bitmap: mdadm --create failed (TIERBLK_VM_EXTRA=mdadm?)"
		cat /proc/mdstat
		bench_group raid10 "$RAW" "ours:tierblk-raid10:$(vol_device br10)" "peer:md-raid10-bitmap:$md"
		md_stop_bitmap md124
	elif md=$(md_create md126 raid10 258 64 $((4 * SECT)) $((KIB / 2)) /dev/vdc /dev/vdd /dev/vdg /dev/vdh); then
		cat /proc/mdstat
		bench_group raid10 "$RAW" "ours:tierblk-raid10:$(vol_device br10)" "peer:md-raid10:$md"
		md_stop md126
	else
		cat /proc/mdstat 2>/dev/null || true
		md_stop md126
		peer_unavailable raid10 md-raid10 "md_raid10_sysfs_assembly_failed"
		bench_group raid10 "$RAW" "ours:tierblk-raid10:$(vol_device br10)"
	fi
fi

# --- snapshot origin (one snapshot, 64K chunks) vs dm-snapshot-origin ---------
# Each origin is written whole first, then snapshotted: a write to a chunk
# not yet copied copies it to the COW store first (the first pass of each
# write job over the region; later writes to a copied chunk do not copy).
if want snapshot; then
	tb vol create bsnp --size "$SIZE" --layout linear --alu /dev/vda >/dev/null
	wait_vol_state bsnp online
	ours_snp=$(vol_device bsnp)
	fill "$ours_snp" tierblk-snapshot-origin
	tb snap create bsnp bsnp-s1 --chunk 64K >/dev/null
	tbj snap list bsnp
	PREFILLED="$ours_snp"
	targets="$RAW ours:tierblk-snapshot-origin:$ours_snp"
	modprobe dm-snapshot >/dev/null 2>&1 || true
	if dmsetup targets | grep -q '^snapshot-origin'; then
		dmsetup create bench-base --table "0 $SECT linear /dev/vdc $((5 * SECT))"
		fill "$(dm_dev bench-base)" dm-snapshot-base
		dmsetup create bench-cow --table "0 $((SECT * 9 / 8)) linear /dev/vdd $((5 * SECT))"
		dmsetup create bench-snap --table "0 $SECT snapshot $(dm_dev bench-base) $(dm_dev bench-cow) P 128"
		dmsetup create bench-origin --table "0 $SECT snapshot-origin $(dm_dev bench-base)"
		peer_snp=$(dm_dev bench-origin)
		PREFILLED="$PREFILLED $peer_snp"
		# shellcheck disable=SC2086
		bench_group snapshot $targets "peer:dm-snapshot-origin:$peer_snp"
		dmsetup status bench-snap || true
		dmsetup remove bench-origin
		dmsetup remove bench-snap
		dmsetup remove bench-cow
		dmsetup remove bench-base
	else
		peer_unavailable snapshot dm-snapshot-origin "no_dm-snapshot_target_in_the_guest_kernel"
		# shellcheck disable=SC2086
		bench_group snapshot $targets
	fi
	tbj snap list bsnp
	PREFILLED=""
fi

# --- memory: tierblkd's resident set with 10 online volumes -------------------
# mem_line PHASE: one BENCH-MEM line from /proc/PID/status and smaps_rollup.
mem_line() {
	_st=/proc/$DAEMON_PID/status
	_n=$(tbj vol list | grep -o '"state":"online"' | wc -l)
	_kv() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "$2" | head -n 1; }
	_thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)
	# The resident part of the ublk queues' tag I/O buffers (`tierblk stats`,
	# summed over the volumes): the target counts them apart.
	_iob=$(tbj stats | grep -o '"buffer_resident":[0-9]*' | cut -d: -f2 |
		awk '{s += $1} END {if (NR) print int(s / 1024)}')
	echo "BENCH-MEM phase=$1 volumes=$_n rss_kib=$(_kv VmRSS "$_st") hwm_kib=$(_kv VmHWM "$_st")" \
		"anon_kib=$(_kv RssAnon "$_st") file_kib=$(_kv RssFile "$_st") vsz_kib=$(_kv VmSize "$_st")" \
		"thp_kib=$(_kv AnonHugePages "/proc/$DAEMON_PID/smaps_rollup") thp=${_thp:-unknown}" \
		"iobuf_kib=${_iob:-unknown}" \
		"threads=$(sed -n 's/^Threads:[[:space:]]*//p' "$_st") queues=$QUEUES depth=$DEPTH"
	# Request servers the queues started (each holds one request future),
	# when tierblkd logs them: TIERBLK_LOG=info,tierblk::ublk=debug.
	_srv=$(grep -c 'request server started' "$DAEMON_LOG" 2>/dev/null || true)
	if [ "${_srv:-0}" -gt 0 ]; then
		echo "BENCH-MEM-SERVERS phase=$1 servers=$_srv queues=$QUEUES"
	fi
}
# mem_maps PHASE: the largest mappings by resident size, and a summary of
# the anonymous mappings by size (how many of each size, resident total).
mem_maps() {
	awk -v ph="$1" '/^[0-9a-f]+-[0-9a-f]+ /{name=($6 == "" ? "[anon]" : $6); split($1, r, "-"); next}
		/^Size:/{size=$2} /^Rss:/{if ($2 > 0) print $2, size, name}' "/proc/$DAEMON_PID/smaps" >/tmp/maps.txt
	sort -rn /tmp/maps.txt | head -n 10 | while read -r _r _sz _n; do
		echo "BENCH-MEM-MAP phase=$1 rss_kib=$_r size_kib=$_sz name=$_n"
	done
	awk '$3 == "[anon]" || $3 == "[heap]" {n[$3" "$2]++; rss[$3" "$2] += $1}
		END {for (k in n) print rss[k], n[k], k}' /tmp/maps.txt | sort -rn | head -n 8 |
		while read -r _r _cnt _n _sz; do
			echo "BENCH-MEM-KIND phase=$1 rss_kib=$_r maps=$_cnt size_kib=$_sz name=$_n"
		done
}
if want memory; then
	# Fill up to 10 online volumes (besides any snapshot) with small linear ones.
	_have=$(tbj vol list | grep -o '"layout":"[a-z0-9]*"' | grep -vc snapshot || true)
	# (not _i: the helpers of lib.sh use it)
	_mvn=0
	while [ "$_have" -lt 10 ]; do
		_mvn=$((_mvn + 1))
		tb vol create "bm$_mvn" --size 32M >/dev/null
		wait_vol_state "bm$_mvn" online
		_have=$((_have + 1))
	done
	wait_jobs_idle
	tb vol list
	QUEUES=0
	for _q in /sys/block/ublkb*/mq/*; do [ -e "$_q" ] && QUEUES=$((QUEUES + 1)); done
	DEPTH=$(cat /sys/block/ublkb0/queue/nr_requests 2>/dev/null || echo "?")
	sleep 2
	mem_line idle
	mem_maps idle
	# I/O on every volume: 4k random writes then reads at QD32 and 128k
	# sequential at QD8, 2 s each, all volumes at once.
	# Every writable volume (not the read-only snapshot).
	_devs=""
	for _d in $(tbj vol list | grep -o '"device":"/dev/ublkb[0-9]*"' | cut -d'"' -f4 | sort -u); do
		[ "$(blockdev --getro "$_d")" = 1 ] || _devs="$_devs${_devs:+:}$_d"
	done
	for _spec in randwrite:4k:32 randread:4k:32 write:128k:8 read:128k:8; do
		fio --name=mem --filename="$_devs" --rw="${_spec%%:*}" --bs="$(echo "$_spec" | cut -d: -f2)" \
			--iodepth="${_spec##*:}" --numjobs=1 --direct=1 --ioengine="$ENGINE" --size=16M \
			--time_based --runtime=2 --output-format=terse >/dev/null 2>&1 || fail "memory: fio $_spec failed"
	done
	for _d in $(echo "$_devs" | tr ':' ' '); do
		fio --name=mem1 --filename="$_d" --rw=randrw --bs=128k --iodepth=32 --direct=1 --ioengine="$ENGINE" \
			--size=16M --time_based --runtime=1 --output-format=terse >/dev/null 2>&1 || fail "memory: fio on $_d failed"
	done
	mem_line after-io
	mem_maps after-io
	grep -E '^(Rss|Pss|Anonymous|AnonHugePages|Private_Dirty|Shared_Clean|Private_Clean):' "/proc/$DAEMON_PID/smaps_rollup" || true
	# A fresh daemon with the same volumes: what it holds before any I/O.
	_online=$(tbj vol list | grep -o '"state":"online"' | wc -l)
	stop_daemon
	# shellcheck disable=SC2086
	start_daemon --alu /dev/vda --alu /dev/vdb --alu /dev/vde --alu /dev/vdf ${TIERBLK_BENCH_DAEMON_ARGS:-}
	_w=0
	while [ "$(tbj vol list | grep -o '"state":"online"' | wc -l)" -lt "$_online" ]; do
		_w=$((_w + 1))
		[ "$_w" -le 300 ] || fail "memory: volumes not back online after a restart: $(tb vol list)"
		sleep 0.2
	done
	sleep 2
	mem_line fresh-idle
	mem_maps fresh-idle
fi

stop_daemon
say "bench done"
