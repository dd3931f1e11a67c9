#!/usr/bin/env bash
# Run the whole ssecfs test suite against a local Garage (SSE-C needs a real S3 server).
#
#   scripts/test.sh                          everything: cargo test --release -- --test-threads=4
#   scripts/test.sh --test fuse_mount        extra cargo args go before `--`
#   scripts/test.sh -- --nocapture some_name test-binary args go after `--`
#
# If S3_ENDPOINT is unset, starts a fresh server with scripts/test-server.sh and stops it on exit;
# if it is set (e.g. `eval "$(scripts/test-server.sh)"` already done, or .ci/run), uses that one.
# TEST_THREADS (default 4) sets --test-threads unless given explicitly after `--`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo_args=()
test_args=()
seen_sep=0
for a in "$@"; do
	if [[ $seen_sep == 0 && $a == -- ]]; then
		seen_sep=1
	elif [[ $seen_sep == 0 ]]; then
		cargo_args+=("$a")
	else
		test_args+=("$a")
	fi
done
threads_given=0
for a in ${test_args[@]+"${test_args[@]}"}; do
	[[ $a == --test-threads* ]] && threads_given=1
done
[[ $threads_given == 1 ]] || test_args=(--test-threads="${TEST_THREADS:-4}" ${test_args[@]+"${test_args[@]}"})

cleanup() {
	local rc=$?
	local dir=${SSECFS_TEST_DIR:-${XDG_RUNTIME_DIR:-/tmp}/ssecfs-garage}
	# leftover FUSE mounts of crashed tests under the test dir, deepest first
	if [[ -r /proc/self/mounts ]] && command -v fusermount3 >/dev/null 2>&1; then
		local mp
		while read -r mp; do
			fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
		done < <(awk -v d="$dir/" '$3 ~ /^fuse/ { mp = $2; gsub(/\\040/, " ", mp); if (index(mp "/", d) == 1) print mp }' /proc/self/mounts | sort -r)
	fi
	scripts/test-server.sh stop || true
	exit "$rc"
}

if [[ -z ${S3_ENDPOINT:-} ]]; then
	env_lines=$(scripts/test-server.sh)
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	eval "$env_lines"
	echo "test.sh: started Garage at $S3_ENDPOINT (bucket $S3_BUCKET, dir $SSECFS_TEST_DIR)" >&2
else
	echo "test.sh: using the S3 server at $S3_ENDPOINT (bucket ${S3_BUCKET:-?})" >&2
fi

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
cargo test --release ${cargo_args[@]+"${cargo_args[@]}"} -- "${test_args[@]}"
