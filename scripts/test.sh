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
# Installs what is missing first (scripts/setup.sh: apt packages, Rust, Garage, cargo-deb).
# Builds into $CARGO_TARGET_DIR (default ~/.cache/ssecfs-target, shared with the other scripts).
# Every test binary runs even when one fails (--no-fail-fast). Then, for the whole suite (no
# arguments) as root, scripts/test-deb.sh: the Debian package, installed, mounted from
# /etc/fstab and removed (SSECFS_TEST_DEB=0 skips it, 1 runs it with arguments too). The output
# is also kept in $CARGO_TARGET_DIR/test-logs/, and the last line says which binaries and tests
# failed (and how the package test went). Then, on the same conditions, pjdfstest
# (scripts/pjdfstest.sh --floor 95; SSECFS_TEST_PJDFSTEST=0 skips it). Last, e2e_basic and
# e2e_rsync again on a debug build, whose daemon checks its lock order (SSECFS_TEST_DEBUG=0
# skips it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
export PATH=$HOME/.cargo/bin:$PATH

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
fail_fast_given=0
for a in ${cargo_args[@]+"${cargo_args[@]}"}; do
	[[ $a == --no-fail-fast ]] && fail_fast_given=1
done
[[ $fail_fast_given == 1 ]] || cargo_args=(--no-fail-fast ${cargo_args[@]+"${cargo_args[@]}"})

scripts/setup.sh

# shellcheck disable=SC2317 # called by the EXIT trap
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

# One line from cargo test's output (the log): the binaries (labelled as cargo test selects them:
# --lib, --bin X, --test X, --doc) that failed, with their failing tests, or what passed.
summarize() { # cargo-exit-status log-path
	awk -v rc="$1" -v log_path="$2" '
	function close_bin() {
		if (cur != "" && !result[cur]) { failed[cur] = 1; crashed[cur] = 1 }
	}
	function add_fail(name) {
		if (cur == "" || seen[cur, name]++) return
		names[cur] = names[cur] (nfail[cur]++ < 5 ? (nfail[cur] > 1 ? ", " : "") name : "")
	}
	/^ +Running / {
		close_bin()
		# "Running unittests src/lib.rs (DIR/deps/NAME-HASH)" or "Running tests/NAME.rs (...)"
		src = ($2 == "unittests") ? $3 : $2
		exe = $NF; gsub(/[()]/, "", exe); sub(/.*\//, "", exe); sub(/-[0-9a-f]+$/, "", exe)
		stem = src; sub(/.*\//, "", stem); sub(/\.rs$/, "", stem)
		if (src ~ /^tests\//) { if (stem == "main") { stem = src; sub(/^tests\//, "", stem); sub(/\/main\.rs$/, "", stem) } ; cur = "--test " stem }
		else if (src ~ /(^|\/)lib\.rs$/) cur = "--lib"
		else if (src ~ /(^|\/)main\.rs$/) cur = "--bin " exe
		else if (src ~ /(^|\/)bin\//) cur = "--bin " stem
		else cur = src
		order[++nbin] = cur; next
	}
	/^ +Doc-tests / { close_bin(); cur = "--doc"; order[++nbin] = cur; next }
	/^test result: / {
		result[cur] = 1
		if ($3 != "ok.") failed[cur] = 1
		for (i = 4; i <= NF; i++) {
			v = $(i - 1) + 0; w = $i; sub(/[;,]$/, "", w)
			if (w == "passed") passed += v; else if (w == "ignored") ignored += v
			else if (w == "filtered") filtered += v
		}
		next
	}
	/^test .* \.\.\. FAILED$/ { n = $0; sub(/^test /, "", n); sub(/ \.\.\. FAILED$/, "", n); add_fail(n); next }
	# the list at the end of a failing binary ("failures:", then the names indented by 4)
	/^failures:$/ { inlist = 1; got = 0; next }
	inlist && /^    [^ ]/ { n = $0; sub(/^    /, "", n); add_fail(n); got = 1; next }
	inlist && (/^---- / || (/^$/ && got)) { inlist = 0 }
	END {
		close_bin()
		nf = 0; out = ""
		for (i = 1; i <= nbin; i++) {
			b = order[i]
			if (!failed[b]) continue
			nf++
			d = crashed[b] ? "no test result: crashed or killed" : (nfail[b] ? nfail[b] " failed: " names[b] (nfail[b] > 5 ? ", ..." : "") : "failed")
			out = out (nf > 1 ? "; " : "") b " (" d ")"
		}
		counts = (passed + 0) " test" (passed == 1 ? "" : "s") " passed" (ignored ? ", " ignored " ignored" : "") (filtered ? ", " filtered " filtered out" : "")
		bins = nbin " test " (nbin == 1 ? "binary" : "binaries")
		if (nf) printf "test.sh: FAILED: %d of %s: %s. %s. Log: %s\n", nf, bins, out, counts, log_path
		else if (rc != 0 && nbin == 0) printf "test.sh: FAILED: cargo test exited %d before any test binary ran (build error?). Log: %s\n", rc, log_path
		else if (rc != 0) printf "test.sh: FAILED: cargo test exited %d, though the %s that ran passed (%s). Log: %s\n", rc, bins, counts, log_path
		else if (nbin == 0) printf "test.sh: no test binary ran. Log: %s\n", log_path
		else printf "test.sh: %s passed (%s). Log: %s\n", (nbin == 1 ? "the 1 test binary" : "all " bins), counts, log_path
	}' "$2"
}

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
logdir=$CARGO_TARGET_DIR/test-logs
mkdir -p "$logdir"
log=$logdir/test-$(date +%Y%m%d-%H%M%S)-$$.log
# keep the 20 newest logs (this one included)
find "$logdir" -maxdepth 1 -name 'test-*.log' -printf '%T@ %p\n' | sort -rn | tail -n +20 | cut -d' ' -f2- |
	while read -r old; do rm -f -- "$old"; done
rc=0
cargo test --release ${cargo_args[@]+"${cargo_args[@]}"} -- "${test_args[@]}" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
summary=$(summarize "$rc" "$log")

# Then the Debian package: built, installed, mounted from /etc/fstab, removed (test-deb.sh);
# with the whole suite (no arguments) as root. SSECFS_TEST_DEB=1 runs it anyway, 0 skips it.
deb_why=
case ${SSECFS_TEST_DEB:-} in
0) deb_why="SSECFS_TEST_DEB=0" ;;
1) ;;
*)
	if (($#)); then
		deb_why="arguments given; SSECFS_TEST_DEB=1 runs it"
	elif [[ $(id -u) != 0 ]]; then
		deb_why="needs root"
	fi
	;;
esac
log_suffix=" Log: $log"
# Add one stage's outcome to the summary line (before its " Log: ..."); a failed stage sets the
# exit status (unless an earlier one did) and makes the line a FAILED one.
add_stage() { # stage-exit-status text
	summary="${summary%"$log_suffix"}"
	summary="${summary%.}; $2.$log_suffix"
	if (($1 != 0)); then
		((rc != 0)) || rc=$1
		[[ $summary == "test.sh: FAILED: "* ]] || summary="test.sh: FAILED: ${summary#test.sh: }"
	fi
}
if [[ -n $deb_why ]]; then
	add_stage 0 "the Debian package test was skipped ($deb_why)"
else
	echo "test.sh: the Debian package (scripts/test-deb.sh)" >&2
	deb_rc=0
	scripts/test-deb.sh 2>&1 | tee -a "$log" || deb_rc=${PIPESTATUS[0]}
	deb_last=$(grep -E '^test-deb.sh: (passed|FAILED)' "$log" | tail -n 1 || true)
	deb_last=${deb_last#test-deb.sh: }
	((deb_rc == 0)) || deb_last="${deb_last:-FAILED (exit $deb_rc)} (scripts/test-deb.sh)"
	add_stage "$deb_rc" "the Debian package test ${deb_last:-passed}"
fi
# Then pjdfstest on an --allow-other mount (scripts/pjdfstest.sh), with the floor that only goes
# up: same conditions as the package test; SSECFS_TEST_PJDFSTEST=0 skips it, 1 runs it anyway.
pjd_why=
case ${SSECFS_TEST_PJDFSTEST:-} in
0) pjd_why="SSECFS_TEST_PJDFSTEST=0" ;;
1) ;;
*)
	if (($#)); then
		pjd_why="arguments given; SSECFS_TEST_PJDFSTEST=1 runs it"
	elif [[ $(id -u) != 0 ]]; then
		pjd_why="needs root"
	fi
	;;
esac
if [[ -n $pjd_why ]]; then
	add_stage 0 "pjdfstest was skipped ($pjd_why)"
else
	echo "test.sh: pjdfstest (scripts/pjdfstest.sh --floor ${SSECFS_PJDFSTEST_FLOOR:=95})" >&2
	pjd_rc=0
	scripts/pjdfstest.sh --floor "$SSECFS_PJDFSTEST_FLOOR" 2>&1 | tee -a "$log" || pjd_rc=${PIPESTATUS[0]}
	pjd_last=$(grep -E '^pjdfstest.sh: (passed|FAILED)' "$log" | tail -n 1 || true)
	pjd_last=${pjd_last#pjdfstest.sh: }
	((pjd_rc == 0)) || pjd_last=${pjd_last:-FAILED (exit $pjd_rc)}
	add_stage "$pjd_rc" "pjdfstest ${pjd_last:-passed}"
fi
# Last, the race-prone end-to-end tests again on a debug build: there the daemon checks its
# lock order at every lock it takes (src/sync.rs), and its slower steps open interleavings the
# release build rarely hits (a lost write was found that way). With the whole suite only;
# SSECFS_TEST_DEBUG=0 skips it, 1 runs it anyway.
dbg_tests=(e2e_basic e2e_rsync)
dbg_why=
case ${SSECFS_TEST_DEBUG:-} in
0) dbg_why="SSECFS_TEST_DEBUG=0" ;;
1) ;;
*) (($# == 0)) || dbg_why="arguments given; SSECFS_TEST_DEBUG=1 runs it" ;;
esac
if [[ -n $dbg_why ]]; then
	add_stage 0 "the debug-build pass was skipped ($dbg_why)"
else
	echo "test.sh: ${dbg_tests[*]} again, debug build" >&2
	dbg_log=${log%.log}-debug.log
	dbg_rc=0
	cargo test --no-fail-fast "${dbg_tests[@]/#/--test=}" -- "${test_args[@]}" 2>&1 | tee "$dbg_log" || dbg_rc=${PIPESTATUS[0]}
	dbg=$(summarize "$dbg_rc" "$dbg_log")
	dbg=${dbg#test.sh: }
	dbg=${dbg%" Log: $dbg_log"}
	dbg_what=${dbg_tests[*]}
	((dbg_rc == 0)) || dbg_what+=", log $dbg_log"
	add_stage "$dbg_rc" "debug build ($dbg_what): ${dbg%.}"
fi
echo "$summary" >&2
exit "$rc"
