#!/usr/bin/env bash
# pjdfstest (the POSIX suite FUSE and BSD filesystems are judged by; its Rust rewrite from
# crates.io) on a fresh `--allow-other` ssecfs mount of the local Garage, as root.
#
#   scripts/pjdfstest.sh               run, print passed/total per set and in all
#   scripts/pjdfstest.sh --floor 95    also fail unless the 11 sets pass at least 95%
#
# The 11 sets that apply to an object store are counted (chmod chown ftruncate mkdir open rename
# rmdir symlink truncate unlink utimensat); link, mkfifo, mknod and posix_fallocate are printed
# too. Tests that need hard links (an object store has none; SEMANTICS.md) are listed below by
# exact name: they are shown as "n/a" with their outcome and left out of the percentage, never
# counted as passed. Tests the suite skips (a read-only remount, a second filesystem) are left
# out too. Needs S3_ENDPOINT, S3_BUCKET and credentials in the environment
# (`eval "$(scripts/test-server.sh)"`), or starts a Garage like scripts/test.sh.
# Installs pjdfstest (`cargo install pjdfstest --locked`, kept in ~/.cargo/bin) and the
# unprivileged users it switches to, if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
export PATH=$HOME/.cargo/bin:$PATH

floor=
while (($#)); do
	case $1 in
	--floor)
		floor=$2
		shift 2
		;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*)
		echo "pjdfstest.sh: unknown argument '$1' (see --help)" >&2
		exit 2
		;;
	esac
done
[[ $(id -u) == 0 ]] || {
	echo "pjdfstest.sh: needs root (it switches users and checks multi-user rules)" >&2
	exit 2
}

# tests that need link(2): not applicable to an object store (SEMANTICS.md, "Hard links")
NEEDS_HARD_LINKS=(
	rename::preserve_metadata::{regular,fifo,block,char,socket}
	rename::to_multiply_linked::{regular,fifo,block,char,socket}
	unlink::update_ctime_success::{regular,fifo,block,char,socket}
	unlink::unchanged_ctime_failed::{regular,fifo,block,char,socket}
)
SETS="chmod chown ftruncate mkdir open rename rmdir symlink truncate unlink utimensat"
OTHERS="link mkfifo mknod posix_fallocate"

if ! command -v pjdfstest >/dev/null 2>&1; then
	echo "pjdfstest.sh: cargo install pjdfstest --locked --version 0.2.2 (~2 min)" >&2
	(cd / && env -u CARGO_TARGET_DIR cargo install pjdfstest --locked --version 0.2.2) >&2
fi
getent group nogroup >/dev/null || groupadd nogroup
getent passwd tests >/dev/null || useradd --system --user-group --no-create-home tests

cargo build --release --bin ssecfs >&2
bin=$CARGO_TARGET_DIR/release/ssecfs

started=0
if [[ -z ${S3_ENDPOINT:-} ]]; then
	env_lines=$(scripts/test-server.sh)
	eval "$env_lines"
	started=1
fi
# every directory down to the mount must be searchable by the users pjdfstest switches to
work=$(mktemp -d /tmp/ssecfs-pjdfstest.XXXXXX)
chmod 755 "$work"
mkdir -m 700 "$work/private"
mnt=$work/mnt
mkdir "$mnt"
cleanup() {
	local rc=$?
	fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true
	((started == 0)) || scripts/test-server.sh stop || true
	rm -rf -- "$work"
	exit "$rc"
}
trap cleanup EXIT

(umask 077 && head -c 32 /dev/urandom >"$work/private/key")
http=()
[[ $S3_ENDPOINT == http://* ]] && http=(--allow-http)
prefix=pjdfstest-$(date +%s)-$$
"$bin" mount "$S3_BUCKET:$prefix" "$mnt" --endpoint "$S3_ENDPOINT" "${http[@]}" \
	--key-file "$work/private/key" --allow-other
cat >"$work/private/pjdfstest.toml" <<'EOF'
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.01

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
EOF

log=$work/private/pjdfstest.log
echo "pjdfstest.sh: running pjdfstest on $mnt ($S3_BUCKET:$prefix)" >&2
(cd "$mnt" && timeout 1200 pjdfstest -c "$work/private/pjdfstest.toml" -p "$mnt") >"$log" 2>&1 || true
mkdir -p "$CARGO_TARGET_DIR/test-logs"
cp "$log" "$CARGO_TARGET_DIR/test-logs/pjdfstest-$(date +%Y%m%d-%H%M%S).log"

# one line per test: "name outcome"
grep -E '^[a-z_]+::[A-Za-z0-9_:]+ +(ok|FAILED|skipped)$' "$log" | awk '{print $1, $2}' >"$work/private/results"
if ! grep -q '^Summary:' "$log"; then
	echo "pjdfstest.sh: FAILED: pjdfstest did not finish (log: $log)" >&2
	tail -n 30 "$log" >&2
	exit 1
fi
printf '%s\n' "${NEEDS_HARD_LINKS[@]}" >"$work/private/na"
awk -v sets="$SETS" -v others="$OTHERS" -v floor="$floor" '
	FNR == NR { na[$1] = 1; next }
	{
		split($1, p, "::"); s = p[1]; o = $2
		if (o == "skipped") { skip[s]++; next }
		if ($1 in na) { nas[s]++; naline = naline sprintf("  n/a %-48s %s\n", $1, o); next }
		tot[s]++
		if (o == "ok") ok[s]++
		else if (index(" " sets " ", " " s " ")) fails = fails sprintf("  FAILED %s\n", $1)
		else others_failed = others_failed " " $1
	}
	END {
		printf "%-16s %8s %6s %5s\n", "set", "passed", "skip", "n/a"
		n = split(sets, S, " ")
		for (i = 1; i <= n; i++) {
			s = S[i]; P += ok[s]; T += tot[s]
			printf "%-16s %4d/%-4d %5d %5d\n", s, ok[s], tot[s], skip[s], nas[s]
		}
		pct = T ? 100 * P / T : 0
		printf "%-16s %4d/%-4d  %.1f%%  (the 11 sets)\n", "all", P, T, pct
		m = split(others, O, " ")
		for (i = 1; i <= m; i++) {
			s = O[i]
			printf "%-16s %4d/%-4d %5d %5d  (not counted)\n", s, ok[s], tot[s], skip[s], nas[s]
		}
		if (naline != "") printf "not applicable (hard links; SEMANTICS.md):\n%s", naline
		if (fails != "") printf "failures:\n%s", fails
		if (others_failed != "") printf "failed in the sets not counted:%s\n", others_failed
		if (floor != "" && pct < floor) {
			printf "pjdfstest.sh: FAILED: %.1f%% of the 11 sets passed, below the floor of %s%%\n", pct, floor
			exit 1
		}
		printf "pjdfstest.sh: passed: %d/%d (%.1f%%) of the 11 sets%s\n", P, T, pct, floor != "" ? " (floor " floor "%)" : ""
	}' "$work/private/na" "$work/private/results"
