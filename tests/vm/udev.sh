# vm-run: --disks 2 --disk-size 256M
# vm-extra: udev
# udev/60-tierblk.rules with a real systemd-udevd: /dev/tierblk/NAME and
# /dev/disk/by-id/tierblk-WWN follow volumes and snapshots as they come and
# go, partitions get -partN links, and `tierblk udev-name` refuses devices
# that are not tierblkd's (a virtio disk, a device whose daemon died).
. "$(dirname "$0")/lib.sh"

RULES=/usr/local/lib/udev/rules.d/60-tierblk.rules
command -v udevadm >/dev/null || fail "no udevadm in the guest (vm-extra: udev)"
[ -f "$RULES" ] || fail "$RULES missing"
udevadm --version | sed 's/^/udevadm version /'

# link_is LINK DEV: LINK resolves to DEV (waits for udev first).
link_is() {
	udevadm settle -t 30 || fail "udevadm settle timed out"
	[ -L "$1" ] || fail "$1 is not a symlink ($(ls -l "$(dirname "$1")" 2>&1 | tr '\n' ' '))"
	_t=$(readlink -f "$1")
	[ "$_t" = "$2" ] || fail "$1 -> $_t, want $2"
	ok "$1 -> $2"
}

# no_link LINK
no_link() {
	udevadm settle -t 30 || fail "udevadm settle timed out"
	[ ! -e "$1" ] && [ ! -L "$1" ] || fail "$1 still exists"
	ok "$1 is gone"
}

# not_ours DEV: udev-name exits 1 and prints nothing.
not_ours() {
	if tierblk udev-name "$1" >/tmp/un.out 2>/tmp/un.err; then
		fail "udev-name $1 succeeded: $(cat /tmp/un.out)"
	else
		_rc=$?
	fi
	[ "$_rc" = 1 ] || fail "udev-name $1: rc=$_rc, want 1"
	[ ! -s /tmp/un.out ] && [ ! -s /tmp/un.err ] || fail "udev-name $1 printed: $(cat /tmp/un.out /tmp/un.err)"
	ok "udev-name $1: not ours (rc 1, silent)"
}

say "a mirror volume online"
start_daemon
tb alu claim /dev/vda >/dev/null
tb alu claim /dev/vdb >/dev/null
tb vol create db --size 64M --layout mirror >/dev/null
dev=$(vol_device db)
wwn=$(json_str "$(vol_json db)" wwn)
[ -b "$dev" ] || fail "db has no device ($dev)"
[ -n "$wwn" ] && [ "$wwn" != null ] || fail "db has no wwn"
kname=${dev#/dev/}
ls /run/ublksrvd/ >/dev/null || fail "libublk exported no JSON in /run/ublksrvd"

say "tierblk udev-name"
out=$(tierblk udev-name "$kname") || {
	ls -l /run/ublksrvd/
	cat /run/ublksrvd/*.json
	fail "udev-name $kname failed"
}
want=$(printf 'TIERBLK_VOLUME=db\nTIERBLK_WWN=%s' "$wwn")
[ "$out" = "$want" ] || fail "udev-name $kname printed '$out', want '$want'"
ok "udev-name $kname: $(echo "$out" | tr '\n' ' ')"
[ "$(tierblk udev-name "$dev")" = "$want" ] || fail "udev-name $dev differs"
not_ours vda
not_ours /dev/vdb

say "udevadm test (the rules as udev evaluates them)"
udevadm test --action=add "/sys/block/$kname" >/tmp/udevadm-test.out 2>&1 || {
	cat /tmp/udevadm-test.out
	fail "udevadm test failed"
}
grep -q "^TIERBLK_VOLUME=db$" /tmp/udevadm-test.out || {
	cat /tmp/udevadm-test.out
	fail "udevadm test: no TIERBLK_VOLUME=db"
}
links=$(sed -n 's/^DEVLINKS=//p' /tmp/udevadm-test.out)
case " $links " in *" /dev/tierblk/db "*) ;; *) fail "udevadm test: DEVLINKS='$links' lacks /dev/tierblk/db" ;; esac
case " $links " in *" /dev/disk/by-id/tierblk-$wwn "*) ;; *) fail "udevadm test: DEVLINKS='$links' lacks by-id" ;; esac
ok "udevadm test: DEVLINKS=$links"

say "systemd-udevd: links for the running volume"
mkdir -p /run/udev
/usr/lib/systemd/systemd-udevd --daemon --resolve-names=never 2>/tmp/udevd.err || {
	cat /tmp/udevd.err
	fail "systemd-udevd did not start"
}
udevadm trigger --action=add --subsystem-match=block
link_is /dev/tierblk/db "$dev"
link_is "/dev/disk/by-id/tierblk-$wwn" "$dev"
[ ! -e /dev/tierblk/vda ] || fail "a virtio disk got a tierblk link"

say "a partition gets -part1 links"
# MBR by hand: partition 1, type 83, LBA 2048, 16384 sectors.
printf '\000\000\000\000\203\000\000\000\000\010\000\000\000\100\000\000' |
	dd of="$dev" bs=1 seek=446 conv=notrunc status=none
printf '\125\252' | dd of="$dev" bs=1 seek=510 conv=notrunc status=none
sync
blockdev --rereadpt "$dev" || fail "BLKRRPART on $dev failed"
wait_for_dev "${dev}p1" 10
link_is /dev/tierblk/db-part1 "${dev}p1"
link_is "/dev/disk/by-id/tierblk-$wwn-part1" "${dev}p1"
link_is /dev/tierblk/db "$dev"

say "a snapshot gets its own link"
tb snap create db db-snap >/dev/null
sdev=$(json_str "$(tbj snap list db)" device)
[ -b "$sdev" ] || fail "snapshot has no device ($sdev)"
link_is /dev/tierblk/db-snap "$sdev"
swwn=$(json_str "$(vol_json db-snap)" wwn)
[ -n "$swwn" ] && [ "$swwn" != null ] && [ "$swwn" != "$wwn" ] || fail "snapshot wwn '$swwn'"
link_is "/dev/disk/by-id/tierblk-$swwn" "$sdev"
tb snap remove db-snap >/dev/null
no_link /dev/tierblk/db-snap

say "offline removes the links, online brings them back"
tb vol offline db >/dev/null
no_link /dev/tierblk/db
no_link "/dev/disk/by-id/tierblk-$wwn"
no_link /dev/tierblk/db-part1
tb vol online db >/dev/null
dev=$(vol_device db)
link_is /dev/tierblk/db "$dev"
link_is "/dev/disk/by-id/tierblk-$wwn" "$dev"

say "a daemon killed with -9: its devices are not trusted, a restart renames"
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=""
not_ours "${dev#/dev/}"
start_daemon
wait_vol_state db online 30
dev2=$(vol_device db)
link_is /dev/tierblk/db "$dev2"
link_is "/dev/disk/by-id/tierblk-$wwn" "$dev2"
stop_daemon
no_link /dev/tierblk/db
udevadm control --exit 2>/dev/null || true
ok "udev scenario done"
