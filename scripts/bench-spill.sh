#!/usr/bin/env bash
# Random reads over a working set 4x the locked cache, with and without the sealed spill tier.
#
#   scripts/bench-spill.sh [--no-build]
#
# Uses the test server (scripts/test-server.sh; started here unless S3_ENDPOINT is set) and
# its bucket ($S3_BUCKET). Writes a WORKSET file of random bytes through a mount, then for each mode mounts
# fresh (cold cache) and runs fio: PASSES passes of 64 KiB random reads (O_DIRECT, so every
# read reaches ssecfs, not the kernel page cache), 4 jobs each covering its own quarter of the
# file once per pass. Prints a Markdown table (MiB/s per pass) on stdout; progress on stderr.
#
# Environment: CACHE (default 32M), WORKSET (default 4x CACHE, in MiB), PASSES (default 3),
# SPILL_SIZE (default 1G), CARGO_TARGET_DIR (default ~/.cache/ssecfs-target).
# The file holds random bytes (no plaintext of value), created through the mount only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD=1
[[ "${1:-}" == "--no-build" ]] && BUILD=0
CACHE=${CACHE:-32M}
CACHE_MB=${CACHE%M}
WORKSET_MB=${WORKSET:-$((CACHE_MB * 4))}
PASSES=${PASSES:-3}
SPILL_SIZE=${SPILL_SIZE:-1G}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
BIN=$CARGO_TARGET_DIR/release/ssecfs
log() { echo "[bench-spill] $*" >&2; }

if [[ -z "${S3_ENDPOINT:-}" ]]; then
    eval "$(scripts/test-server.sh)"
fi
(( BUILD )) && cargo build --release --bin ssecfs >&2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ssecfs-bench-spill.XXXXXX")
MNT=$WORK/mnt
SPILL=$WORK/spill
mkdir -p "$MNT" "$SPILL"
chmod 700 "$WORK"
head -c 32 /dev/urandom > "$WORK/key"
chmod 600 "$WORK/key"
BUCKET=$S3_BUCKET
cleanup() {
    fusermount3 -u "$MNT" 2>/dev/null || umount "$MNT" 2>/dev/null || true
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT

mount_fs() { # extra options...
    "$BIN" mount -f --endpoint "$S3_ENDPOINT" --allow-http --key-file "$WORK/key" \
        --cache-size "$CACHE" --part-size 5M --log-level warn "$@" "$BUCKET" "$MNT" \
        >>"$WORK/ssecfs.log" 2>&1 &
    for _ in $(seq 200); do
        mountpoint -q "$MNT" && return 0
        sleep 0.05
    done
    log "mount failed:"; cat "$WORK/ssecfs.log" >&2; exit 1
}
unmount_fs() {
    fusermount3 -u "$MNT" 2>/dev/null || umount "$MNT"
    wait
}

FILE=ws-$$.bin
log "writing a ${WORKSET_MB} MiB working set (cache $CACHE)"
mount_fs
dd if=/dev/urandom of="$MNT/$FILE" bs=1M count="$WORKSET_MB" status=none
unmount_fs

QUARTER=$((WORKSET_MB / 4))
run_pass() {
    fio --name=randrd --filename="$MNT/$FILE" --rw=randread --bs=64k --direct=1 \
        --ioengine=psync --numjobs=4 --size="${QUARTER}M" --offset_increment="${QUARTER}M" \
        --group_reporting --output-format=terse --terse-version=3 2>/dev/null |
        awk -F';' '{ printf "%.1f", $7 / 1024 }'   # read bandwidth KiB/s -> MiB/s
}

declare -A RESULT
for mode in "no spill" "spill"; do
    if [[ $mode == spill ]]; then
        mount_fs --spill-dir "$SPILL" --spill-size "$SPILL_SIZE"
    else
        mount_fs
    fi
    for p in $(seq "$PASSES"); do
        t0=$EPOCHREALTIME
        bw=$(run_pass)
        t1=$EPOCHREALTIME
        RESULT[$mode,$p]="$bw MiB/s ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s)"
        log "$mode pass $p: ${RESULT[$mode,$p]}"
    done
    unmount_fs
    [[ -z "$(ls -A "$SPILL")" ]] || { log "spill dir not empty after unmount!"; exit 1; }
done

mount_fs
rm -f "$MNT/$FILE"
unmount_fs

echo "Random 64 KiB reads (fio psync, O_DIRECT, 4 jobs) over ${WORKSET_MB} MiB with --cache-size $CACHE"
echo
printf '| mode |'; for p in $(seq "$PASSES"); do printf ' pass %s |' "$p"; done; echo
printf '|---|'; for _ in $(seq "$PASSES"); do printf -- '---|'; done; echo
for mode in "no spill" "spill"; do
    printf '| %s |' "$mode"
    for p in $(seq "$PASSES"); do printf ' %s |' "${RESULT[$mode,$p]}"; done
    echo
done
