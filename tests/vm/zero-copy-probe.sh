#!/bin/sh
# Zero-copy probe (issue 6; docs/benchmarks/copy.md, *Zero copy on a newer
# kernel*): can one ublk device serve some requests with zero copy and the
# others through a buffer of the server's own? zc_probe
# (driver/examples/zc_probe.rs) exposes /dev/vda with UBLK_F_AUTO_BUF_REG |
# UBLK_F_USER_COPY and serves every other request with zero copy
# (READ_FIXED/WRITE_FIXED on the request's auto-registered pages), the others
# by user copy (pread/pwrite of /dev/ublkcN). Checked:
#   - data written through the probe (4 KiB to 512 KiB requests) is on vda,
#     and data written on vda reads back through it, byte for byte;
#   - fio's crc32c write + verify through the probe, random sizes;
#   - the probe fails closed on a kernel without AUTO_BUF_REG (6.12).
# Run by hand (needs a 6.16+ kernel; not part of scripts/vm-test):
#   cargo build --release -p tierblk --example zc_probe
#   TIERBLK_VM_KERNEL=6.18 scripts/vm-run tests/vm/zero-copy-probe.sh
# vm-run: --disks 1 --disk-size 256M
set -eu
# shellcheck source=tests/vm/lib.sh
. "$(dirname "$0")/lib.sh"

command -v zc_probe >/dev/null || fail "no zc_probe in the guest (cargo build --release -p tierblk --example zc_probe)"
echo "== kernel $(uname -r)"
zc_probe /dev/vda >/tmp/zc.out 2>&1 &
pid=$!
i=0
while ! grep -q '^ZC-PROBE dev=' /tmp/zc.out; do
	if ! kill -0 "$pid" 2>/dev/null; then
		cat /tmp/zc.out
		case "$(cat /tmp/zc.out)" in *"lacks AUTO_BUF_REG"*)
			ok "zc_probe refuses a kernel without AUTO_BUF_REG: nothing to probe on $(uname -r)"
			echo "== zero-copy-probe passed (skipped: kernel $(uname -r))"
			exit 0
			;;
		esac
		fail "zc_probe exited"
	fi
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "zc_probe printed no device within 20s: $(cat /tmp/zc.out)"
	sleep 0.2
done
cat /tmp/zc.out
id=$(sed -n 's/^ZC-PROBE dev=\([0-9]*\).*/\1/p' /tmp/zc.out)
dev=/dev/ublkb$id
wait_for_dev "$dev"

# Through the probe onto the disk: 24 MiB in requests of 4 KiB, 128 KiB and
# 512 KiB (each size its own 8 MiB).
dd if=/dev/urandom of=/tmp/a bs=1M count=24 2>/dev/null
dd if=/tmp/a of="$dev" bs=4k count=2048 oflag=direct 2>/dev/null
dd if=/tmp/a of="$dev" bs=128k skip=64 seek=64 count=64 oflag=direct 2>/dev/null
dd if=/tmp/a of="$dev" bs=512k skip=32 seek=32 count=16 oflag=direct 2>/dev/null
want=$(sha256sum </tmp/a | cut -d' ' -f1)
got=$(dd if=/dev/vda bs=1M count=24 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "vda holds other bytes than were written through $dev"
ok "24 MiB written through $dev (4k, 128k, 512k requests) are on vda"

# From the disk back through the probe, the same sizes.
dd if=/dev/urandom of=/tmp/b bs=1M count=24 2>/dev/null
dd if=/tmp/b of=/dev/vda bs=1M seek=32 oflag=direct 2>/dev/null
want=$(sha256sum </tmp/b | cut -d' ' -f1)
for bs in 4k 128k 512k; do
	kib=${bs%k}
	got=$(dd if="$dev" bs="$bs" skip=$((32 * 1024 / kib)) count=$((24 * 1024 / kib)) iflag=direct 2>/dev/null |
		sha256sum | cut -d' ' -f1)
	[ "$got" = "$want" ] || fail "reading vda's bytes through $dev in $bs requests gave other bytes"
done
ok "24 MiB written on vda read back through $dev in 4k, 128k and 512k requests"

fio_write_verify "$dev" 64M --offset=128M --bsrange=4k-512k --iodepth=8
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
echo "== zero-copy-probe passed"
