#!/usr/bin/env bash
# Fuzz the parsers that take user input (key files, -o mount options, sizes) with cargo-fuzz.
#
#   scripts/fuzz.sh            every target for 20 s (what .ci/run does)
#   scripts/fuzz.sh 600        every target for 10 minutes (a longer run by hand)
#   scripts/fuzz.sh 60 key_file    one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; installed here when missing). libFuzzer
# needs nightly compiler flags: on a stable toolchain they are unlocked with RUSTC_BOOTSTRAP=1
# (only for this build, which goes to its own target dir). No sanitizer (-s none): the code under
# test is safe Rust, and what we look for is panics, overflows (debug assertions are on) and
# hangs. Crashes are saved under fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s none <target> fuzz/artifacts/<target>/<file>
# The corpus grows in fuzz/corpus/<target>/ (ignored by git).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_EACH=${1:-20}
shift || true
export PATH=$HOME/.cargo/bin:$PATH
export RUSTC_BOOTSTRAP=1
# its own build tree (instrumented builds must not mix with the project's)
TARGET_DIR=${SSECFS_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}/fuzz}

if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
	(cd / && env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked) >&2
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
	mapfile -t targets < <(cargo fuzz list)
fi

flags=(-O -a -s none --target-dir "$TARGET_DIR")
cargo fuzz build "${flags[@]}" "${targets[@]:0:1}" >/dev/null 2>&1 || true # warm the shared deps
rc=0
for t in "${targets[@]}"; do
	mkdir -p "fuzz/corpus/$t"
	echo "=== fuzz $t for ${SECONDS_EACH}s" >&2
	log=$(mktemp)
	if cargo fuzz run "${flags[@]}" "$t" -- -max_total_time="$SECONDS_EACH" -max_len=4096 \
		-timeout=10 -print_final_stats=1 >"$log" 2>&1; then
		grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$log" | tail -n 2 >&2 || true
	else
		rc=1
		echo "fuzz.sh: $t FAILED; last lines:" >&2
		tail -n 40 "$log" >&2
	fi
	rm -f "$log"
done
exit "$rc"
