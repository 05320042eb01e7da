#!/bin/sh
# Quiescence for administrators (spec IX, [0171] steps 1504-1508; dm's
# suspend/resume): under fio load, `vol quiesce` drains in-flight requests and
# holds new ones (the write counter stands still, nothing fails), a snapshot
# can be taken at that instant, offline is refused, and `vol resume` lets the
# held requests go on: fio finishes and verifies with zero errors.
# vm-run: --disks 2 --disk-size 256M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 2
start_daemon --alu /dev/vda --alu /dev/vdb
tb alu claim /dev/vda >/dev/null
tb alu claim /dev/vdb >/dev/null
tb vol create q1 --size 96M --layout mirror
wait_vol_state q1 online
dev=$(vol_device q1)

writes() {
	tbj stats q1 | grep -o '"bytes":[0-9]*,"count":[0-9]*,[^}]*"op":"write"' |
		sed 's/.*"count":\([0-9]*\).*/\1/'
}
fio --name=q --filename="$dev" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=16 \
	--size=64M --number_ios=16000 --rate_iops=2000 --verify=crc32c --verify_fatal=1 \
	--do_verify=0 --randrepeat=1 --output-format=terse --terse-version=3 >/tmp/fio-q.out 2>&1 &
fio_pid=$!
sleep 2
tb vol quiesce q1
json_has "$(vol_json q1)" state '"quiesced"' || fail "q1 not quiesced: $(vol_json q1)"
w1=$(writes)
sleep 3
w2=$(writes)
[ "$w1" = "$w2" ] || fail "writes went on while quiesced: $w1 -> $w2"
kill -0 "$fio_pid" || fail "fio ended while its I/O was held"
ok "quiesced under load: $w1 writes, none more in 3 s, fio waiting"
expect_fail_match 'already quiesced' tb vol quiesce q1
expect_fail_match 'quiesced' tb vol offline q1
tb snap create q1 s1 --size 16M
ok "a snapshot taken at the quiesced instant"
tb vol resume q1
json_has "$(vol_json q1)" state '"online"' || fail "q1 not online after resume: $(vol_json q1)"
expect_fail_match 'not quiesced' tb vol resume q1
wait "$fio_pid" || {
	cat /tmp/fio-q.out
	fail "fio failed across the quiesce"
}
[ "$(grep ';' /tmp/fio-q.out | tail -n 1 | cut -d';' -f5)" = 0 ] || {
	cat /tmp/fio-q.out
	fail "fio reported errors"
}
[ "$(writes)" -gt "$w2" ] || fail "no write after resume"
fio --name=q --filename="$dev" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=16 \
	--size=64M --number_ios=16000 --verify=crc32c --verify_fatal=1 --verify_only --randrepeat=1 \
	--output-format=terse --terse-version=3 >/tmp/fio-qv.out 2>&1 || {
	cat /tmp/fio-qv.out
	fail "fio verify failed"
}
[ "$(grep ';' /tmp/fio-qv.out | tail -n 1 | cut -d';' -f5)" = 0 ] || fail "fio verify errors"
ok "resumed: fio finished and verified with 0 errors"
tb snap remove s1
stop_daemon
say "quiesce passed"
