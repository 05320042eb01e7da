# shellcheck shell=bash
# udev for VM scenarios that ask for it with a header line `# vm-extra: udev`
# (sourced by scripts/lib/vm.sh). Adds udevadm (which is also systemd-udevd),
# its shared libraries and tierblk's rules to the scenario's initramfs.
#
# udevadm comes from the host if it has one, otherwise from Debian's `udev`
# package at the version of the host's systemd (so that it matches the host's
# libraries), fetched with `apt-get download` into $VM_CACHE and kept there.

vm_udev_udevadm() {
	# Prints the path of a udevadm binary usable with the host's libraries.
	local p ver deb dir
	for p in /usr/bin/udevadm /bin/udevadm; do
		[ -x "$p" ] && {
			printf '%s\n' "$p"
			return 0
		}
	done
	ver="$(dpkg-query -W -f '${Version}' libudev1 2>/dev/null || true)"
	[ -n "$ver" ] || ver="$(dpkg-query -W -f '${Version}' systemd 2>/dev/null || true)"
	mkdir -p "$VM_CACHE"
	deb="$(_vm_newest_deb "udev_${ver//:/%3a}_*.deb")"
	if [ -z "$deb" ]; then
		vm_log "downloading udev${ver:+=$ver} into $VM_CACHE"
		(cd "$VM_CACHE" && apt-get download -q "udev${ver:+=$ver}" >&2 2>/dev/null) ||
			(cd "$VM_CACHE" && apt-get download "udev" >&2) || return 1
		deb="$(_vm_newest_deb "udev_*.deb")"
	fi
	[ -n "$deb" ] || return 1
	dir="$(vm_deb_extract "$deb")" || return 1
	for p in "$dir/usr/bin/udevadm" "$dir/bin/udevadm"; do
		[ -x "$p" ] && {
			printf '%s\n' "$p"
			return 0
		}
	done
	return 1
}

vm_udev_add() {
	# vm_udev_add ROOT: udevadm as /usr/bin/udevadm and
	# /usr/lib/systemd/systemd-udevd, its libraries, and udev/60-tierblk.rules
	# in /usr/local/lib/udev/rules.d (where scripts/install puts it for the
	# default prefix) naming the guest's /usr/local/bin/tierblk.
	local root="$1" udevadm
	udevadm="$(vm_udev_udevadm)" || {
		vm_log "cannot find or fetch udevadm (Debian package udev)"
		return 1
	}
	vm_log "udev for the guest: $udevadm"
	_vm_copy_file "$udevadm" "$root" /usr/bin/udevadm
	_vm_copy_file "$udevadm" "$root" /usr/lib/systemd/systemd-udevd
	_vm_copy_libs "$udevadm" "$root"
	mkdir -p "$root/usr/local/lib/udev/rules.d" "$root/etc/udev/rules.d"
	sed 's|/usr/local/sbin/tierblk |/usr/local/bin/tierblk |g' "$REPO/udev/60-tierblk.rules" \
		>"$root/usr/local/lib/udev/rules.d/60-tierblk.rules"
}
