#!/usr/bin/env bash
# The Debian package, installed for real: build it (scripts/deb.sh) or take PATH.deb, install it
# with apt-get, check what it installed, mount a prefix of the test bucket from a line added to
# /etc/fstab (type fuse.ssecfs, through fuse3's mount.fuse3), write a file, remount, read it,
# mount it again with `mount -t ssecfs` (through /usr/sbin/mount.ssecfs), then remove the package.
#
#   scripts/test-deb.sh [PATH.deb]
#
# Run as root, with a running S3 server in the environment (`eval "$(scripts/test-server.sh)"`:
# S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_BUCKET, AWS_REGION). scripts/test.sh
# runs it after the cargo tests. The mounts get only what the fstab line gives (key, credentials
# file, options): mount(8) runs in an environment holding just PATH. Whatever happens, the trap
# leaves /etc/fstab byte-identical, unmounts, removes the package if it is still installed, and
# puts back a /usr/sbin/mount.ssecfs of a source install (scripts/install.sh) that it replaced.
# The last line says what passed, or which step failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
export PATH=$HOME/.cargo/bin:$PATH
export DEBIAN_FRONTEND=noninteractive

say() { echo "test-deb.sh: $*" >&2; }
die() {
	say "$*"
	exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root (apt-get, /etc/fstab, mount)"
for v in S3_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY S3_BUCKET; do
	[[ -n ${!v:-} ]] || die "$v is unset: run with a server's environment (eval \"\$(scripts/test-server.sh)\")"
done

step=setup
checks=0
run() { # description command...: one check; its name is the failing step if it fails
	step=$1
	shift
	"$@"
	checks=$((checks + 1))
}
# bounded: a hung mount or FUSE request must not hang the caller
t() { timeout -k 5 120 "$@"; }
clean_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

tmp=$(mktemp -d /tmp/ssecfs-test-deb.XXXXXX)
mp=$tmp/mnt
fstab_backup=$tmp/fstab.orig
cp -p /etc/fstab "$fstab_backup"
src="$S3_BUCKET:deb-test-$$"
installed_by_us=0
helper=/usr/sbin/mount.ssecfs
helper_before=
if [[ -L $helper ]] && ! dpkg -S "$helper" >/dev/null 2>&1; then
	helper_before=$(readlink "$helper") # a source install's; dpkg will replace it
fi
local_before=$(stat -c '%F %s %Y' /usr/local/bin/ssecfs 2>/dev/null || echo none)

# The executables of the ssecfs processes whose arguments name the mountpoint, one a line.
daemons() {
	local p exe args
	for p in /proc/[0-9]*; do
		mapfile -d '' args 2>/dev/null <"$p/cmdline" || continue
		[[ ${args[0]:-} == *ssecfs && " ${args[*]} " == *" $mp "* ]] || continue
		exe=$(readlink "$p/exe") && echo "${exe% (deleted)}"
	done
	return 0
}
served_by() { # EXE: the mount's daemon runs it
	local d
	d=$(daemons)
	if [[ -z $d ]] || grep -qvxF -- "$1" <<<"$d"; then
		say "the mount at $mp is served by '${d:-nothing}', not $1"
		return 1
	fi
}
mounted() { awk -v m="$mp" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts; }
wait_daemons_gone() { # the daemon uploads what is pending, then exits after the unmount
	local until=$((SECONDS + 60))
	while ((SECONDS < until)); do
		[[ -z $(daemons) ]] && return 0
		sleep 0.1
	done
	say "a daemon for $mp is still running 60 s after the unmount: $(daemons)"
	return 1
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local rc=$? failed_step=$step
	set +e
	if mounted; then
		umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
	fi
	wait_daemons_gone >/dev/null 2>&1
	if ! cmp -s "$fstab_backup" /etc/fstab; then
		cat "$fstab_backup" >/etc/fstab
	fi
	if ! cmp -s "$fstab_backup" /etc/fstab; then
		say "WARNING: could not restore /etc/fstab; the original is in $fstab_backup"
		rc=1
	fi
	if ((installed_by_us)) && dpkg-query -W -f='${Status}' ssecfs 2>/dev/null | grep -q 'ok installed'; then
		apt-get remove -y -q ssecfs >/dev/null 2>&1 || say "WARNING: apt-get remove ssecfs failed"
	fi
	if [[ -n $helper_before && ! -e $helper && ! -L $helper ]]; then
		ln -s "$helper_before" "$helper"
	fi
	# never rm -r through a mount: that would delete the objects
	if ! mounted && cmp -s "$fstab_backup" /etc/fstab; then
		rm -rf "$tmp"
	fi
	if ((rc == 0)); then
		say "passed: $checks checks (install, files, fstab mount, remount, mount -t ssecfs, remove)"
	else
		say "FAILED at step '$failed_step' (exit $rc) after $checks passed checks"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the package ------------------------------------------------------------------------------
step="build the package (scripts/deb.sh)"
deb=${1:-$(scripts/deb.sh)}
deb=$(realpath "$deb") # apt-get takes a local file by a path with a slash
if dpkg-query -W -f='${Status}' ssecfs 2>/dev/null | grep -q 'ok installed'; then
	say "note: ssecfs $(dpkg-query -W -f='${Version}' ssecfs) was installed already; this test replaces and then removes it"
fi
say "installing $deb"
installed_by_us=1
run "apt-get install" apt-get install -y -q "$deb"
run "/usr/bin/ssecfs --version" /usr/bin/ssecfs --version
run "mount.ssecfs is a link to /usr/bin/ssecfs" test "$(readlink -f $helper)" = /usr/bin/ssecfs
run "man -w ssecfs" man -w ssecfs
run "man pages" test -s /usr/share/man/man1/ssecfs.1.gz -a -s /usr/share/man/man1/ssecfs-mount.1.gz
run "bash completion" grep -q keygen /usr/share/bash-completion/completions/ssecfs
run "zsh completion" grep -q '#compdef ssecfs' /usr/share/zsh/vendor-completions/_ssecfs
run "fish completion" grep -q keygen /usr/share/fish/vendor_completions.d/ssecfs.fish
run "docs and examples" test -s /usr/share/doc/ssecfs/README.md -a -s /usr/share/doc/ssecfs/docs/CONFIGURATION.md \
	-a -s /usr/share/doc/ssecfs/examples/fstab -a -s /usr/share/doc/ssecfs/examples/mnt-photos.mount

# --- a mount from /etc/fstab ------------------------------------------------------------------
key=$tmp/key
creds=$tmp/aws-credentials
run "ssecfs keygen" /usr/bin/ssecfs keygen "$key" >/dev/null
(
	umask 077
	printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
		"$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$creds"
)
mkdir "$mp"
head -c 3000000 /dev/urandom >"$tmp/payload" # not a whole number of blocks
opts="endpoint=$S3_ENDPOINT,allow-http,key-file=$key,credentials=$creds,cache-size=64M,log-file=$tmp/ssecfs.log"
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
[[ -z $region ]] || opts+=",region=$region"
step="add the fstab line"
[[ -z $(tail -c 1 /etc/fstab) ]] || echo >>/etc/fstab # the file may lack a final newline
printf '%s  %s  fuse.ssecfs  noauto,nofail,_netdev,%s  0 0\n' "$src" "$mp" "$opts" >>/etc/fstab
say "fstab: $(tail -n 1 /etc/fstab)"

# mount(8) runs its helpers with an empty environment: for fuse.ssecfs, mount.fuse3's /bin/sh
# finds `ssecfs` on the shell's default PATH, where a source install in /usr/local/bin comes
# before the package's /usr/bin (that is what every fuse.ssecfs mount on this machine runs).
fuse_ssecfs=$(readlink -f "$(env -i /bin/sh -c 'command -v ssecfs')")
[[ $fuse_ssecfs == /usr/bin/ssecfs ]] ||
	say "note: fuse.ssecfs mounts here run $fuse_ssecfs (a source install ahead of /usr/bin on the default PATH); mount -t ssecfs below runs /usr/bin/ssecfs"
run "mount $mp (fstab)" t "${clean_env[@]}" mount "$mp"
run "mounted" mounted
run "served by $fuse_ssecfs" served_by "$fuse_ssecfs"
run "cp a file in" t cp "$tmp/payload" "$mp/hello.bin"
run "read it back" t cmp "$tmp/payload" "$mp/hello.bin"
run "umount" t umount "$mp"
run "the daemon exits" wait_daemons_gone
run "mount again (fstab)" t "${clean_env[@]}" mount "$mp"
run "the file is still there" t cmp "$tmp/payload" "$mp/hello.bin"
run "umount" t umount "$mp"
run "the daemon exits" wait_daemons_gone

# --- mount -t ssecfs: the fstab line's source and options, through /usr/sbin/mount.ssecfs -----
run "mount -t ssecfs $mp (fstab)" t "${clean_env[@]}" mount -t ssecfs "$mp"
run "served by /usr/bin/ssecfs" served_by /usr/bin/ssecfs
run "the file through mount -t ssecfs" t cmp "$tmp/payload" "$mp/hello.bin"
run "rm the file" t rm "$mp/hello.bin"
run "umount" t umount "$mp"
run "the daemon exits" wait_daemons_gone

# --- remove -----------------------------------------------------------------------------------
step="restore /etc/fstab"
cat "$fstab_backup" >/etc/fstab
run "/etc/fstab is as it was" cmp "$fstab_backup" /etc/fstab
run "apt-get remove" apt-get remove -y -q ssecfs
installed_by_us=0
run "/usr/bin/ssecfs is gone" test ! -e /usr/bin/ssecfs
run "mount.ssecfs is gone" test ! -e $helper -a ! -L $helper
run "dpkg: not installed" test -z "$(dpkg-query -W -f='${Status}' ssecfs 2>/dev/null | grep 'ok installed')"
run "/usr/local/bin/ssecfs untouched" test "$(stat -c '%F %s %Y' /usr/local/bin/ssecfs 2>/dev/null || echo none)" = "$local_before"
step="(none)"
