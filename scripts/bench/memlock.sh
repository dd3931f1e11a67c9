#!/usr/bin/env bash
# What locking all of the daemon's memory (mlockall) and the wiping allocator cost: the same
# workloads through mounts of the given binaries / options, on the running test Garage
# (source $SSECFS_TEST_DIR/env.sh first; nothing is restarted). Prints a table.
#
#   scripts/bench/memlock.sh [LABEL=BINARY[:EXTRA_OPTS]]...
#   default: "all-locked=$CARGO_TARGET_DIR/release/ssecfs" "no-mlockall=…:--no-mlockall"
#
# Workloads: dd 1 GiB write (conv=fsync), cold dd read of it (fresh mount), cp of 500 files of
# 4 KiB into the mount; each timed once per contender, peak VmRSS of the daemon reported.
set -euo pipefail
: "${S3_ENDPOINT:?source the test server env first}"
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}/release/ssecfs
contenders=("$@")
if ((${#contenders[@]} == 0)); then
	contenders=("all-locked=$BIN" "no-mlockall=$BIN:--no-mlockall")
fi
work=$(mktemp -d /dev/shm/ssecfs-memlock.XXXXXX)
trap 'fusermount3 -u -z "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/mnt" "$work/small"
"$BIN" keygen "$work/key" >/dev/null
for i in $(seq 500); do head -c 4096 /dev/urandom >"$work/small/f$i"; done

now() { date +%s.%N; }
mount_it() { # binary extra prefix
	local extra=()
	[[ -n $2 ]] && read -r -a extra <<<"$2"
	"$1" mount --endpoint "$S3_ENDPOINT" --allow-http --key-file "$work/key" "${extra[@]}" \
		"$S3_BUCKET:$3" "$work/mnt"
}
daemon_rss() { # peak RSS in MiB of the daemon serving $work/mnt
	local pid
	pid=$(pgrep -f -n "ssecfs mount .*$work/mnt" || true)
	[[ -n $pid ]] && awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$pid/status" || echo "?"
}

printf '%-14s %12s %12s %14s %12s\n' contender "write MiB/s" "read MiB/s" "500 files s" "peak RSS MiB"
for c in "${contenders[@]}"; do
	label=${c%%=*}
	rest=${c#*=}
	bin=${rest%%:*}
	extra=""
	[[ $rest == *:* ]] && extra=${rest#*:}
	prefix="memlock-$label-$$"
	mount_it "$bin" "$extra" "$prefix"
	t0=$(now)
	dd if=/dev/zero of="$work/mnt/big" bs=1M count=1024 conv=fsync status=none
	t1=$(now)
	rss_w=$(daemon_rss)
	fusermount3 -u "$work/mnt"
	sleep 1
	mount_it "$bin" "$extra" "$prefix"
	t2=$(now)
	dd if="$work/mnt/big" of=/dev/null bs=1M status=none
	t3=$(now)
	cp -r "$work/small" "$work/mnt/small"
	t4=$(now)
	rss_r=$(daemon_rss)
	rm -rf "$work/mnt/small" "$work/mnt/big"
	fusermount3 -u "$work/mnt"
	sleep 1
	awk -v l="$label" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" \
		-v m="$rss_w/$rss_r" \
		'BEGIN { printf "%-14s %12.0f %12.0f %14.2f %12s\n", l, 1024 / (t1 - t0), 1024 / (t3 - t2), t4 - t3, m }'
done
