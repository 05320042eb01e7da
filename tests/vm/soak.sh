#!/bin/sh
# Soak: tierblkd's resident memory stays flat under hours of load (issue 6).
# 10 volumes online (linear with ext4, stripe, mirror, raid10, a snapshot
# origin with a snapshot, 5 small linear), fio on every one for
# TIERBLK_SOAK_SECONDS (randrw, 4k-128k mixed, crc32c verify of every write
# at the end of each pass over its region, rate-limited; the snapshot read
# at random), and every TIERBLK_SOAK_ADMIN seconds a round of administration
# (vol/job/alu/snap list, status, events, stats, a scrub of the mirror,
# quiesce/resume of a volume under load, a snapshot of the stripe taken and
# the previous one removed). Before the clock starts, a burst of 128k reads
# on every device touches every ublk tag's I/O buffer (first touch is
# warm-up, not growth). tierblkd's VmRSS, RssAnon, VmHWM, threads and open
# fds are sampled every TIERBLK_SOAK_SAMPLE seconds as
#   SOAK t=SECONDS rss_kib=N anon_kib=N hwm_kib=N threads=N fds=N iowq=N thp_kib=N
# (iowq: io_uring io-wq workers among the threads; thp: AnonHugePages).
# At the end: fio 0 errors, e2fsck -fn clean, no kernel I/O error, and the
# verdict (one SOAK-RESULT line): with T the duration, the first quarter is
# warm-up; fail if the median VmRSS of the last quarter (t >= 3T/4) exceeds
# the median of the second quarter (T/4 <= t < T/2) by more than
# max(5%, 8 MiB), or if the median thread or fd count of the last quarter
# exceeds the highest of the second (both move briefly with admin rounds,
# and threads with io_uring's io-wq workers, counted apart as iowq=N).
# A growth check, not a timing assertion. Run by scripts/soak (which renders
# the samples); not part of scripts/vm-test.
# Knobs: TIERBLK_SOAK_SECONDS (default 3600), TIERBLK_SOAK_SAMPLE (60),
# TIERBLK_SOAK_ADMIN (seconds between admin rounds, default 180, at most a
# quarter of the run), TIERBLK_SOAK_RATE (fio rate per volume and direction,
# default 256k), TIERBLK_SOAK_REGION (region per volume, default 24M),
# TIERBLK_SOAK_IODEPTH (default 8), TIERBLK_SOAK_WARM (seconds of the burst
# of 128k reads on every device before the clock starts that touches every
# ublk tag's buffer, default 3; 0: none).
# On the host, `sh tests/vm/soak.sh --verdict SECONDS FILE` prints the
# verdict of the SOAK lines in FILE (exit 1 on fail): scripts/soak uses it.
# vm-run: --disks 4 --disk-size 1G --mem 3072
set -eu

# soak_verdict T: the SOAK-RESULT line for the SOAK lines on stdin (other
# lines ignored) of a run of T seconds; exit status 1 when it fails.
soak_verdict() {
	awk -v T="$1" '
	function med(src, n,   b, i, j, x) {
		for (i = 1; i <= n; i++) b[i] = src[i]
		for (i = 2; i <= n; i++) {
			x = b[i]
			for (j = i - 1; j >= 1 && b[j] > x; j--) b[j + 1] = b[j]
			b[j + 1] = x
		}
		if (n % 2) return b[(n + 1) / 2]
		return (b[n / 2] + b[n / 2 + 1]) / 2
	}
	function kv(key,   i, p) {
		for (i = 1; i <= NF; i++) {
			p = index($i, "=")
			if (p && substr($i, 1, p - 1) == key) return substr($i, p + 1) + 0
		}
		return -1
	}
	{
		p = index($0, "SOAK t=")
		if (!p) next
		$0 = substr($0, p)
		t = kv("t"); r = kv("rss_kib"); th = kv("threads"); fd = kv("fds"); h = kv("hwm_kib")
		if (t < 0 || r < 0 || th < 0 || fd < 0) next
		n++
		if (h > hwm) hwm = h
		if (n == 1 || t < T / 4) { warm++; next }
		if (t < T / 2) {
			a++; ra[a] = r; ta[a] = th; fa[a] = fd
			if (a == 1 || th > tmax) tmax = th
			if (a == 1 || fd > fmax) fmax = fd
		}
		else if (t >= 3 * T / 4) { b++; rb[b] = r; tb[b] = th; fb[b] = fd }
	}
	END {
		if (a < 1 || b < 1) {
			printf "SOAK-RESULT verdict=fail reason=too-few-samples samples=%d warmup=%d q2_samples=%d q4_samples=%d seconds=%d\n", n, warm, a, b, T
			exit 1
		}
		r2 = med(ra, a); r4 = med(rb, b); t2 = med(ta, a); t4 = med(tb, b); f2 = med(fa, a); f4 = med(fb, b)
		lim = r2 * 0.05; if (lim < 8192) lim = 8192
		why = ""
		if (r4 - r2 > lim) why = why "rss-grew,"
		if (t4 > tmax) why = why "threads-grew,"
		if (f4 > fmax) why = why "fds-grew,"
		if (why == "") { v = "pass"; why = "flat" } else { v = "fail"; sub(/,$/, "", why) }
		printf "SOAK-RESULT verdict=%s reason=%s samples=%d warmup=%d q2_samples=%d q4_samples=%d", v, why, n, warm, a, b
		printf " rss_q2_kib=%d rss_q4_kib=%d growth_kib=%d limit_kib=%d", r2, r4, r4 - r2, lim
		printf " threads_q2=%g threads_q2_max=%d threads_q4=%g fds_q2=%g fds_q2_max=%d fds_q4=%g", t2, tmax, t4, f2, fmax, f4
		printf " hwm_max_kib=%d seconds=%d\n", hwm, T
		exit (v == "pass" ? 0 : 1)
	}'
}

if [ "${1:-}" = --verdict ]; then
	[ "$#" = 3 ] || {
		echo "usage: sh tests/vm/soak.sh --verdict SECONDS FILE" >&2
		exit 2
	}
	soak_verdict "$2" <"$3"
	exit $?
fi

# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

SECS="${TIERBLK_SOAK_SECONDS:-3600}"
SAMPLE="${TIERBLK_SOAK_SAMPLE:-60}"
ADMIN="${TIERBLK_SOAK_ADMIN:-180}"
RATE="${TIERBLK_SOAK_RATE:-256k}"
REGION="${TIERBLK_SOAK_REGION:-24M}"
DEPTH="${TIERBLK_SOAK_IODEPTH:-8}"
WARM="${TIERBLK_SOAK_WARM:-3}"
[ "$SECS" -ge 40 ] || fail "TIERBLK_SOAK_SECONDS=$SECS: at least 40"
[ "$SAMPLE" -ge 1 ] && [ "$((SECS / SAMPLE))" -ge 8 ] ||
	fail "TIERBLK_SOAK_SAMPLE=$SAMPLE: need at least 8 samples in $SECS s (2 per quarter)"
[ "$ADMIN" -le "$((SECS / 4))" ] || ADMIN=$((SECS / 4))
[ "$ADMIN" -ge 10 ] || ADMIN=10
ndisks=$(vm_disks | wc -l)
[ "$ndisks" -ge 2 ] || fail "need at least 2 virtio disks (4 for raid10), have $ndisks"

now_s() { cut -d. -f1 /proc/uptime; }

# --- 10 volumes online ----------------------------------------------------------
start_daemon
for d in $(vm_disks); do tb alu claim "$d" >/dev/null; done
mkvol() { # mkvol NAME ARGS...: create, wait online
	_v=$1
	shift
	tb vol create "$_v" "$@" >/dev/null
	wait_vol_state "$_v" online >/dev/null
}
mkvol sfs --size 256M
mkvol sstr --size 128M --layout stripe --stripes 2 --chunk 64K
mkvol smir --size 128M --layout mirror --copies 2
if [ "$ndisks" -ge 4 ]; then
	mkvol sr10 --size 128M --layout raid10 --stripes 2 --copies 2 --chunk 64K
else
	mkvol sr10 --size 128M
	echo "soak: $ndisks disks: sr10 is linear (raid10 needs 4)"
fi
mkvol sorg --size 96M
tb snap create sorg sorg-s0 >/dev/null
for n in 1 2 3 4 5; do mkvol "sv$n" --size 32M; done
# No initial sync or resync left running when the clock starts.
_w=0
while tbj job list | grep -q '"state":"running"'; do
	_w=$((_w + 1))
	[ "$_w" -le 600 ] || fail "jobs still running after 120s: $(tb job list)"
	sleep 0.2
done
snapdev=$(json_str "$(tbj snap list sorg)" device)
[ "$snapdev" != null ] && [ -n "$snapdev" ] || fail "sorg-s0 has no device: $(tbj snap list sorg)"
wait_for_dev "$snapdev" >/dev/null
fsdev=$(vol_device sfs)
mkfs.ext4 -q -F "$fsdev"
mkdir -p /mnt/soak
mount -t ext4 "$fsdev" /mnt/soak
tb vol list

nvol=$(tbj vol list | grep -o '"layout":"[a-z0-9]*"' | grep -vc snapshot || true)
[ "$nvol" = 10 ] || fail "expected 10 volumes besides snapshots, have $nvol"
QUEUES=0
for _q in /sys/block/ublkb*/mq/*; do [ -e "$_q" ] && QUEUES=$((QUEUES + 1)); done
ENGINE=$(fio_engine)
thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || true)
echo "SOAK-INFO kernel=$(uname -r) nproc=$(grep -c ^processor /proc/cpuinfo) engine=$ENGINE fio=$(fio --version)" \
	"seconds=$SECS sample=$SAMPLE admin=$ADMIN rate=$RATE region=$REGION iodepth=$DEPTH volumes=$nvol" \
	"snapshots=1 queues=$QUEUES warm=$WARM thp=${thp:-unknown} mem_kib=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' /proc/meminfo)"

# --- samples (SOAK lines) ----------------------------------------------------------
sample() { # sample T
	_st=/proc/$DAEMON_PID/status
	_kv() { sed -n "s/^$1:[[:space:]]*\([0-9]*\).*/\1/p" "$_st" | head -n 1; }
	_fds=$(ls "/proc/$DAEMON_PID/fd" | wc -l)
	_iowq=$(cat /proc/"$DAEMON_PID"/task/*/comm 2>/dev/null | grep -c '^iou-wrk' || true)
	_thp=$(sed -n 's/^AnonHugePages:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$DAEMON_PID/smaps_rollup" 2>/dev/null || true)
	echo "SOAK t=$1 rss_kib=$(_kv VmRSS) anon_kib=$(_kv RssAnon) hwm_kib=$(_kv VmHWM) threads=$(_kv Threads)" \
		"fds=$_fds iowq=$_iowq thp_kib=${_thp:-0}"
}
# --- warm-up burst ------------------------------------------------------------------
# Each ublk tag has its own I/O buffer, resident only as far as a request
# has touched it, and the kernel hands the tags out in turn: under the
# soak's load (a 128k request now and then) every tag's buffer would take
# many minutes to be touched as far as 128k. First touch is not growth: WARM
# (TIERBLK_SOAK_WARM, default 3; 0: none) seconds of unthrottled 128k reads
# at the soak's queue depth from each CPU (so on every queue) on every
# device cycle through every tag. The same depth as the soak's, so the
# queues' pools of request servers grow no further than the soak's own.
if [ "$WARM" -gt 0 ]; then
	_ncpu=$(grep -c ^processor /proc/cpuinfo)
	for d in $(tbj vol list | grep -o '"device":"/dev/ublkb[0-9]*"' | cut -d'"' -f4 | sort -u); do
		fio --name=warm --filename="$d" --ioengine="$ENGINE" --direct=1 --rw=randread --bs=128k \
			--iodepth="$DEPTH" --numjobs="$_ncpu" --cpus_allowed="0-$((_ncpu - 1))" --cpus_allowed_policy=split \
			--size="$REGION" --time_based --runtime="$WARM" --output-format=terse >/tmp/fio-warm.out 2>&1 || {
			cat /tmp/fio-warm.out
			fail "warm-up reads on $d failed"
		}
	done
fi
sample warm | sed 's/^SOAK t=warm /SOAK-WARM /'

# --- fio on every volume ----------------------------------------------------------
# Per volume, one pass after another until SECS: a fio run over REGION of
# 50/50 random reads and writes (4k-128k) that ends with a crc32c verify of
# every block it wrote (fio's verify of one run; its `loops` with randrw
# report false mismatches); on the ext4 volume a file. A pass running at
# SECS is finished. The snapshot is read at random for SECS.
rm -f /tmp/soak.io-stop /tmp/soak.fio-failed /tmp/fio-soak.*
fio_pass_loop() { # fio_pass_loop NAME FILE
	_n=0
	while [ ! -f /tmp/soak.io-stop ]; do
		_n=$((_n + 1))
		if ! fio --name="$1" --filename="$2" --ioengine="$ENGINE" --direct=1 --iodepth="$DEPTH" \
			--rw=randrw --rwmixread=50 --bssplit=4k/40:16k/25:64k/20:128k/15 --blockalign=4k \
			--size="$REGION" --rate="$RATE,$RATE" --verify=crc32c --verify_fatal=1 --randrepeat=0 \
			--output-format=terse --terse-version=3 >"/tmp/fio-pass.$1" 2>&1; then
			{
				echo "fio on $1 ($2), pass $_n, failed:"
				cat "/tmp/fio-pass.$1"
			} >>/tmp/soak.fio-failed
			exit 1
		fi
		_l=$(grep '^3;' "/tmp/fio-pass.$1" | tail -n 1)
		if [ "$(echo "$_l" | cut -d';' -f5)" != 0 ] || grep -qi 'verify:' "/tmp/fio-pass.$1"; then
			{
				echo "fio on $1 ($2), pass $_n, reported errors:"
				cat "/tmp/fio-pass.$1"
			} >>/tmp/soak.fio-failed
			exit 1
		fi
		echo "$_l" >>"/tmp/fio-soak.$1"
	done
}
FIO_PIDS=""
fio_pass_loop sfs /mnt/soak/fio.dat &
FIO_PIDS="$FIO_PIDS $!"
for v in sstr smir sr10 sorg sv1 sv2 sv3 sv4 sv5; do
	fio_pass_loop "$v" "$(vol_device "$v")" &
	FIO_PIDS="$FIO_PIDS $!"
done
fio --name=sorg-s0 --filename="$snapdev" --ioengine="$ENGINE" --direct=1 --iodepth="$DEPTH" --rw=randread \
	--bssplit=4k/40:16k/25:64k/20:128k/15 --blockalign=4k --size="$REGION" --rate="$RATE" \
	--time_based --runtime="$SECS" --output-format=terse --terse-version=3 >/tmp/fio-snap.out 2>&1 &
SNAP_FIO_PID=$!
t0=$(now_s)

# --- administration every ADMIN seconds, the first round after 10 s ---------------
# In the background; it stops between rounds when /tmp/soak.stop exists (never
# in the middle of a quiesce). A failure: its reason in /tmp/soak.admin-failed.
admin_fail() {
	echo "$*" >/tmp/soak.admin-failed
	exit 1
}
admin_round() { # admin_round N
	_a0=$(now_s)
	for _c in "vol list" "job list" "alu list" "snap list" "status" "events" "stats"; do
		# shellcheck disable=SC2086
		tb $_c >/dev/null 2>/tmp/soak.admin.err || admin_fail "tierblk $_c: $(cat /tmp/soak.admin.err)"
	done
	_s=$(tbj snap list sorg) || admin_fail "snap list sorg failed"
	json_has "$_s" state '"valid"' || admin_fail "sorg-s0 not valid: $_s"
	_j=$(tbj vol scrub smir --rate 32M --wait 2>/tmp/soak.admin.err) || admin_fail "scrub of smir: $(cat /tmp/soak.admin.err)"
	json_has "$_j" state '"done"' || admin_fail "scrub of smir not done: $_j"
	_mm=$(json_num "$_j" mismatches)
	[ "$_mm" = 0 ] || admin_fail "scrub of smir found $_mm mismatches under load: $_j"
	tb vol quiesce sv1 >/dev/null 2>/tmp/soak.admin.err || admin_fail "quiesce sv1: $(cat /tmp/soak.admin.err)"
	json_has "$(vol_json sv1)" state '"quiesced"' || admin_fail "sv1 not quiesced: $(vol_json sv1)"
	sleep 1
	tb vol resume sv1 >/dev/null 2>/tmp/soak.admin.err || admin_fail "resume sv1: $(cat /tmp/soak.admin.err)"
	json_has "$(vol_json sv1)" state '"online"' || admin_fail "sv1 not online after resume: $(vol_json sv1)"
	# A new snapshot of the stripe under load, read a little; the previous one removed.
	tb snap create sstr "sstr-t$1" >/dev/null 2>/tmp/soak.admin.err || admin_fail "snap create sstr-t$1: $(cat /tmp/soak.admin.err)"
	_sd=$(json_str "$(tbj snap list sstr | tr '{' '\n' | grep "\"name\":\"sstr-t$1\"")" device)
	[ -n "$_sd" ] && [ "$_sd" != null ] || admin_fail "sstr-t$1 has no device: $(tbj snap list sstr)"
	_k=0
	while [ ! -b "$_sd" ]; do
		_k=$((_k + 1))
		[ "$_k" -le 100 ] || admin_fail "$_sd did not appear"
		sleep 0.2
	done
	sha_dev "$_sd" 4 >/dev/null || admin_fail "reading 4 MiB of sstr-t$1 ($_sd) failed"
	if [ "$1" -gt 1 ]; then
		tb snap remove "sstr-t$(($1 - 1))" >/dev/null 2>/tmp/soak.admin.err ||
			admin_fail "snap remove sstr-t$(($1 - 1)): $(cat /tmp/soak.admin.err)"
	fi
	echo "SOAK-ADMIN round=$1 t=$((_a0 - t0)) secs=$(($(now_s) - _a0)) scrub_mismatches=$_mm quiesce=ok snapshot=sstr-t$1"
}
rm -f /tmp/soak.stop /tmp/soak.admin-failed
(
	_r=0
	_next=$((t0 + 10))
	while [ ! -f /tmp/soak.stop ]; do
		if [ "$(now_s)" -ge "$_next" ]; then
			_r=$((_r + 1))
			admin_round "$_r"
			_next=$((_next + ADMIN))
		fi
		sleep 1
	done
	echo "$_r" >/tmp/soak.rounds
) &
ADMIN_PID=$!

say "soak: fio on 10 volumes and a snapshot for ${SECS}s, a sample every ${SAMPLE}s, admin every ${ADMIN}s"
: >/tmp/soak.samples
next=0
while :; do
	t=$(($(now_s) - t0))
	kill -0 "$DAEMON_PID" 2>/dev/null || fail "tierblkd died at t=${t}s"
	if [ "$t" -ge "$next" ] || [ "$t" -ge "$SECS" ]; then
		sample "$t" | tee -a /tmp/soak.samples
		while [ "$next" -le "$t" ]; do next=$((next + SAMPLE)); done
	fi
	[ "$t" -lt "$SECS" ] || break
	if [ -f /tmp/soak.admin-failed ]; then fail "admin at t=${t}s: $(cat /tmp/soak.admin-failed)"; fi
	kill -0 "$ADMIN_PID" 2>/dev/null || fail "the admin loop ended at t=${t}s"
	if [ -f /tmp/soak.fio-failed ]; then
		cat /tmp/soak.fio-failed
		fail "fio failed at t=${t}s"
	fi
	for _p in $FIO_PIDS; do
		kill -0 "$_p" 2>/dev/null || fail "a fio pass loop ended at t=${t}s"
	done
	sleep 1
done

# --- the end: admin, fio (its running passes finish), ext4 ----------------------------
touch /tmp/soak.stop
_w=0
while kill -0 "$ADMIN_PID" 2>/dev/null; do
	_w=$((_w + 1))
	[ "$_w" -le 600 ] || fail "the admin loop did not stop within 600s"
	sleep 1
done
wait "$ADMIN_PID" || true
if [ -f /tmp/soak.admin-failed ]; then fail "admin: $(cat /tmp/soak.admin-failed)"; fi
rounds=$(cat /tmp/soak.rounds)
[ "$rounds" -ge 1 ] || fail "no admin round ran"
touch /tmp/soak.io-stop
for _p in $FIO_PIDS; do
	wait "$_p" || true
done
if [ -f /tmp/soak.fio-failed ]; then
	cat /tmp/soak.fio-failed
	fail "fio failed"
fi
wait_fio "$SNAP_FIO_PID" /tmp/fio-snap.out "reading the snapshot sorg-s0"
passes=0
rkib=$(grep '^3;' /tmp/fio-snap.out | tail -n 1 | cut -d';' -f6)
wkib=0
for v in sfs sstr smir sr10 sorg sv1 sv2 sv3 sv4 sv5; do
	[ -s "/tmp/fio-soak.$v" ] || fail "fio on $v finished no pass"
	while IFS=';' read -r _v _ver _name _gid _err _rk _rest; do
		_wk=$(echo "$_rest" | cut -d';' -f41)
		[ "$_err" = 0 ] && [ "$_wk" -gt 0 ] || fail "fio on $v: a pass with error=$_err, ${_wk} KiB written"
		passes=$((passes + 1))
		rkib=$((rkib + _rk))
		wkib=$((wkib + _wk))
	done <"/tmp/fio-soak.$v"
done
echo "SOAK-FIO jobs=11 passes=$passes errors=0 read_kib=$rkib write_kib=$wkib"
ok "fio: $passes passes over 10 volumes, each verified (crc32c) with 0 errors: ${wkib} KiB written, ${rkib} KiB read; the snapshot read"
tb snap remove "sstr-t$rounds" >/dev/null
umount /mnt/soak
fsck_clean "$fsdev" "e2fsck found problems on sfs ($fsdev) after the soak"
echo "SOAK-FSCK volume=sfs clean=1"
ok "e2fsck -fn clean on sfs"
no_io_error "soak"
if grep -qi 'panicked' "$DAEMON_LOG"; then
	grep -i -A3 'panicked' "$DAEMON_LOG"
	fail "tierblkd logged a panic"
fi

# --- the verdict ---------------------------------------------------------------------
sample "$(($(now_s) - t0))" | sed 's/^SOAK /SOAK-END /'
if soak_verdict "$SECS" </tmp/soak.samples; then
	ok "tierblkd's resident set is flat after the warm-up"
else
	fail "tierblkd's resident memory, threads or fds grew during the soak (SOAK-RESULT above)"
fi
stop_daemon
say "soak passed ($rounds admin rounds)"
