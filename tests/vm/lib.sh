# shellcheck shell=sh
# Helpers for tierblk VM scenarios. Sourced by tests/vm/*.sh, which run as
# `sh -e /scenario.sh` (busybox ash) inside the guest booted by scripts/vm-run.
# In the guest this file is /lib.sh; scenarios source "$(dirname "$0")/lib.sh".
#
# Guest facts: disks are /dev/vda, /dev/vdb, ... (virtio, serial tierblkN);
# the root fs is the initramfs; /tmp is a tmpfs; no udev (devtmpfs makes the
# nodes, /dev/ublkbN included).

TIERBLK_SOCKET="${TIERBLK_SOCKET:-/run/tierblk/control.sock}"
DAEMON_LOG=/tmp/tierblkd.log
DAEMON_PID=""
_daemon_starts=0

say() { echo "== $*"; }
ok() { echo "ok: $*"; }

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# dump_stuck: where the guest's processes wait, for a scenario that failed
# on a stall. The head of /proc/meminfo; each user process but tierblkd
# (fio, dd, the scenario's shells) with its state, wait channel and kernel
# stack; each tierblkd thread's name, state and wait channel. Printed before
# anything is killed, so it shows the stall itself.
dump_stuck() {
	echo "---- memory ----"
	head -n 5 /proc/meminfo
	echo "---- processes (state, wait channel, kernel stack) ----"
	for _t in /proc/[0-9]*; do
		_a=$(tr '\0' ' ' <"$_t/cmdline" 2>/dev/null | cut -c1-80)
		[ -n "$_a" ] || continue # a kernel thread, or gone
		_c=$(cat "$_t/comm" 2>/dev/null) || continue
		if [ "$_c" = tierblkd ]; then
			echo "## $(basename "$_t") tierblkd: $_a"
			for _k in "$_t"/task/*; do
				echo "   $(basename "$_k") $(cat "$_k/comm" 2>/dev/null) $(awk '{print $3}' "$_k/stat" 2>/dev/null) $(cat "$_k/wchan" 2>/dev/null)"
			done
			continue
		fi
		echo "## $(basename "$_t") $_c $(awk '{print $3}' "$_t/stat" 2>/dev/null) $(cat "$_t/wchan" 2>/dev/null): $_a"
		sed -n '1,8s/^/   /p' "$_t/stack" 2>/dev/null
	done
	return 0
}

_lib_on_exit() {
	_rc=$?
	if [ "$_rc" -ne 0 ]; then
		echo "---- scenario failed (rc=$_rc) ----"
		if [ -f "$DAEMON_LOG" ]; then
			echo "---- last lines of $DAEMON_LOG ----"
			tail -n 60 "$DAEMON_LOG"
		fi
		dump_stuck
		echo "---- last kernel messages ----"
		dmesg | tail -n 30
		# Unmount while the daemon still serves: a filesystem left mounted on
		# a device whose daemon is gone holds the poweroff until the VM's
		# wall-clock limit.
		killall -9 fio 2>/dev/null || true
		for _m in $(awk '$1 ~ /ublkb/ {print $2}' /proc/mounts); do
			timeout 30 umount "$_m" 2>/dev/null || true
		done
	fi
	if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		kill "$DAEMON_PID" 2>/dev/null || true
	fi
	exit "$_rc"
}
trap _lib_on_exit EXIT

# tierblk CLI with the test socket.
tb() { tierblk --socket "$TIERBLK_SOCKET" "$@"; }
tbj() { tierblk --socket "$TIERBLK_SOCKET" --json "$@"; }

# vm_disks: the guest's virtio disks, one per line.
vm_disks() {
	for _d in /dev/vd[a-z]; do
		[ -b "$_d" ] && echo "$_d"
	done
	return 0
}

# require_disks N
require_disks() {
	_n=$(vm_disks | wc -l)
	[ "$_n" -ge "$1" ] || fail "need $1 virtio disks, have $_n"
}

# start_daemon [ARGS...]: start tierblkd in the background. Without --alu
# arguments every virtio disk is passed as --alu. Waits (max 20 s) until
# `tierblk alu list` answers. The previous log is kept as tierblkd.N.log.
start_daemon() {
	if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		fail "start_daemon: daemon already running (pid $DAEMON_PID)"
	fi
	_has_alu=0
	for _a in "$@"; do
		[ "$_a" = --alu ] && _has_alu=1
	done
	_alus=""
	if [ "$_has_alu" = 0 ]; then
		for _d in $(vm_disks); do _alus="$_alus --alu $_d"; done
	fi
	mkdir -p "$(dirname "$TIERBLK_SOCKET")"
	if [ -f "$DAEMON_LOG" ]; then
		mv "$DAEMON_LOG" "/tmp/tierblkd.$_daemon_starts.log"
	fi
	_daemon_starts=$((_daemon_starts + 1))
	# shellcheck disable=SC2086
	echo "start: tierblkd${_alus} $* --socket $TIERBLK_SOCKET"
	# shellcheck disable=SC2086
	tierblkd $_alus "$@" --socket "$TIERBLK_SOCKET" >"$DAEMON_LOG" 2>&1 &
	DAEMON_PID=$!
	_i=0
	while :; do
		if tb alu list >/dev/null 2>&1; then
			ok "daemon up (pid $DAEMON_PID, after ~$((_i / 5))s)"
			return 0
		fi
		if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
			wait "$DAEMON_PID" 2>/dev/null && _drc=0 || _drc=$?
			DAEMON_PID=""
			fail "tierblkd exited during startup (rc=$_drc)"
		fi
		_i=$((_i + 1))
		[ "$_i" -le 100 ] || fail "tierblkd did not answer 'tierblk alu list' within 20s"
		sleep 0.2
	done
}

# stop_daemon: SIGTERM, wait for exit (max 20 s), fail otherwise.
stop_daemon() {
	[ -n "$DAEMON_PID" ] || fail "stop_daemon: no daemon started"
	kill -TERM "$DAEMON_PID" 2>/dev/null || fail "stop_daemon: daemon (pid $DAEMON_PID) is not running"
	_i=0
	while kill -0 "$DAEMON_PID" 2>/dev/null; do
		_i=$((_i + 1))
		if [ "$_i" -gt 100 ]; then
			kill -KILL "$DAEMON_PID" 2>/dev/null || true
			DAEMON_PID=""
			fail "tierblkd did not exit within 20s of SIGTERM"
		fi
		sleep 0.2
	done
	wait "$DAEMON_PID" 2>/dev/null && _drc=0 || _drc=$?
	DAEMON_PID=""
	ok "daemon stopped (rc=$_drc)"
}

# expect_fail CMD...: CMD must exit non-zero and print exactly one line on
# stderr.
expect_fail() {
	if "$@" >/tmp/expect_fail.out 2>/tmp/expect_fail.err; then
		cat /tmp/expect_fail.out /tmp/expect_fail.err
		fail "expected failure, but it succeeded: $*"
	else
		_rc=$?
	fi
	_lines=$(wc -l </tmp/expect_fail.err)
	# A last line without a newline counts too.
	if [ -s /tmp/expect_fail.err ] && [ "$(tail -c 1 /tmp/expect_fail.err | od -An -c | tr -d ' ')" != '\n' ]; then
		_lines=$((_lines + 1))
	fi
	if [ "$_lines" -ne 1 ]; then
		echo "stderr was:"
		cat /tmp/expect_fail.err
		fail "expected exactly one line on stderr, got $_lines: $*"
	fi
	ok "fails (rc=$_rc): $* -> $(cat /tmp/expect_fail.err)"
}

# expect_fail_match PATTERN CMD...: as expect_fail, and the stderr line must
# match the (grep -i -E) PATTERN.
expect_fail_match() {
	_pat="$1"
	shift
	expect_fail "$@"
	grep -qiE "$_pat" /tmp/expect_fail.err || fail "stderr does not match /$_pat/: $(cat /tmp/expect_fail.err)"
}

# wait_for_dev DEV [SECONDS=20]: wait until DEV is a block device.
wait_for_dev() {
	_t=$((${2:-20} * 5))
	_i=0
	while [ ! -b "$1" ]; do
		_i=$((_i + 1))
		[ "$_i" -le "$_t" ] || fail "$1 did not appear within ${2:-20}s"
		sleep 0.2
	done
	ok "$1 is there"
}

# expect_no_dev DEV [SECONDS=3]: DEV must not appear within SECONDS.
expect_no_dev() {
	_t=$((${2:-3} * 5))
	_i=0
	while [ "$_i" -lt "$_t" ]; do
		[ ! -e "$1" ] || fail "$1 exists but must not"
		_i=$((_i + 1))
		sleep 0.2
	done
	ok "$1 did not appear"
}

# sha_dev DEV MiB: sha256 of the first MiB MiB of DEV (O_DIRECT read).
sha_dev() {
	dd if="$1" bs=1M count="$2" iflag=direct status=none | sha256sum | cut -d' ' -f1
}

# json_str JSON KEY: the string value of "KEY" in compact JSON (first match),
# or "null".
json_str() {
	_v=$(printf '%s\n' "$1" | sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p" | head -n 1)
	if [ -n "$_v" ]; then
		echo "$_v"
	elif printf '%s\n' "$1" | grep -q "\"$2\":null"; then
		echo null
	fi
}

# json_has JSON KEY VALUE: JSON contains "KEY":VALUE (VALUE verbatim JSON,
# e.g. '"online"', null, 123) somewhere.
json_has() {
	case "$1" in *"\"$2\":$3"*) return 0 ;; esac
	return 1
}

# json_num JSON KEY: the number value of "KEY" (first match).
json_num() {
	printf '%s\n' "$1" | sed -n "s/.*\"$2\":\\([0-9][0-9]*\\).*/\\1/p" | head -n 1
}

# vol_json NAME: `tierblk --json vol show NAME`.
vol_json() { tbj vol show "$1"; }

# wait_vol_state NAME STATE [SECONDS=20]
wait_vol_state() {
	_t=$((${3:-20} * 5))
	_i=0
	while :; do
		_j=$(vol_json "$1" 2>/dev/null || true)
		case "$_j" in *"\"state\":\"$2\""*) break ;; esac
		_i=$((_i + 1))
		[ "$_i" -le "$_t" ] || fail "volume $1 not $2 within ${3:-20}s: $_j"
		sleep 0.2
	done
	ok "volume $1 is $2"
}

# vol_bitmap NAME: the "bitmap" object of `vol show NAME` (mirrors).
vol_bitmap() { vol_json "$1" | grep -o '"bitmap":{[^}]*}'; }

# wait_bitmap_clean NAME: until the sweeper cleared every region (30 s).
wait_bitmap_clean() {
	_i=0
	while ! vol_bitmap "$1" | grep -q '"dirty":0,'; do
		_i=$((_i + 1))
		[ "$_i" -le 150 ] || fail "bitmap of $1 never became clean: $(vol_bitmap "$1")"
		sleep 0.2
	done
}

# wait_job_past JOB BYTES: wait (up to 60 s) until job JOB has done at least
# BYTES; its progress then in done_b.
wait_job_past() {
	_i=0
	while :; do
		done_b=$(json_num "$(tbj job show "$1")" done)
		[ "${done_b:-0}" -ge "$2" ] && return 0
		_i=$((_i + 1))
		[ "$_i" -le 600 ] || fail "job $1 never got past $2 bytes: $(tbj job show "$1")"
		sleep 0.1
	done
}

# wait_fio PID OUT WHAT: the fio run PID (terse v3 output in OUT) must exit
# 0 and report error 0; WHAT says across what, for the failure message.
wait_fio() {
	wait "$1" || {
		cat "$2"
		fail "fio failed $3"
	}
	_e=$(grep ';' "$2" | tail -n 1 | cut -d';' -f5)
	[ "$_e" = 0 ] || {
		cat "$2"
		fail "fio saw error=$_e $3"
	}
}

# wait_event REGEX [TRIES]: wait, 0.2 s apart (TRIES times, 150 by
# default), until a line of `tierblk events` (TIME KIND VOLUME: DETAIL)
# matches REGEX (grep); fails with the latest events if none does.
wait_event() {
	_i=0
	until tb events | grep -q "$1"; do
		_i=$((_i + 1))
		[ "$_i" -le "${2:-150}" ] || fail "no event matching '$1': $(tb events | tail -n 20)"
		sleep 0.2
	done
}

# wait_log FILE PATTERN WHAT: wait, 0.2 s apart (20 s at most), until a
# line of FILE (a daemon's log) matches PATTERN (grep); else fail "WHAT".
wait_log() {
	_i=0
	until grep -q "$2" "$1"; do
		_i=$((_i + 1))
		[ "$_i" -le 100 ] || fail "$3"
		sleep 0.2
	done
}

# fsck_clean DEV WHAT: e2fsck -fn DEV must find nothing; else its output and
# fail "WHAT".
fsck_clean() {
	e2fsck -fn "$1" >/tmp/fsck.out 2>&1 || {
		cat /tmp/fsck.out
		fail "$2"
	}
}

# vol_device NAME: the volume's device path (or "null").
vol_device() { json_str "$(vol_json "$1")" device; }

# fio_engine: io_uring when this fio has it, else libaio.
fio_engine() {
	if fio --enghelp 2>/dev/null | grep -qw io_uring; then echo io_uring; else echo libaio; fi
}

# fio_load FILE SIZE [EXTRA FIO ARGS...]: random 4k direct writes with
# crc32c verify headers, then their verify, in the background: the pid in
# FIO_PID, the terse output in /tmp/fio-load.out (check with wait_fio).
fio_load() {
	_f="$1"
	_s="$2"
	shift 2
	fio --name=load --filename="$_f" --rw=randwrite --bs=4k --direct=1 --ioengine="$(fio_engine)" \
		--iodepth=16 --size="$_s" --verify=crc32c --verify_fatal=1 --randrepeat=1 --do_verify=1 \
		--output-format=terse --terse-version=3 "$@" >/tmp/fio-load.out 2>&1 &
	FIO_PID=$!
}

# members_on NAME: "member:path" of every segment of volume NAME.
members_on() {
	vol_json "$1" | grep -o '{"alu":"[^}]*}' | while read -r s; do
		echo "$(json_num "$s" member):$(json_str "$s" path)"
	done | sort -u | tr '\n' ' '
}
# alu_of PATH: the `alu list` JSON object of that ALU (up to its partitions).
alu_of() { tbj alu list | sed 's/},{"boot_member"/}\n{"boot_member"/g' | grep "\"path\":\"$1\""; }

# tail_and_fs DEV: 16 random MiB at MiB 240-255 of DEV, outside the
# filesystem (their sha256 in want: what every exposure must read at the
# end, `tail_sha`), then ext4 on the first 240 MiB, mounted at /mnt.
tail_and_fs() {
	dd if=/dev/urandom of=/tmp/tail bs=1M count=16 2>/dev/null
	dd if=/tmp/tail of="$1" bs=1M seek=240 count=16 oflag=direct conv=fsync 2>/dev/null
	want=$(sha256sum </tmp/tail | cut -d' ' -f1)
	mkfs.ext4 -q -F "$1" 240M
	mkdir -p /mnt
	mount "$1" /mnt
}
# tail_sha DEV: sha256 of the 16 MiB after the filesystem (MiB 240-255).
tail_sha() { dd if="$1" bs=1M skip=240 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }

# wait_job_started LOG JOB [TRIES]: wait, 0.2 s apart (TRIES times, 900
# by default), until the daemon log LOG says job JOB started; 1 if it never
# does (the caller fails, with what it knows).
wait_job_started() {
	_i=0
	until grep "job started" "$1" | grep -q "job=$2 "; do
		_i=$((_i + 1))
		[ "$_i" -le "${3:-900}" ] || return 1
		sleep 0.2
	done
}

# job_from LOG JOB: where job JOB's first start in LOG began (its from=).
job_from() { grep "job started" "$1" | grep "job=$2 " | sed -n 's/.*from=\([0-9]*\).*/\1/p' | head -n 1; }

# fio_verify_load FILE SIZE WHAT: read back what fio_load FILE SIZE wrote
# (a verify-only pass of the same job); fails, naming WHAT, unless fio
# reports error 0.
fio_verify_load() {
	fio --name=load --filename="$1" --rw=randwrite --bs=4k --direct=1 --ioengine="$(fio_engine)" \
		--iodepth=16 --size="$2" --verify=crc32c --verify_fatal=1 --randrepeat=1 --verify_only \
		--output-format=terse --terse-version=3 >/tmp/fio-end.out 2>&1 || {
		cat /tmp/fio-end.out
		fail "$3: verify of $1 failed"
	}
	_e=$(grep ';' /tmp/fio-end.out | tail -n 1 | cut -d';' -f5)
	[ "$_e" = 0 ] || fail "$3: verify of $1: error=$_e"
}

# fio_write_verify DEV SIZE [EXTRA FIO ARGS...]: random 4k direct writes with
# crc32c verify headers, then a separate verify-only pass that re-reads and
# checks every block. Fails unless both passes report error 0 and the verify
# pass read the whole SIZE.
fio_write_verify() {
	_dev="$1"
	_size="$2"
	shift 2
	_engine=$(fio_engine)
	set -- --filename="$_dev" --rw=randwrite --bs=4k --direct=1 --ioengine="$_engine" \
		--iodepth=16 --size="$_size" --verify=crc32c --verify_fatal=1 --randrepeat=1 \
		--output-format=terse --terse-version=3 "$@"
	echo "fio: write pass on $_dev ($_size, $_engine)"
	fio --name=w --do_verify=0 "$@" >/tmp/fio-write.out 2>&1 || {
		cat /tmp/fio-write.out
		fail "fio write pass failed"
	}
	_err=$(grep ';' /tmp/fio-write.out | tail -n 1 | cut -d';' -f5)
	_wkb=$(grep ';' /tmp/fio-write.out | tail -n 1 | cut -d';' -f47)
	[ "$_err" = 0 ] || fail "fio write pass error=$_err"
	ok "fio wrote ${_wkb} KiB to $_dev"
	echo "fio: verify pass on $_dev"
	fio --name=w --verify_only "$@" >/tmp/fio-verify.out 2>&1 || {
		cat /tmp/fio-verify.out
		fail "fio verify pass failed"
	}
	if grep -qi 'verify:.*bad\|bad magic\|crc32c.*wanted' /tmp/fio-verify.out; then
		cat /tmp/fio-verify.out
		fail "fio reported verify errors"
	fi
	_err=$(grep ';' /tmp/fio-verify.out | tail -n 1 | cut -d';' -f5)
	_rkb=$(grep ';' /tmp/fio-verify.out | tail -n 1 | cut -d';' -f6)
	[ "$_err" = 0 ] || fail "fio verify pass error=$_err"
	[ -n "$_rkb" ] && [ "$_rkb" -gt 0 ] || fail "fio verify pass read nothing"
	[ "$_rkb" -ge "$_wkb" ] || fail "fio verify pass read ${_rkb} KiB < written ${_wkb} KiB"
	ok "fio verified ${_rkb} KiB on $_dev (crc32c, 0 errors)"
}

# --- storage processors in one VM (cluster*.sh) -------------------------------
# sp_secret: the run directory $R (default /run/tierblk) with a cluster secret.
sp_secret() {
	R=${R:-/run/tierblk}
	mkdir -p "$R"
	printf 'a cluster secret for the vm test\n' >"$R/secret"
	chmod 600 "$R/secret"
}
PIDS=""
# start_sp NAME ARGS...: one `tierblkd --sp NAME` in the background (fabric
# socket $R/NAME.sock, control socket $R/NAME.ctl, cluster "lab"), its log in
# /tmp/NAME.log (a previous one kept as /tmp/NAME.N.log); its pid in LAST_PID
# and PIDS.
start_sp() {
	_n=$1
	shift
	_k=0
	while [ -f "/tmp/$_n.$_k.log" ]; do _k=$((_k + 1)); done
	[ -f "/tmp/$_n.log" ] && mv "/tmp/$_n.log" "/tmp/$_n.$_k.log"
	tierblkd --sp "$_n" --listen "unix:$R/$_n.sock" --secret-file "$R/secret" \
		--socket "$R/$_n.ctl" --cluster lab "$@" >"/tmp/$_n.log" 2>&1 &
	LAST_PID=$!
	PIDS="$PIDS $LAST_PID"
}
# sp_cleanup RC: on failure, the tail of every SP's logs; then unmount /mnt
# and stop the SPs. For `trap 'sp_cleanup $?' EXIT`.
sp_cleanup() {
	if [ "$1" -ne 0 ]; then
		dump_stuck
		for f in /tmp/sp*.log; do
			[ -f "$f" ] || continue
			echo "---- $f ----"
			tail -n 40 "$f"
		done
		echo "---- last kernel messages ----"
		dmesg | tail -n 30
		# (A load still running keeps /mnt busy.)
		killall -9 fio 2>/dev/null || true
	fi
	umount /mnt 2>/dev/null || true
	# shellcheck disable=SC2086
	kill $PIDS 2>/dev/null || true
	exit "$1"
}
# wait_role CTL SP ROLE: until the SP at control socket CTL lists SP in ROLE (30 s).
wait_role() {
	_i=0
	until tierblk --socket "$1" --json sp list 2>/dev/null | grep -q "\"name\":\"$2\",\"role\":\"$3\""; do
		_i=$((_i + 1))
		[ "$_i" -lt 150 ] || fail "$2 is not $3: $(tierblk --socket "$1" --json sp list 2>&1)"
		sleep 0.2
	done
}
# dev_on CTL NAME: the device of volume NAME on the SP with control socket CTL.
dev_on() { tierblk --socket "$1" --json vol show "$2" | sed -n 's/.*"device":"\([^"]*\)".*/\1/p'; }
# no_io_error WHEN: the kernel logged no I/O error on a ublk device.
no_io_error() {
	dmesg | grep -i "I/O error, dev ublkb" && fail "the kernel saw I/O errors ($1)"
	ok "no I/O error reached the block layer ($1)"
}
