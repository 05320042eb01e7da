#!/bin/sh
# A dead disk under RAID10 is replaced online: the rebuild runs under fio load
# with zero errors, survives a kill -9 of the daemon (it resumes from its
# persisted checkpoint), and a scrub afterwards finds 0 mismatches
# (spec [0168]-[0171]; mdadm --replace, md check).
# vm-run: --disks 5 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 5
i=0
for d in /dev/vda /dev/vdb /dev/vdc /dev/vdd /dev/vde; do
	dmsetup create "alu$i" --table "0 $(blockdev --getsz "$d") linear $d 0"
	i=$((i + 1))
done
dmsetup mknodes
alus="--alu /dev/mapper/alu0 --alu /dev/mapper/alu1 --alu /dev/mapper/alu2 --alu /dev/mapper/alu3 --alu /dev/mapper/alu4"
# shellcheck disable=SC2086
start_daemon $alus
for n in 0 1 2 3; do tb alu claim "/dev/mapper/alu$n" >/dev/null; done
tb vol create r1 --size 256M --layout raid10 --stripes 2 --copies 2 --alu /dev/mapper/alu0 \
	--alu /dev/mapper/alu1 --alu /dev/mapper/alu2 --alu /dev/mapper/alu3
wait_vol_state r1 online
dev=$(vol_device r1)
victim=$(vol_json r1 | grep -o '{"alu":"[^}]*}' | while read -r s; do
	[ "$(json_num "$s" member)" = 1 ] && json_str "$s" path
done | head -n 1)
ok "member 1 is on $victim"

fio_job() { # fio_job NAME EXTRA...: 4k random writes with crc32c headers over the whole volume
	_n=$1
	shift
	fio --name=r --filename="$dev" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=8 \
		--size=256M --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=terse \
		--terse-version=3 "$@" >"/tmp/fio-$_n.out" 2>&1
}
fio_ok() { # fio_ok NAME: the run reported error 0
	[ "$(grep ';' "/tmp/fio-$1.out" | tail -n 1 | cut -d';' -f5)" = 0 ] || {
		cat "/tmp/fio-$1.out"
		fail "fio $1 reported errors"
	}
}

fio_job fill --do_verify=0 --number_ios=16384
fio_ok fill
ok "wrote 64 MiB of verifiable blocks"

# The disk dies.
dmsetup suspend "$(basename "$victim")"
dmsetup load "$(basename "$victim")" --table "0 $(blockdev --getsz "$victim") error"
dmsetup resume "$(basename "$victim")"
fio_job degraded --verify_only --number_ios=16384
fio_ok degraded
wait_vol_state r1 degraded
ok "r1 degraded after the disk died; data verifies"

# Replace it by a fresh disk, slowly, and kill the daemon mid-rebuild.
tb alu claim /dev/mapper/alu4 >/dev/null
tb alu replace "$victim" /dev/mapper/alu4 --rate 8M
sleep 1
tbj job list
job=$(tbj job list | grep -o '"id":[0-9]*' | head -n 1 | cut -d: -f2)
[ -n "$job" ] || fail "no rebuild job"
# An administrator can pause and resume it; the checkpoint is kept.
tb job cancel "$job" >/dev/null
j=$(tbj job show "$job")
json_has "$j" state '"paused"' || fail "job not paused: $j"
paused_at=$(json_num "$j" done)
[ "$paused_at" -gt 0 ] || fail "pause lost the progress: $j"
sleep 1
[ "$(json_num "$(tbj job show "$job")" done)" = "$paused_at" ] || fail "a paused job moved"
tb job resume "$job" >/dev/null
ok "paused at $paused_at bytes and resumed"
wait_job_past "$job" $((40 << 20))
ok "rebuild at $done_b bytes; kill -9 the daemon"
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
# shellcheck disable=SC2086
start_daemon $alus
# The crash resync the kill -9 queued runs first (it also copies the dirty
# regions onto the leg being rebuilt, below its checkpoint); then the
# rebuild resumes from its checkpoint.
i=0
until grep -q "job started job=$job .*from=[1-9]" "$DAEMON_LOG"; do
	i=$((i + 1))
	[ "$i" -le 600 ] || {
		grep job "$DAEMON_LOG" || true
		fail "the rebuild did not resume from a checkpoint"
	}
	sleep 0.2
done
rs=$(tbj job list | grep -o '{[^}]*"kind":"resync"[^}]*}')
json_has "$rs" state '"done"' || fail "the rebuild resumed before the crash resync ended: $rs"
ok "after the crash resync, the rebuild resumed from its checkpoint: $(grep "job started job=$job " "$DAEMON_LOG" | grep -o 'from=[0-9]*' | head -n 1)"
dev=$(vol_device r1)


# Finish it at full speed, under load, with zero errors.
fio_job load --do_verify=1 --number_ios=8192 --randseed=7 &
fio_pid=$!
tb job show "$job" --wait
wait "$fio_pid" || {
	cat /tmp/fio-load.out
	fail "fio failed during the rebuild"
}
fio_ok load
j=$(tbj job show "$job")
json_has "$j" state '"done"' || fail "rebuild not done: $j"
wait_vol_state r1 online
ok "rebuild done under load; r1 optimal again"

# The kill -9 left the cluster dirty: a resync of the regions the mirrors'
# write-intent bitmaps mark ran before the rebuild went on (MD resyncs an
# array that was not cleanly stopped, and with a bitmap only its dirty regions).
grep -q "unclean stop: resyncing" "$DAEMON_LOG" || fail "no resync after the unclean stop"
tbj job list | grep -q '"kind":"resync"' || fail "no resync job: $(tbj job list)"
i=0
while tbj job list | grep -q '"state":"running"'; do
	i=$((i + 1))
	[ "$i" -le 300 ] || fail "jobs still running: $(tbj job list)"
	sleep 0.2
done
ok "resync after the unclean stop finished: $(tbj job list | grep -o '"kind":"resync"[^}]*' | head -n 1)"

out=$(tbj vol scrub r1 --wait)
echo "$out"
json_has "$out" mismatches 0 || fail "scrub found mismatches: $out"
json_has "$out" state '"done"' || fail "scrub did not finish: $out"
ok "scrub: 0 mismatches"

# Negative control: corrupt 1 MiB of the rebuilt leg behind the daemon's back.
set -- $(vol_json r1 | grep -o '{"alu":"[^}]*}' | while read -r s; do
	[ "$(json_num "$s" member)" = 1 ] && echo "$(json_str "$s" path) $(json_num "$s" start)"
done)
dd if=/dev/urandom of="$1" bs=1M seek=$(($2 / 1048576 + 3)) count=1 oflag=direct status=none
out=$(tbj vol scrub r1 --wait)
m=$(json_num "$out" mismatches)
[ "$m" -gt 0 ] || fail "scrub missed the corruption: $out"
ok "scrub found $m mismatching 4 KiB blocks on $1"
out=$(tbj vol scrub r1 --repair --wait)
[ "$(json_num "$out" repaired)" -gt 0 ] || fail "repair repaired nothing: $out"
out=$(tbj vol scrub r1 --wait)
json_has "$out" mismatches 0 || fail "mismatches left after repair: $out"
fio_job final --verify_only --number_ios=16384
fio_ok final
ok "repair fixed them; the first 64 MiB of blocks still verify"
stop_daemon
say "raid10-rebuild passed"
