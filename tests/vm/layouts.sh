#!/bin/sh
# Every layout on /dev/ublkbN: stripe, mirror, raid10 and concat, each under
# fio --verify=crc32c, then again after a daemon restart; mirror legs hold
# identical bytes; members of each volume sit on distinct ALUs
# (spec [061], [074]-[076]).
# vm-run: --disks 4 --disk-size 512M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 4
start_daemon
for d in /dev/vda /dev/vdb /dev/vdc /dev/vdd; do tb alu claim "$d" >/dev/null; done
ok "claimed 4 ALUs"

tb vol create s1 --size 128M --layout stripe --stripes 2 --chunk 64K
tb vol create m1 --size 96M --layout mirror --copies 2
tb vol create r1 --size 128M --layout raid10 --stripes 2 --copies 2 --chunk 128K
tb vol create c1 --size 64M --layout concat
tb vol list

# segments NAME: one line per segment: member path start len
segments() {
	vol_json "$1" | grep -o '{"alu":"[^}]*}' | while read -r s; do
		echo "$(json_num "$s" member) $(json_str "$s" path) $(json_num "$s" start) $(json_num "$s" len)"
	done
}

for v in s1 m1 r1 c1; do
	wait_vol_state "$v" online
	j=$(vol_json "$v")
	segments "$v" >/tmp/segs.$v
	cat /tmp/segs.$v
	members=$(cut -d' ' -f1 /tmp/segs.$v | sort -u | wc -l)
	alus=$(cut -d' ' -f2 /tmp/segs.$v | sort -u | wc -l)
	case "$v" in
	s1) exp=2 ;; m1) exp=2 ;; r1) exp=4 ;; c1) exp=1 ;;
	esac
	[ "$members" = "$exp" ] || fail "$v has $members members, expected $exp: $j"
	[ "$alus" -ge "$exp" ] || fail "$v members share an ALU: $j"
	ok "$v: $members members on $alus distinct ALUs"
done

for v in s1 m1 r1 c1; do
	dev=$(vol_device "$v")
	size=$(json_num "$(vol_json "$v")" size)
	[ "$(blockdev --getsize64 "$dev")" = "$size" ] || fail "$dev size differs from $v's"
	fio_write_verify "$dev" 48M
done

# Mirror legs are byte-identical over what fio wrote.
set -- $(sed -n 1p /tmp/segs.m1)
p0=$2 s0=$3
set -- $(sed -n 2p /tmp/segs.m1)
p1=$2 s1=$3
a=$(dd if="$p0" bs=1M skip=$((s0 / 1048576)) count=48 iflag=direct status=none | sha256sum | cut -d' ' -f1)
b=$(dd if="$p1" bs=1M skip=$((s1 / 1048576)) count=48 iflag=direct status=none | sha256sum | cut -d' ' -f1)
[ "$a" = "$b" ] || fail "mirror legs differ: $p0@$s0 $a vs $p1@$s1 $b"
ok "mirror m1 legs identical on $p0 and $p1"

# The same data after a restart, found again from the disks alone.
stop_daemon
grep -q "clean stop recorded" /tmp/tierblkd.log || fail "clean stop not recorded"
start_daemon
[ "$(tbj job list)" = "[]" ] || fail "a clean stop must not trigger a resync: $(tbj job list)"
ok "clean stop: no resync queued"
for v in s1 m1 r1 c1; do
	wait_vol_state "$v" online
	dev=$(vol_device "$v")
	fio --name=w --filename="$dev" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio \
		--iodepth=16 --size=48M --verify=crc32c --verify_fatal=1 --randrepeat=1 --verify_only \
		--output-format=terse --terse-version=3 >/tmp/fio-re.out 2>&1 || {
		cat /tmp/fio-re.out
		fail "$v: verify after restart failed"
	}
	[ "$(grep ';' /tmp/fio-re.out | tail -n 1 | cut -d';' -f5)" = 0 ] || fail "$v: verify errors after restart"
	ok "$v verified after restart"
done

# ext4 on the raid10.
dev=$(vol_device r1)
mkfs.ext4 -q -F "$dev"
fsck_clean "$dev" "e2fsck on raid10"
ok "ext4 on raid10: e2fsck -fn clean"
stop_daemon
say "layouts passed"
