# shellcheck shell=bash
# Helpers for the tierblk VM test rig (sourced by scripts/vm-run, scripts/vm-test,
# scripts/demo). The rig boots Debian's packaged 6.12 cloud kernel under
# qemu-system-x86_64 with a busybox initramfs that holds our binaries, the
# tools the scenarios use and the kernel modules (ublk_drv, dm-*, md raid).
#
# Callers must set REPO (the repository root) before sourcing this file.

: "${REPO:?REPO must be set before sourcing scripts/lib/vm.sh}"

VM_CACHE="${TIERBLK_VM_CACHE:-$REPO/.cache/vm}"
# Kernel modules loaded at boot, in this order (dependencies are added and
# loaded first automatically). Modules that are missing or built in are skipped.
VM_MODULES="virtio_blk ublk_drv dm-mod dm-flakey dm-delay dm-log-writes dm-snapshot md-mod raid1 raid10 loop ext4"
# Host tools copied into the initramfs (with their shared libraries). They go
# to /usr/bin or /usr/sbin in the guest, which come before busybox's applet
# links in PATH.
VM_TOOLS="mkfs.ext4 mke2fs e2fsck fsck.ext4 resize2fs blkid fio dd sha256sum dmsetup"

vm_log() { printf 'vm: %s\n' "$*" >&2; }
vm_die() {
	printf 'vm: error: %s\n' "$*" >&2
	exit 1
}

# vm_guest_crash LOG: the first line of a guest kernel crash in a console log
# (an oops, a BUG, a panic), or nothing (status 1) if the kernel did not
# crash.
vm_guest_crash() {
	grep -a -m 1 -E 'Kernel panic - not syncing|Oops: |BUG: |general protection fault' "$1" 2>/dev/null | tr -d '\r'
}

# vm_run_again_on_crash LOG VM-RUN-ARGS...: scripts/vm-run VM-RUN-ARGS, whose
# console goes to LOG; when it fails and LOG shows a guest kernel crash, the
# console is kept as LOG's .crash.log and the boot runs once more. Under TCG
# the guest kernel has crashed on its own, in code tierblk does not reach (a
# double fault in md raid10's read path with fio on md): not a verdict on
# the scenario. Sets VM_CRASH to the crash line (empty if none); returns
# the status of the last run. A failure without a crash is not run again.
vm_run_again_on_crash() {
	local log="$1" rc=0
	shift
	VM_CRASH=""
	"$REPO/scripts/vm-run" "$@" || rc=$?
	if [ "$rc" != 0 ] && VM_CRASH=$(vm_guest_crash "$log"); then
		cp "$log" "${log%.log}.crash.log"
		vm_log "the guest kernel crashed ($VM_CRASH; console kept as ${log%.log}.crash.log): booting once more"
		rc=0
		"$REPO/scripts/vm-run" "$@" || rc=$?
	fi
	return "$rc"
}

# --- dependencies -------------------------------------------------------------

_vm_apt_updated=0
vm_apt_install() {
	# vm_apt_install PKG...: install the given Debian packages (apt-get update
	# first, once, only because an install is needed).
	[ "$#" -gt 0 ] || return 0
	local sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	if [ "$_vm_apt_updated" -eq 0 ]; then
		vm_log "apt-get update"
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || vm_die "apt-get update failed"
		_vm_apt_updated=1
	fi
	vm_log "apt-get install -y $*"
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
		vm_die "apt-get install $* failed"
}

vm_ensure_deps() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	# busybox-static ships a statically linked /bin/busybox.
	if ! dpkg -s busybox-static >/dev/null 2>&1; then missing+=(busybox-static); fi
	command -v cpio >/dev/null || missing+=(cpio)
	command -v fio >/dev/null || missing+=(fio)
	{ command -v mkfs.ext4 >/dev/null || [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ]; } || missing+=(e2fsprogs)
	command -v xz >/dev/null || missing+=(xz-utils)
	[ -x /usr/sbin/dmsetup ] || [ -x /sbin/dmsetup ] || missing+=(dmsetup)
	command -v dpkg-deb >/dev/null || missing+=(dpkg)
	vm_apt_install "${missing[@]}"
}

vm_deb_extract() {
	# vm_deb_extract DEB: DEB's files, extracted once into
	# $VM_CACHE/extract/NAME (NAME: DEB without .deb); prints that directory.
	local dir
	dir="$VM_CACHE/extract/$(basename "$1" .deb)"
	if [ ! -f "$dir/.extracted" ]; then
		vm_log "extracting $(basename "$1")"
		rm -rf "$dir"
		mkdir -p "$dir"
		dpkg-deb -x "$1" "$dir" || return 1
		touch "$dir/.extracted"
	fi
	printf '%s\n' "$dir"
}

_vm_newest_deb() {
	# _vm_newest_deb GLOB: the newest (by version) package $VM_CACHE/GLOB, or
	# nothing. GLOB is a file-name pattern ending in .deb, left unquoted here
	# so that it expands.
	# shellcheck disable=SC2086
	ls "$VM_CACHE"/$1 2>/dev/null | sort -V | tail -n 1 || true
}

_vm_fetch_mdadm() {
	# _vm_fetch_mdadm: path of an mdadm binary from Debian's package,
	# downloaded into the VM cache once; fails if there is none.
	local deb dir
	mkdir -p "$VM_CACHE"
	deb="$(_vm_newest_deb "mdadm_*.deb")"
	if [ -z "$deb" ]; then
		vm_log "downloading mdadm into $VM_CACHE"
		(cd "$VM_CACHE" && apt-get download -q mdadm >&2 2>/dev/null) || return 1
		deb="$(_vm_newest_deb "mdadm_*.deb")"
	fi
	[ -n "$deb" ] || return 1
	dir="$(vm_deb_extract "$deb")" || return 1
	[ -x "$dir/sbin/mdadm" ] || return 1
	printf '%s\n' "$dir/sbin/mdadm"
}

vm_which() {
	# vm_which TOOL: absolute path of a host tool (also looks in sbin dirs).
	local t="$1" d
	for d in /usr/sbin /sbin /usr/bin /bin /usr/local/sbin /usr/local/bin; do
		if [ -x "$d/$t" ] && [ ! -d "$d/$t" ]; then
			printf '%s\n' "$d/$t"
			return 0
		fi
	done
	command -v "$t" 2>/dev/null
}

# --- kernel -------------------------------------------------------------------

# TIERBLK_VM_KERNEL=SERIES (e.g. 6.18) boots the newest Debian cloud kernel of
# another series instead (a diagnosis knob: the scenarios and the benchmark
# baselines are for 6.12). A series the host's apt sources do not carry is
# looked up in $VM_KERNEL_SUITE of Debian's archive (TIERBLK_VM_KERNEL_SUITE,
# default trixie-backports) through a private apt index under $VM_CACHE/apt,
# verified by apt against debian-archive-keyring; the host's sources and
# package state are not touched.
VM_KSERIES="${TIERBLK_VM_KERNEL:-6.12}"
VM_KERNEL_SUITE="${TIERBLK_VM_KERNEL_SUITE:-trixie-backports}"

vm_newest_kernel_pkg() {
	# vm_newest_kernel_pkg [APT-OPTION...]: the newest cloud kernel package of
	# $VM_KSERIES known to apt-cache (the -unsigned one where both exist).
	local re="^linux-image-${VM_KSERIES//./\\.}\\.[0-9.]+\\+deb[0-9]+-cloud-amd64(-unsigned)?\$"
	apt-cache "$@" search --names-only "$re" 2>/dev/null | awk '{print $1}' | sort -V | tail -n 1
}

_vm_cached_kernel_deb() {
	_vm_newest_deb "linux-image-$VM_KSERIES.*-cloud-amd64*_*.deb"
}

_vm_apt_private() {
	# _vm_apt_private: sets VM_APT_PRIVATE, the apt options of a private index
	# of $VM_KERNEL_SUITE, and updates that index.
	local d="$VM_CACHE/apt"
	mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $VM_KERNEL_SUITE main" >"$d/sources.list"
	VM_APT_PRIVATE=(-o "Dir::Etc::SourceList=$d/sources.list" -o "Dir::Etc::SourceParts=$d/none"
		-o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o "Dir::State::status=/dev/null")
	vm_log "apt-get update of a private index of $VM_KERNEL_SUITE (for a $VM_KSERIES kernel)"
	apt-get "${VM_APT_PRIVATE[@]}" update -qq >&2
}

vm_fetch_kernel() {
	# Sets VM_KVER, VM_KROOT (extracted package root), VM_KMODDIR (its module
	# directory for VM_KVER), VM_VMLINUZ.
	[[ "$VM_KSERIES" =~ ^[0-9]+\.[0-9]+$ ]] || vm_die "TIERBLK_VM_KERNEL=$VM_KSERIES: expected a kernel series such as 6.18"
	mkdir -p "$VM_CACHE"
	local pkg deb apt_opts=()
	pkg="$(vm_newest_kernel_pkg)"
	if [ -z "$pkg" ] && [ -z "$(_vm_cached_kernel_deb)" ]; then
		# apt lists may be missing on a fresh machine.
		local sudo=""
		[ "$(id -u)" -eq 0 ] || sudo="sudo"
		vm_log "apt-get update (no kernel package known to apt-cache)"
		$sudo apt-get update -qq >&2 || true
		_vm_apt_updated=1
		pkg="$(vm_newest_kernel_pkg)"
	fi
	if [ -z "$pkg" ] && [ -z "$(_vm_cached_kernel_deb)" ] && [ "$VM_KSERIES" != 6.12 ]; then
		_vm_apt_private || vm_die "apt-get update of $VM_KERNEL_SUITE failed"
		apt_opts=("${VM_APT_PRIVATE[@]}")
		pkg="$(vm_newest_kernel_pkg "${apt_opts[@]}")"
	fi
	if [ -n "$pkg" ]; then
		deb="$(_vm_newest_deb "${pkg}_*.deb")"
		if [ -z "$deb" ]; then
			vm_log "downloading $pkg into $VM_CACHE"
			if (cd "$VM_CACHE" && apt-get "${apt_opts[@]}" download -q "$pkg" >&2 2>/dev/null) ||
				(cd "$VM_CACHE" && apt-get "${apt_opts[@]}" download "$pkg" >&2); then
				deb="$(_vm_newest_deb "${pkg}_*.deb")"
			else
				vm_log "apt-get download $pkg failed; trying a cached kernel package"
				deb="$(_vm_cached_kernel_deb)"
			fi
		fi
	else
		# Offline / package gone: use the newest cached one.
		deb="$(_vm_cached_kernel_deb)"
	fi
	[ -n "$deb" ] && [ -f "$deb" ] || vm_die "no linux-image-$VM_KSERIES.*-cloud-amd64 package available"
	VM_KROOT="$(vm_deb_extract "$deb")" || vm_die "dpkg-deb -x $deb failed"
	# Packages of a merged /usr (Debian 13 on) keep the modules in /usr/lib.
	local mods="$VM_KROOT/lib/modules"
	[ -d "$mods" ] || mods="$VM_KROOT/usr/lib/modules"
	VM_KVER="$(ls "$mods" | sort -V | tail -n 1)"
	VM_KMODDIR="$mods/$VM_KVER"
	VM_VMLINUZ="$VM_KROOT/boot/vmlinuz-$VM_KVER"
	[ -f "$VM_VMLINUZ" ] || vm_die "no kernel image in $deb"
	export VM_KVER VM_KROOT VM_KMODDIR VM_VMLINUZ
}

# --- binaries -----------------------------------------------------------------

vm_build_bins() {
	# Builds tierblkd + tierblk (release) unless TIERBLK_BIN_DIR is set. Sets
	# VM_BIN_DIR. Returns non-zero if the build fails.
	if [ -n "${TIERBLK_BIN_DIR:-}" ]; then
		VM_BIN_DIR="$TIERBLK_BIN_DIR"
	else
		local target="${CARGO_TARGET_DIR:-$REPO/target}"
		case "$target" in /*) ;; *) target="$REPO/$target" ;; esac
		# libublk's bindings are generated with libclang at build time.
		if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
			vm_apt_install libclang-dev
		fi
		vm_log "cargo build --release -p tierblk (+ the faultproxy example)"
		(cd "$REPO" && cargo build --release -p tierblk >&2 &&
			cargo build --release -p tierblk-fabric --example faultproxy >&2) || return 1
		VM_BIN_DIR="$target/release"
	fi
	local b
	for b in tierblkd tierblk; do
		[ -x "$VM_BIN_DIR/$b" ] || {
			vm_log "missing $VM_BIN_DIR/$b"
			return 1
		}
	done
	export VM_BIN_DIR
}

# --- initramfs ----------------------------------------------------------------

_vm_copy_file() {
	# _vm_copy_file SRC ROOT DEST: copy SRC (following symlinks) to ROOT/DEST,
	# removing whatever is there first so a symlink (e.g. a busybox applet
	# link) is never written through.
	local src="$1" root="$2" dest="$3"
	mkdir -p "$root/$(dirname "$dest")"
	rm -f "$root/$dest"
	cp -L "$src" "$root/$dest"
}

_vm_copy_libs() {
	# _vm_copy_libs BINARY ROOT: copy the shared libraries BINARY needs
	# (incl. the dynamic loader) to the same paths under ROOT.
	local bin="$1" root="$2" lib
	# (ldd fails for static binaries and scripts: nothing to copy then)
	{ ldd "$bin" 2>/dev/null || true; } | awk '
		/=>/ { if ($3 ~ /^\//) print $3; next }
		$1 ~ /^\// { print $1 }' |
		while read -r lib; do
			[ -e "$root/$lib" ] || _vm_copy_file "$lib" "$root" "$lib"
		done
}

_vm_mod_file() {
	# _vm_mod_file NAME: path (relative to the module dir) of module NAME,
	# treating - and _ alike; empty if there is none.
	local name="$1" moddir="$VM_KMODDIR" a b
	a="${name//_/-}"
	b="${name//-/_}"
	(cd "$moddir" && find kernel \( -name "$a.ko" -o -name "$a.ko.xz" -o -name "$a.ko.zst" -o -name "$a.ko.gz" \
		-o -name "$b.ko" -o -name "$b.ko.xz" -o -name "$b.ko.zst" -o -name "$b.ko.gz" \) | head -n 1)
}

_vm_decompress_mod() {
	# _vm_decompress_mod SRC DEST
	case "$1" in
	*.xz) xz -dc "$1" >"$2" ;;
	*.zst) zstd -dcq "$1" >"$2" ;;
	*.gz) gzip -dc "$1" >"$2" ;;
	*) cp "$1" "$2" ;;
	esac
}

_vm_add_module() {
	# _vm_add_module NAME ROOT: add module NAME and (first) its dependencies;
	# appends to ROOT/etc/tierblk-modules (load order) and modules.dep.
	local name="$1" root="$2" moddir="$VM_KMODDIR" rel dest deps d depfiles=""
	local norm="${name//-/_}"
	grep -qx "$norm" "$root/.mods-seen" 2>/dev/null && return 0
	echo "$norm" >>"$root/.mods-seen"
	rel="$(_vm_mod_file "$name")"
	if [ -z "$rel" ]; then
		if grep -qE "/(${name//_/-}|${name//-/_})\.ko" "$moddir/modules.builtin" 2>/dev/null; then
			echo "$norm builtin" >>"$root/.mods-report"
		else
			echo "$norm missing" >>"$root/.mods-report"
		fi
		return 0
	fi
	dest="/lib/modules/$VM_KVER/${rel%.*}"
	case "$rel" in *.ko) dest="/lib/modules/$VM_KVER/$rel" ;; esac
	mkdir -p "$root/$(dirname "$dest")"
	_vm_decompress_mod "$moddir/$rel" "$root/$dest"
	deps="$(tr '\0' '\n' <"$root/$dest" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' ')"
	for d in $deps; do
		_vm_add_module "$d" "$root"
		local drel
		drel="$(_vm_mod_file "$d")"
		[ -n "$drel" ] && depfiles="$depfiles ${drel%.xz}"
	done
	depfiles="${depfiles//.zst/}"
	depfiles="${depfiles//.gz/}"
	echo "$dest" >>"$root/etc/tierblk-modules"
	echo "${dest#/lib/modules/"$VM_KVER"/}:$depfiles" >>"$root/lib/modules/$VM_KVER/modules.dep"
	echo "$norm module" >>"$root/.mods-report"
}

_vm_write_init() {
	cat >"$1/init" <<'EOF'
#!/bin/sh
# tierblk VM rig init (generated by scripts/lib/vm.sh)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
# no udev: libdevmapper (dmsetup) creates /dev/mapper nodes itself
export DM_DISABLE_UDEV=1
mkdir -p /proc /sys /dev /run /tmp /root /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /run/tierblk
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mkdir -p /run/tierblk
mount -t tmpfs -o size=1g tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t configfs configfs /sys/kernel/config 2>/dev/null
ln -sf /proc/mounts /etc/mtab
hostname tierblk-vm
echo "TIERBLK-VM-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"
while read -r m; do
	[ -n "$m" ] || continue
	insmod "$m" || echo "vm-init: insmod $m failed"
done </etc/tierblk-modules
# No udev: stable names from the virtio serials (tierblkN) by hand.
mkdir -p /dev/disk/by-id
for s in /sys/block/vd*/serial; do
	[ -f "$s" ] || continue
	d=${s%/serial}
	ln -sf "../../${d##*/}" "/dev/disk/by-id/virtio-$(cat "$s")"
done
[ -f /etc/tierblk-env ] && . /etc/tierblk-env
timeout_s="${TIERBLK_VM_SCENARIO_TIMEOUT:-840}"
echo "vm-init: running /scenario.sh (timeout ${timeout_s}s), kernel $(uname -r), $(nproc) cpus"
start=$(cut -d' ' -f1 /proc/uptime)
cd /
timeout -s KILL "$timeout_s" sh -e /scenario.sh
rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
echo "vm-init: scenario took $(awk "BEGIN{printf \"%.1f\", $end-$start}")s"
echo "TIERBLK-VM-RESULT rc=$rc"
# Not waited for: a ublk device whose daemon a failed scenario left dead
# holds its I/O (user recovery) and would block sync, and so the poweroff,
# until the host's timeout. The disks are throw-away images.
sync &
sleep 1
# poweroff itself can block there too (ext4's journal on such a device):
# then an immediate reboot, without sync or device shutdown, ends the VM
# (qemu runs with -no-reboot).
(
	sleep 10
	echo b >/proc/sysrq-trigger
) &
poweroff -f
EOF
	chmod +x "$1/init"
}

vm_base_key() {
	# Cache key of the base initramfs: kernel, this file, the tools.
	{
		echo "$VM_KVER"
		cat "$REPO/scripts/lib/vm.sh"
		local t p
		for t in $VM_TOOLS; do
			p="$(vm_which "$t" || true)"
			[ -n "$p" ] && ls -lL "$p"
		done
		ls -lL /bin/busybox
	} | sha256sum | cut -c1-16
}

vm_build_base_initramfs() {
	# Builds (or reuses) the scenario-independent part of the initramfs: an
	# uncompressed newc cpio. Sets VM_BASE_CPIO.
	local key root t p a
	key="$(vm_base_key)"
	VM_BASE_CPIO="$VM_CACHE/initramfs-base-$key.cpio"
	if [ -f "$VM_BASE_CPIO" ]; then
		export VM_BASE_CPIO
		return 0
	fi
	vm_log "building base initramfs ($VM_KVER)"
	root="$(mktemp -d "${TMPDIR:-/tmp}/tierblk-initramfs.XXXXXX")"
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,proc,sys,dev,run,tmp,root,mnt,lib/modules/"$VM_KVER"}
	# busybox + applet links (only in /bin; real tools go to /usr/{s,}bin).
	cp /bin/busybox "$root/bin/busybox"
	for a in $(/bin/busybox --list); do
		[ "$a" = busybox ] && continue
		ln -sf busybox "$root/bin/$a"
	done
	for t in $VM_TOOLS; do
		p="$(vm_which "$t" || true)"
		if [ -z "$p" ]; then
			vm_log "warning: host tool $t not found; the guest uses busybox's if any"
			continue
		fi
		case "$p" in */sbin/*) _vm_copy_file "$p" "$root" "/usr/sbin/$t" ;; *) _vm_copy_file "$p" "$root" "/usr/bin/$t" ;; esac
		_vm_copy_libs "$p" "$root"
	done
	[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
	echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
	echo "root:x:0:" >"$root/etc/group"
	# /dev/console for the kernel before devtmpfs is mounted (best effort).
	mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
	: >"$root/etc/tierblk-modules"
	: >"$root/lib/modules/$VM_KVER/modules.dep"
	cp "$VM_KMODDIR/modules.builtin" "$root/lib/modules/$VM_KVER/" 2>/dev/null || true
	local m
	for m in $VM_MODULES; do
		_vm_add_module "$m" "$root"
	done
	vm_log "modules: $(tr '\n' ' ' <"$root/.mods-report")"
	cp "$root/.mods-report" "$root/etc/tierblk-modules-report"
	rm -f "$root/.mods-seen" "$root/.mods-report"
	_vm_write_init "$root"
	rm -f "$VM_CACHE"/initramfs-base-*.cpio
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$VM_BASE_CPIO.tmp.$$"
	mv "$VM_BASE_CPIO.tmp.$$" "$VM_BASE_CPIO"
	rm -rf "$root"
	export VM_BASE_CPIO
}

_vm_shquote() {
	# single-quote for /bin/sh
	printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

_vm_wants_extra() {
	# _vm_wants_extra EXTRAS NAME: whether EXTRAS (" a b? c ") asks for NAME,
	# required (NAME) or optional (NAME?).
	case "$1" in *" $2 "* | *" $2? "*) return 0 ;; esac
	return 1
}

_vm_add_tool() {
	# _vm_add_tool EXTRAS NAME PATH DEST ROOT WHY: put the host tool PATH,
	# with its libraries, at DEST in the initramfs ROOT. An empty PATH (no
	# such tool) is fatal when EXTRAS asks for NAME, logged (WHY) when it
	# asks for NAME? only.
	local extras="$1" name="$2" path="$3" dest="$4" root="$5" why="$6"
	if [ -n "$path" ]; then
		_vm_copy_file "$path" "$root" "$dest"
		_vm_copy_libs "$path" "$root"
		return 0
	fi
	case "$extras" in *" $name "*) vm_die "vm-extra $name: $why" ;; esac
	vm_log "vm-extra $name?: $why"
}

vm_build_initramfs() {
	# vm_build_initramfs SCENARIO OUT [BIN_DIR]: base + scenario + lib.sh +
	# binaries + TIERBLK_* environment.
	local scenario="$1" out="$2" bindir="${3:-}" root v
	root="$(mktemp -d "${TMPDIR:-/tmp}/tierblk-initramfs-x.XXXXXX")"
	mkdir -p "$root/etc" "$root/usr/local/bin" "$root/tests/vm"
	cp "$scenario" "$root/scenario.sh"
	cp "$REPO/tests/vm/lib.sh" "$root/lib.sh"
	cp "$REPO/tests/vm/lib.sh" "$root/tests/vm/lib.sh"
	cp "$scenario" "$root/tests/vm/$(basename "$scenario")"
	if [ -n "$bindir" ]; then
		for v in tierblkd tierblk; do
			_vm_copy_file "$bindir/$v" "$root" "/usr/local/bin/$v"
		done
		# The path breaker of tests/vm/cluster.sh (optional with a prebuilt
		# TIERBLK_BIN_DIR), and the zero-copy probe of
		# tests/vm/zero-copy-probe.sh (only where it was built).
		for v in faultproxy zc_probe; do
			if [ -x "$bindir/examples/$v" ]; then
				_vm_copy_file "$bindir/examples/$v" "$root" "/usr/local/bin/$v"
			fi
		done
	fi
	{
		echo "# TIERBLK_* variables passed from the host by scripts/vm-run"
		while IFS= read -r v; do
			case "$v" in TIERBLK_BIN_DIR | TIERBLK_VM_CACHE) continue ;; esac
			echo "export $v=$(_vm_shquote "${!v}")"
		done < <(compgen -e | grep '^TIERBLK_' || true)
	} >"$root/etc/tierblk-env"
	# Dependencies of our binaries (not in the base normally: libgcc_s etc.).
	local extra
	extra="$(mktemp -d "${TMPDIR:-/tmp}/tierblk-initramfs-l.XXXXXX")"
	if [ -n "$bindir" ]; then
		for v in tierblkd tierblk; do _vm_copy_libs "$bindir/$v" "$extra"; done
		(cd "$extra" && find . -mindepth 1 -type f) | while read -r v; do
			_vm_copy_file "$extra/$v" "$root" "$v"
		done
	fi
	rm -rf "$extra"
	# Extras a scenario asks for with `# vm-extra: udev perf`, or a run with
	# TIERBLK_VM_EXTRA="perf".
	local extras
	extras=" $(sed -n 's/^# vm-extra://p' "$scenario" | tr '\n' ' ') ${TIERBLK_VM_EXTRA:-} "
	case "$extras" in *" udev "*)
		# shellcheck source=scripts/lib/vm-udev.sh
		. "$REPO/scripts/lib/vm-udev.sh"
		vm_udev_add "$root" || vm_die "the scenario needs udev in the guest"
		;;
	esac
	# The host's perf (Debian's linux-perf): software events (cpu-clock)
	# sample fine under TCG, which has no PMU.
	if _vm_wants_extra "$extras" perf; then
		_vm_add_tool "$extras" perf "$(vm_which perf || true)" /usr/bin/perf "$root" \
			"no perf on the host (apt-get install linux-perf)"
	fi
	# rublk (crates.io), the ublk maintainers' server: scripts/bench's ublk
	# reference.
	if _vm_wants_extra "$extras" rublk; then
		_vm_add_tool "$extras" rublk "$(vm_which rublk || true)" /usr/local/bin/rublk "$root" \
			"no rublk on the host (cargo install rublk): no ublk reference in this run"
	fi
	# mdadm, for md arrays with a superblock (scripts/bench's md peers with a
	# write-intent bitmap): the host's, or one taken out of Debian's package
	# (downloaded into the VM cache, never installed).
	if _vm_wants_extra "$extras" mdadm; then
		_vm_add_tool "$extras" mdadm "$(vm_which mdadm || _vm_fetch_mdadm || true)" /sbin/mdadm "$root" \
			"no mdadm on the host and apt-get download mdadm failed: md peers without a bitmap only"
	fi
	cp "$VM_BASE_CPIO" "$out"
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >>"$out"
	rm -rf "$root"
}

# --- qemu ---------------------------------------------------------------------

vm_kvm_usable() {
	[ -e /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]
}

# vm_qemu_start ACCEL LOG: starts qemu in the background (VM_QEMU_PID). Uses
# VM_INITRD, VM_DISK_FILES (array), VM_MEM, VM_SMP, VM_CMDLINE_EXTRA.
vm_qemu_start() {
	local accel="$1" log="$2" i=0 f cpu
	local args=(-nographic -monitor none -serial stdio -no-reboot
		-accel "$accel" -m "$VM_MEM" -smp "$VM_SMP"
		-kernel "$VM_VMLINUZ" -initrd "$VM_INITRD"
		-append "console=ttyS0 panic=-1 loglevel=${TIERBLK_VM_LOGLEVEL:-4} rdinit=/init ${VM_CMDLINE_EXTRA:-}"
		-nic none)
	if [ "$accel" = kvm ]; then cpu=host; else cpu=max; fi
	args+=(-cpu "$cpu")
	for f in "${VM_DISK_FILES[@]}"; do
		args+=(-drive "file=$f,if=none,id=d$i,format=raw,cache=writeback,discard=unmap"
			-device "virtio-blk-pci,drive=d$i,serial=tierblk$i")
		i=$((i + 1))
	done
	qemu-system-x86_64 "${args[@]}" </dev/null >>"$log" 2>&1 &
	VM_QEMU_PID=$!
}

vm_uptime_s() { awk '{print $1}' /proc/uptime; }
