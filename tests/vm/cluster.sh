#!/bin/sh
# Three storage processors in one VM (spec sections III-V): sp1 owns vda and
# vdb, sp2 owns vdc, sp3 owns vdd. sp1 is elected master by rule (most ALUs,
# [069]), claims the peers' ALUs through the fabric and exposes a RAID10
# whose every mirror has a leg in another process (remote references,
# [0109]-[0110]). ext4 on it, fio write+verify on a file under load; one of
# the two fabric paths to sp2 and to sp3 is broken in the middle ([046],
# section VII): zero I/O errors, path list says which path failed, and the
# reference fails back when the path returns. e2fsck -fn clean at the end.
# vm-run: --disks 4 --disk-size 384M
set -eu
. "$(dirname "$0")/lib.sh"

require_disks 4
command -v faultproxy >/dev/null || fail "faultproxy missing (built by scripts/lib/vm.sh)"
sp_secret
TIERBLK_SOCKET="$R/sp1.ctl"

# sp2 and sp3 are each reached over two paths: through a proxy (preferred,
# so that I/O starts there) and directly.
proxy() {
	faultproxy "$R/$1-p.sock" "$R/$1.sock" &
	eval "PROXY_$1=\$!"
}
proxy sp2
proxy sp3

trap 'sp_cleanup $?' EXIT

start_sp sp1 --alu /dev/vda --alu /dev/vdb \
	--peer "sp2=unix:$R/sp2-p.sock,unix:$R/sp2.sock" \
	--peer "sp3=unix:$R/sp3-p.sock,unix:$R/sp3.sock"
start_sp sp2 --alu /dev/vdc --peer "sp1=unix:$R/sp1.sock" --peer "sp3=unix:$R/sp3.sock"
start_sp sp3 --alu /dev/vdd --peer "sp1=unix:$R/sp1.sock" --peer "sp2=unix:$R/sp2.sock"

i=0
until tbj sp list 2>/dev/null | grep -q '"name":"sp1","role":"master"'; do
	i=$((i + 1))
	[ "$i" -lt 100 ] || fail "sp1 never became master: $(tbj sp list 2>&1)"
	sleep 0.2
done
tb sp list
ok "sp1 is master"
for n in sp2 sp3; do
	i=0
	until tierblk --socket "$R/$n.ctl" --json sp list 2>/dev/null | grep -q "\"name\":\"$n\",\"role\":\"peer\""; do
		i=$((i + 1))
		[ "$i" -lt 100 ] || fail "$n never became a peer: $(tierblk --socket "$R/$n.ctl" --json sp list 2>&1)"
		sleep 0.2
	done
	e=$(tierblk --socket "$R/$n.ctl" vol create x --size 8M 2>&1) && fail "$n accepted vol create"
	case "$e" in *"not the master"*) ;; *) fail "$n: unexpected refusal: $e" ;; esac
done
ok "peers refuse administration, naming the master"

for a in /dev/vda /dev/vdb sp2:/dev/vdc sp3:/dev/vdd; do tb alu claim "$a" >/dev/null; done
tb alu list
# Mirror 0: vda + sp2's vdc; mirror 1: vdb + sp3's vdd.
tb vol create r10 --size 256M --layout raid10 --stripes 2 --copies 2 \
	--alu /dev/vda --alu sp2:/dev/vdc --alu /dev/vdb --alu sp3:/dev/vdd
wait_vol_state r10 online 30
dev=$(vol_device r10)
tb vol show r10
tb path list
[ "$(tbj path list | grep -o '"state":"up"' | wc -l)" -ge 2 ] || fail "remote paths not up"
ok "r10 online as $dev with remote references to sp2 and sp3"

mkfs.ext4 -q -F "$dev"
mount "$dev" /mnt
engine=$(fio_engine)
fio_load /mnt/data 96M
fio_pid=$FIO_PID
sleep 5
# shellcheck disable=SC2154
kill -9 "$PROXY_sp2" "$PROXY_sp3"
ok "the preferred paths to sp2 and sp3 are broken under load"
wait_fio "$fio_pid" /tmp/fio-load.out "while a fabric path broke"
ok "fio: write + verify with 0 errors across the path failure"
dmesg | grep -i "I/O error, dev ublkb" && fail "the kernel saw I/O errors on $dev"
ok "no I/O error reached the block layer"
tb path list
# path_of ENDPOINT: the `path list` JSON object of that endpoint.
path_of() { tbj path list | grep -o '{[^}]*}' | grep "\"endpoint\":\"unix:$R/$1\""; }
p=$(path_of sp2-p.sock)
json_has "$p" state '"down"' || fail "the broken path to sp2 is not reported down: $p"
[ "$(json_num "$p" failures)" -ge 1 ] || fail "no failure counted on the broken path: $p"
p=$(path_of sp2.sock)
json_has "$p" state '"up"' || fail "the direct path to sp2 is not up: $p"
[ "$(json_num "$p" active)" -ge 1 ] || fail "no queue moved to the direct path: $p"
tb vol show r10 | head -n 3
j=$(vol_json r10)
case "$j" in *'"state":"online"'*) ;; *) fail "r10 not optimal after the path failure: $j" ;; esac
json_has "$j" health '"failed"' && fail "a leg failed over a path failure: $j"
ok "path failure cost no leg: r10 still online and whole"

# The path returns: the references fail back to it.
proxy sp2
proxy sp3
sleep 3
dd if="$dev" of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
fio --name=load --filename=/mnt/data --rw=randwrite --bs=4k --direct=1 --ioengine=$engine \
	--iodepth=16 --size=96M --verify=crc32c --verify_fatal=1 --randrepeat=1 --verify_only \
	--output-format=terse --terse-version=3 >/tmp/fio-re.out 2>&1 || {
	cat /tmp/fio-re.out
	fail "verify after failback failed"
}
tb path list
p=$(path_of sp2-p.sock)
json_has "$p" state '"up"' && [ "$(json_num "$p" active)" -ge 1 ] ||
	fail "no queue failed back to the preferred path to sp2: $p"
ok "failed back to the returned path; data verified"

umount /mnt
fsck_clean "$dev" "e2fsck found problems"
ok "e2fsck -fn clean"

# The exposure map: r10 exposed on sp2 as well, a tier-2 tree of its own
# (local reference to vdc, remote references to sp1's and sp3's ALUs).
tb vol expose r10 --on sp2
TB2="tierblk --socket $R/sp2.ctl"
dev2=$($TB2 --json vol show r10 | sed -n 's/.*"device":"\([^"]*\)".*/\1/p')
[ -n "$dev2" ] && [ "$dev2" != "$dev" ] || fail "sp2 did not expose r10: $($TB2 --json vol show r10)"
$TB2 vol list
ok "r10 exposed by sp2 as $dev2"
a=$(dd if="$dev" bs=1M count=64 iflag=direct 2>/dev/null | sha256sum)
b=$(dd if="$dev2" bs=1M count=64 iflag=direct 2>/dev/null | sha256sum)
[ "$a" = "$b" ] || fail "the two exposures read differently"
fsck_clean "$dev2" "e2fsck through sp2 found problems"
ok "both exposures read the same 64 MiB; e2fsck through sp2 clean"
# A write through sp2 is read back through sp1.
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/tmp/pat of="$dev2" bs=1M seek=200 count=4 oflag=direct conv=fsync 2>/dev/null
a=$(dd if="$dev" bs=1M skip=200 count=4 iflag=direct 2>/dev/null | sha256sum)
b=$(sha256sum </tmp/pat)
[ "$a" = "$b" ] || fail "a write through sp2 is not read through sp1"
ok "written through sp2, read back through sp1"

# Quiescence across SPs (spec IX, Fig. 15): the master quiesces r10 on every
# SP exposing it; a write through sp2 is held, not failed, until resume.
tb vol quiesce r10
for s in "$TIERBLK_SOCKET" "$R/sp2.ctl"; do
	tierblk --socket "$s" --json vol show r10 | grep -q '"state":"quiesced"' ||
		fail "r10 not quiesced on $s: $(tierblk --socket "$s" --json vol show r10)"
done
dd if=/tmp/pat of="$dev2" bs=1M seek=180 count=4 oflag=direct conv=fsync 2>/dev/null &
dd_pid=$!
sleep 3
kill -0 "$dd_pid" || fail "a write through sp2 went through a quiesced volume"
tb vol resume r10
wait "$dd_pid" || fail "the held write failed"
a=$(dd if="$dev" bs=1M skip=180 count=4 iflag=direct 2>/dev/null | sha256sum)
[ "$a" = "$b" ] || fail "the held write is not there after resume"
ok "quiesced on both SPs: a write through sp2 was held, then completed on resume"
# A snapshot is kept by copy-on-write on one SP: not while sp2 also writes.
e=$(tb snap create r10 s1 2>&1) && fail "a snapshot of r10 was taken while sp2 exposes it"
case "$e" in *"also exposed on sp2"*) ;; *) fail "unexpected: $e" ;; esac
ok "no snapshot while another SP exposes the volume"
# Nor a removal: sp2's tree would run on freed partitions ([0115]).
e=$(tb vol remove r10 2>&1) && fail "r10 was removed while sp2 exposes it"
case "$e" in *"exposed on sp sp2"*"vol unexpose"*) ;; *) fail "unexpected: $e" ;; esac
ok "no removal while another SP exposes the volume"
tb vol unexpose r10 --on sp2
[ -e "$dev2" ] && fail "$dev2 still exists after unexpose"
e=$(tb vol unexpose r10 --on sp1 2>&1) && fail "unexposing the last exposure worked"
case "$e" in *"only exposure"*) ;; *) fail "unexpected: $e" ;; esac
ok "unexposed from sp2; the last exposure stays"
