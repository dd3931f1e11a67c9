#!/usr/bin/env bash
# Benchmark ssecfs against the S3 API used directly (ssecfs-raw-bench), s3fs and rclone mount,
# all with SSE-C and the same key, on a fresh local Garage started by scripts/test-server.sh.
#
#   scripts/bench.sh             full: 3 runs, 1 GiB file, 2,000 small files, 10,000-object
#                                listing, 30 s fio; reports medians
#   scripts/bench.sh --quick     1 run, 256 MiB, 500 files, 2,000 objects, 10 s fio (< 5 min)
#   scripts/bench.sh --rtt 20ms  the same through a link with a 20 ms round-trip time; slower,
#                                mostly in the per-file workloads (--quick --rtt 20ms: ~30 min
#                                with every contender, 2/3 of it s3fs's rsyncs at ~58 round trips
#                                per file; 2.5 min for raw and ssecfs alone)
#
# Options: --runs N           runs per contender (default 3, --quick 1)
#          --only a,b,...     only these contenders (raw ssecfs ssecfs-wb ssecfs-spill s3fs
#                             s3fs-nomp rclone-off rclone-writes)
#          --rtt DURATION     latency profile: every contender talks to the server through
#                             ssecfs-delay-proxy (bench/delay), which adds this round-trip
#                             time (20ms, 1.5ms, 0.06s; default 0: no proxy, plain loopback)
#          --rate RATE        with the proxy, also cap each direction at RATE bits/s (1gbit,
#                             100mbit); alone, the proxy runs with RTT 0
#          --files N          small files for rsync and cp (default 2,000, --quick 500): fewer
#                             for a shorter run at a high RTT
#          --no-docs          print the tables but do not write docs/BENCHMARKS.md and the PNG
#          --no-build         use the binaries already in $CARGO_TARGET_DIR/release
#          --no-netns         run in the host's namespaces: default TCP stack, the host's
#                             /dev/shm (see "Namespaces" below)
#
# Writes docs/BENCHMARKS.md and docs/benchmarks.png (scripts/bench/report.py) and prints the
# tables on stdout; progress goes to stderr. A run with --rtt/--rate writes only its own
# section of docs/BENCHMARKS.md (one per RTT and rate, replaced by the next run with the same
# ones; the others stay) and its own chart, docs/benchmarks-rtt20ms.png.
#
# Workloads, each against the contender's own bucket:
#   1 write   dd a pre-generated random file to MNT (bs=1M); timed until a keyed HEAD on the
#             server shows the full size (and an unkeyed HEAD is refused: SSE-C really used)
#   2 read    cold (fresh mount) dd of that file to /dev/null; spot-checked against the source
#   3 randrd  fio 4 KiB psync random reads on it (fresh mount) -> IOPS; ssecfs-spill first
#             reads the whole file once (untimed), so that what the locked cache cannot hold
#             is in its spill tier
#   4 rsync   rsync -a of a tree of small files (1-16 KiB, 20 dirs) into MNT; timed until the
#             server's listing holds every file with its size (and the requests the server
#             logged with the contenders' key meanwhile are counted: requests per file; the
#             observer has its own key); then the no-op second rsync
#   5 ls      ls -l of a directory of many objects created directly (fresh mount)
#   6 cp      cp -r of the small-file tree out of MNT into /dev/shm (fresh mount), diffed
# The raw contender does the same transfers with aws-sdk-s3 (multipart 8 MiB x 8, ranged GETs
# 8 MiB x 8, 4 KiB ranged GETs, one PutObject/GetObject per small file, ListObjectsV2).
# ssecfs-spill is ssecfs with --spill-dir in the scratch dir (tmpfs: the tier holds only
# ciphertext) and --spill-size twice the file.
#
# Latency (--rtt): ONE ssecfs-delay-proxy in front of Garage's S3 port, inside the namespace;
# every contender's endpoint is the proxy, and the TLS front-end (rclone's) forwards to it
# too, so all take the same delayed path. It delays each direction by RTT/2 without limiting
# throughput, and holds a new connection's first bytes one more RTT (--handshake: a TCP
# handshake over the link would cost that; the proxy itself accepts at once). The script's
# own requests (bucket setup, the fallback uploads, and the HEADs and listings that time
# "until the server has it") go to the server directly: they are the observer, not the
# contender, and must not add round trips to the contender's time. The RTT measured through
# the proxy (curl, median of 5) is printed and reported with the results.
#
# Plaintext test data lives only under /dev/shm (one directory, removed on exit, as are
# rclone's cache and s3fs's temporary files, which are pointed there); every mount is undone on
# exit. A failing contender/workload is recorded as "FAIL: reason", never dropped.
#
# Namespaces: Garage writes an SSE-C GET's response headers and body separately without
# TCP_NODELAY, so the body waits for the client's delayed ACK: every small SSE-C GET costs
# ~40 ms on loopback, whatever the client, which would make every per-file read workload
# measure that timer. By default the script therefore re-runs itself (after the build) in
# private network and mount namespaces (unshare --net --mount): its own loopback, whose routes
# have delayed ACKs off (`ip route ... quickack 1`), and its own tmpfs on /dev/shm, which no
# other process can see or clean up under it and which vanishes with the namespace even if
# the script is killed. --no-netns keeps the host's stack (and the stall) and /dev/shm.
#
# Environment:
#   CARGO_TARGET_DIR   default ~/.cache/ssecfs-target
#   BENCH_SERVER_DIR   Garage state dir (default ${XDG_RUNTIME_DIR:-/tmp}/ssecfs-bench-garage);
#   BENCH_S3_PORT=3920 BENCH_RPC_PORT=3921 BENCH_ADMIN_PORT=3923 BENCH_TLS_PORT=3963
#                      the benchmark runs its own Garage, apart from the test server that
#                      scripts/test.sh starts on the default ports, so both can run at once.
#                      rclone refuses to send SSE-C keys over http, so it alone goes through
#                      the server's TLS front-end (stunnel4, https://127.0.0.1:$BENCH_TLS_PORT).
#   BENCH_PROXY_PORT=3929  the delaying proxy's port (with --rtt/--rate)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
T_START=${BENCH_T_START:-$EPOCHREALTIME}
COMMAND=${BENCH_COMMAND:-"scripts/bench.sh${*:+ $*}"}
ORIG_ARGS=("$@")

QUICK=0
RUNS=""
ONLY=""
DOCS=1
BUILD=1
NETNS=1
RTT=0
RATE=""
FILES=""
while (($#)); do
	case $1 in
	--quick) QUICK=1 ;;
	--runs)
		RUNS=${2:?--runs needs a number}
		shift
		;;
	--runs=*) RUNS=${1#*=} ;;
	--only)
		ONLY=${2:?--only needs a list}
		shift
		;;
	--only=*) ONLY=${1#*=} ;;
	--no-docs) DOCS=0 ;;
	--no-build) BUILD=0 ;;
	--no-netns) NETNS=0 ;;
	--rtt)
		RTT=${2:?--rtt needs a duration}
		shift
		;;
	--rtt=*) RTT=${1#*=} ;;
	--rate)
		RATE=${2:?--rate needs a rate}
		shift
		;;
	--rate=*) RATE=${1#*=} ;;
	--files)
		FILES=${2:?--files needs a number}
		shift
		;;
	--files=*) FILES=${1#*=} ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "bench.sh: unknown option '$1' (see --help)" >&2
		exit 2
		;;
	esac
	shift
done

if ((QUICK)); then
	# WRITE_T: s3fs's failing multipart upload retries for ~50 s before giving up
	FILE_MIB=256 SMALL=500 LISTN=2000 FIO_RT=10 STEP_T=60 WRITE_T=30
	: "${RUNS:=1}"
else
	FILE_MIB=1024 SMALL=2000 LISTN=10000 FIO_RT=30 STEP_T=900 WRITE_T=900
	: "${RUNS:=3}"
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || {
	echo "bench.sh: --runs must be a positive number" >&2
	exit 2
}
if [[ -n $FILES ]]; then
	[[ $FILES =~ ^[1-9][0-9]*$ ]] || {
		echo "bench.sh: --files must be a positive number" >&2
		exit 2
	}
	SMALL=$FILES
fi
FILE_BYTES=$((FILE_MIB << 20))
SMALL_DIRS=20

# the latency profile: RTT in microseconds (what the report computes with), its label for the
# section and chart names (20ms, 1500us), and whether the proxy runs at all
[[ $RTT =~ ^(0|[0-9]+(\.[0-9]+)?(us|ms|s))$ ]] || {
	echo "bench.sh: --rtt must be 0 or a number with us, ms or s (20ms)" >&2
	exit 2
}
[[ -z $RATE || ${RATE,,} =~ ^[0-9]+(\.[0-9]+)?[kmg]?(bit|bps)?$ ]] || {
	echo "bench.sh: --rate must be bits per second with an optional k, m or g (100mbit, 1gbit)" >&2
	exit 2
}
RTT_US=$(awk -v t="$RTT" 'BEGIN {
	m = 1; if (t ~ /us$/) m = 1e-6; else if (t ~ /ms$/) m = 1e-3
	sub(/(us|ms|s)$/, "", t); printf "%d", t * m * 1e6 + 0.5 }')
if ((RTT_US % 1000 == 0)); then RTT_LABEL="$((RTT_US / 1000))ms"; else RTT_LABEL="${RTT_US}us"; fi
PROXY=0
if ((RTT_US > 0)) || [[ -n $RATE ]]; then PROXY=1; fi
# Per-file workloads pay round trips per file: their timeouts grow with the RTT (100 round trips
# per small file: s3fs's rsync took 58 at 20 ms; a write's parts ~1,000), so that a slow
# contender is measured, not cut off.
STEP_T=$((STEP_T + SMALL * RTT_US * 100 / 1000000))
WRITE_T=$((WRITE_T + RTT_US / 1000))

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
# seconds between two $EPOCHREALTIME stamps
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }

for t in fusermount3 fio rsync awk pgrep timeout cmp diff python3; do
	command -v "$t" >/dev/null 2>&1 || die "'$t' is required"
done
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

# ---------------------------------------------------------------------------------------------
# contenders

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
if ((BUILD)); then
	log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
	cargo build --release --workspace --bin ssecfs --bin ssecfs-raw-bench --bin ssecfs-delay-proxy >&2 ||
		die "cargo build failed"
fi
BINS=(ssecfs ssecfs-raw-bench)
((PROXY)) && BINS+=(ssecfs-delay-proxy)
for b in "${BINS[@]}"; do
	[[ -x $CARGO_TARGET_DIR/release/$b ]] || die "$CARGO_TARGET_DIR/release/$b is missing"
done

# private network namespace with quickack on loopback (see "Network" above)
if ((NETNS)) && [[ -z ${BENCH_IN_NETNS:-} ]]; then
	if command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 &&
		unshare --net --mount true 2>/dev/null; then
		log "re-running in private network and mount namespaces (loopback without delayed ACKs, own /dev/shm)"
		exec unshare --net --mount --propagation private -- env BENCH_IN_NETNS=1 BENCH_T_START="$T_START" BENCH_COMMAND="$COMMAND" \
			"$BASH" "$0" ${ORIG_ARGS[@]+"${ORIG_ARGS[@]}"} --no-build
	fi
	log "WARNING: cannot create namespaces (needs root and unshare/ip): default TCP stack, host /dev/shm"
	NETNS=0
fi
TCP_NOTE="host network namespace, default TCP stack (delayed ACKs on)"
if [[ -n ${BENCH_IN_NETNS:-} ]]; then
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || die "cannot mount a private tmpfs on /dev/shm"
	ip link set lo up || die "cannot bring up lo in the private network namespace"
	if ip route change local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1 quickack 1 &&
		ip route change local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1 quickack 1; then
		TCP_NOTE="private network namespace, loopback routes with quickack 1 (no delayed ACKs)"
	else
		log "WARNING: could not set quickack on the loopback routes"
		TCP_NOTE="private network namespace, default TCP stack (setting quickack failed)"
	fi
fi

ALL=(raw ssecfs)
mount_help=$("$CARGO_TARGET_DIR/release/ssecfs" mount --help 2>/dev/null || true)
[[ $mount_help == *--write-back* ]] && ALL+=(ssecfs-wb)
[[ $mount_help == *--spill-dir* ]] && ALL+=(ssecfs-spill)
if command -v s3fs >/dev/null 2>&1; then
	ALL+=(s3fs s3fs-nomp)
else
	log "s3fs not installed: skipped (apt-get install s3fs)"
fi
if command -v rclone >/dev/null 2>&1; then
	ALL+=(rclone-off rclone-writes)
else
	log "rclone not installed: skipped (apt-get install rclone)"
fi
CONTENDERS=()
if [[ -n $ONLY ]]; then
	IFS=, read -r -a want <<<"$ONLY"
	for c in "${want[@]}"; do
		found=0
		for a in "${ALL[@]}"; do [[ $a == "$c" ]] && found=1; done
		((found)) || die "contender '$c' is unknown or unavailable (available: ${ALL[*]})"
		CONTENDERS+=("$c")
	done
else
	CONTENDERS=("${ALL[@]}")
fi

# ---------------------------------------------------------------------------------------------
# scratch space (all plaintext stays here, in RAM) and cleanup

WORK=$(mktemp -d /dev/shm/ssecfs-bench.XXXXXX)
chmod 700 "$WORK"
mkdir -p "$WORK/bin" "$WORK/mnt" "$WORK/logs" "$WORK/s3fs-tmp" "$WORK/rclone-cache" "$WORK/spill"
# private copies: a concurrent `cargo test --release` may rebuild the target dir under us
for b in "${BINS[@]}"; do cp "$CARGO_TARGET_DIR/release/$b" "$WORK/bin/"; done
SSECFS=$WORK/bin/ssecfs
RAW=$WORK/bin/ssecfs-raw-bench
PROXY_BIN=$WORK/bin/ssecfs-delay-proxy
PROXY_PORT=${BENCH_PROXY_PORT:-3929}
PROXY_PID=""
SERVER_DIR=${BENCH_SERVER_DIR:-${XDG_RUNTIME_DIR:-/tmp}/ssecfs-bench-garage}
mkdir -p "$SERVER_DIR"
# the numbers (no test data in them) go next to the server state, written as they come, so
# that they survive an interrupted run; re-run the report with scripts/bench/report.py
# --results $SERVER_DIR/last-results.tsv --meta $SERVER_DIR/last-meta.tsv [--md F --png F]
RESULTS=$SERVER_DIR/last-results.tsv
: >"$RESULTS"
SERVER_STARTED=0
CUR_MNT=""
CUR_PID=""
SAMPLER_PID=""

S3_PORT_B=${BENCH_S3_PORT:-3920}
server() { # test-server.sh with the benchmark's own dir and ports
	# with the proxy, the TLS front-end (rclone's way in) forwards to it, not to Garage
	SSECFS_TEST_DIR=$SERVER_DIR S3_PORT=$S3_PORT_B RPC_PORT=${BENCH_RPC_PORT:-3921} \
		ADMIN_PORT=${BENCH_ADMIN_PORT:-3923} TLS_PORT=${BENCH_TLS_PORT:-3963} S3_BUCKET=bench \
		TLS_BACKEND_PORT=$( ((PROXY)) && echo "$PROXY_PORT" || echo "$S3_PORT_B") \
		scripts/test-server.sh "$@"
}

cleanup() {
	local rc=$? mp t_clean=$EPOCHREALTIME
	set +e # best effort from here on: a failing kill must not skip the rest
	trap - EXIT INT TERM
	[[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
	# every FUSE mount under our scratch dir
	while read -r mp; do
		fusermount3 -u "$mp" 2>/dev/null || fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
	done < <(awk -v d="$WORK/" '$3 ~ /^fuse/ { mp = $2; gsub(/\\040/, " ", mp); if (index(mp, d) == 1) print mp }' /proc/self/mounts 2>/dev/null | sort -r)
	[[ -n $CUR_PID ]] && kill "$CUR_PID" 2>/dev/null
	for p in ${PENDING_PIDS[@]+"${PENDING_PIDS[@]}"}; do kill "$p" 2>/dev/null; done
	if ((SERVER_STARTED)); then
		server stop || true
		# encrypted objects only, but GiBs of them, slow to delete: moved aside at once (the
		# next start cannot be hit) and deleted in the background
		local trash=$SERVER_DIR/trash.$$.$RANDOM
		mkdir -p "$trash"
		mv "$SERVER_DIR/data" "$SERVER_DIR/meta" "$trash/" 2>/dev/null || true
		setsid nohup rm -rf "$trash" >/dev/null 2>&1 </dev/null &
	fi
	[[ -n $PROXY_PID ]] && kill "$PROXY_PID" 2>/dev/null
	rm -rf "$WORK"
	log "cleaned up in $(elapsed "$t_clean" "$EPOCHREALTIME") s; total $(elapsed "$T_START" "$EPOCHREALTIME") s"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# server, key, test data

if ((PROXY)); then
	# started before the server: the TLS front-end checks at its start that it answers through
	# the proxy; the proxy connects upstream per connection, so Garage may come up after it
	proxy_args=(--listen "127.0.0.1:$PROXY_PORT" --to "127.0.0.1:$S3_PORT_B" --rtt "$RTT" --handshake)
	[[ -n $RATE ]] && proxy_args+=(--rate "$RATE")
	log "starting ssecfs-delay-proxy ${proxy_args[*]}"
	"$PROXY_BIN" "${proxy_args[@]}" >"$WORK/logs/proxy.log" 2>&1 &
	PROXY_PID=$!
	for i in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null && break
		kill -0 "$PROXY_PID" 2>/dev/null || die "ssecfs-delay-proxy exited: $(reason "$WORK/logs/proxy.log")"
		((i < 50)) || die "ssecfs-delay-proxy does not accept on port $PROXY_PORT after 5 s"
		sleep 0.1
	done
fi
log "starting Garage in $SERVER_DIR (port $S3_PORT_B)"
SERVER_STARTED=1
env_lines=$(server) || die "scripts/test-server.sh failed"
eval "$env_lines"
# S3_DIRECT: Garage itself, for the script's own requests (setup and the observer's checks);
# S3_ENDPOINT: what the contenders use, the proxy when there is one
S3_DIRECT=$S3_ENDPOINT
((PROXY)) && export S3_ENDPOINT=http://127.0.0.1:$PROXY_PORT

# The round-trip time as the contenders see it: a GET on the S3 port (unauthenticated, the
# server refuses it at once), twice on one connection; the first transfer's request to first
# byte includes a new connection's handshake wait, the second (kept alive) is one round trip
# plus the server's time. Medians of 5, in ms; sets RTT_NEW RTT_KEPT ("?" if not measured).
measure_rtt() { # endpoint
	local out
	out=$(for _ in 1 2 3 4 5; do
		curl -s -m 10 -o /dev/null -o /dev/null -w '%{num_connects} %{time_pretransfer} %{time_starttransfer}\n' \
			"$1/" "$1/" 2>/dev/null || true
	done)
	read -r RTT_NEW RTT_KEPT < <(awk '
		function med(a, n,   i, j, t) {
			if (!n) return "?"
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
			return sprintf("%.2f", a[int((n + 1) / 2)] * 1000)
		}
		NF == 3 && $3 > 0 { if ($1 > 0) nw[++n1] = $3 - $2; else kp[++n2] = $3 - $2 }
		END { printf "%s %s\n", med(nw, n1), med(kp, n2) }' <<<"$out")
	return 0
}
measure_rtt "$S3_DIRECT"
RTT_DIRECT=$RTT_KEPT
if ((PROXY)); then
	measure_rtt "$S3_ENDPOINT"
	log "measured through the proxy (curl, request to first byte, median of 5): $RTT_KEPT ms on a kept-alive connection (set: RTT $RTT_LABEL; direct to the server: $RTT_DIRECT ms); $RTT_NEW ms for a new connection's first request (its handshake included)"
else
	log "measured direct to the server (curl, request to first byte, median of 5): $RTT_KEPT ms kept-alive, $RTT_NEW ms on a new connection"
fi
export SSECFS_BENCH_KEY_FILE=$WORK/key
(
	umask 077
	head -c 32 /dev/urandom | base64 >"$WORK/key" # base64 line: ssecfs, s3fs and the raw tool
	printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/s3fs.passwd"
	cat >"$WORK/rclone.conf" <<CONF
[bench]
type = s3
provider = Other
access_key_id = $AWS_ACCESS_KEY_ID
secret_access_key = $AWS_SECRET_ACCESS_KEY
endpoint = ${S3_ENDPOINT_TLS:-$S3_ENDPOINT}
region = $AWS_REGION
force_path_style = true
sse_customer_algorithm = AES256
sse_customer_key_base64 = $(cat "$WORK/key")
CONF
)

DATA=$WORK/data.bin
TREE=$WORK/tree
log "generating ${FILE_MIB} MiB of random data and $SMALL small files in $WORK"
head -c "$FILE_BYTES" /dev/urandom >"$DATA"
"$RAW" gen-tree "$TREE" "$SMALL" --dirs "$SMALL_DIRS" >/dev/null || die "gen-tree failed"

# ---------------------------------------------------------------------------------------------
# results

# one line: contender workload run status seconds amount rss_kib lck_kib note
record() {
	local note=${9:-}
	note=${note//$'\t'/ }
	note=${note//$'\n'/ }
	# short paths: MNT for the mountpoint, WORK for the scratch dir
	note=$(sed -E "s#$WORK/mnt/[^/ ]+#MNT#g; s#$WORK#WORK#g" <<<"$note")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$note" >>"$RESULTS"
	if [[ $4 == ok ]]; then
		log "  $1 $2 run $3: ${5}s amount=$6 rss=${7}KiB lck=${8}KiB ${note}"
	else
		log "  $1 $2 run $3: FAIL: $note"
	fi
}
fail() { record "$1" "$2" "$3" FAIL 0 0 0 0 "$4$(log_context)"; }

# short reason from a stderr file
reason() { # file [prefix]
	local r
	r=$(grep -v '^\s*$' "$1" 2>/dev/null | grep -v '^result ' | tail -n 2 | tr '\n\t' '  ' | sed 's/ssecfs-raw-bench: //; s/  */ /g')
	r=${r:0:220}
	if [[ -n ${2:-} && $r != "$2"* ]]; then
		r="$2: ${r:-no message}"
	fi
	printf '%s' "${r:-no message}"
}

# what went wrong, from the logs written since mark_logs: the daemon's last error line and the
# server's last error answer (4xx/5xx other than 404)
GLOG=""
mark_logs() { # [daemon log]
	DLOG=${1:-}
	GLOG=${SSECFS_TEST_DIR:-}/garage.log
	GLOG_OFF=$(stat -c %s "$GLOG" 2>/dev/null || echo 0)
	DLOG_OFF=0
	[[ -n $DLOG ]] && DLOG_OFF=$(stat -c %s "$DLOG" 2>/dev/null || echo 0)
	return 0
}
log_context() {
	local d="" g=""
	if [[ -n ${DLOG:-} && -f $DLOG ]]; then
		d=$(tail -c +"$((DLOG_OFF + 1))" "$DLOG" 2>/dev/null | grep -E 'ERR|ERROR|WARN' | tail -n1 |
			sed -E 's/^[0-9T:./ Z-]+//; s/\x1b\[[0-9;]*m//g' | tr -s ' \t' '  ')
	fi
	if [[ -n $GLOG && -f $GLOG ]]; then
		g=$(tail -c +"$((GLOG_OFF + 1))" "$GLOG" 2>/dev/null | grep -E 'generic_server: error [45][0-9][0-9]' |
			grep -v 'error 404' | tail -n1 | sed -E 's/.*generic_server: error //; s/ in response to .*//')
	fi
	[[ -n $d ]] && printf '; daemon log: %s' "${d:0:160}"
	[[ -n $g ]] && printf '; server: %s' "${g:0:160}"
	return 0
}

# parse "result seconds=… bytes=… ops=… peak_rss_kib=…" into R_* variables
parse_result() {
	local line kv
	R_seconds=0 R_bytes=0 R_ops=0 R_rss=0 R_uploaded=0
	line=$(grep '^result ' <<<"$1" | tail -n1) || return 1
	for kv in ${line#result }; do
		case ${kv%%=*} in
		seconds) R_seconds=${kv#*=} ;;
		bytes) R_bytes=${kv#*=} ;;
		ops) R_ops=${kv#*=} ;;
		peak_rss_kib) R_rss=${kv#*=} ;;
		uploaded) R_uploaded=${kv#*=} ;;
		esac
	done
}

rawcmd() { # raw-bench args…; output in $OUT, stderr in $WORK/err; non-zero on failure
	OUT=$(timeout -k 10 "$STEP_T" "$RAW" "$@" 2>"$WORK/err")
}
# the same, straight to the server: the script's own setup and checks (see "Latency" above)
# With its own access key once the buckets exist (OBS_ID): the server's log then tells the
# contender's requests from the observer's (requests_since).
obscmd() {
	OUT=$(AWS_ACCESS_KEY_ID=${OBS_ID:-$AWS_ACCESS_KEY_ID} AWS_SECRET_ACCESS_KEY=${OBS_SECRET:-$AWS_SECRET_ACCESS_KEY} \
		timeout -k 10 "$STEP_T" "$RAW" --endpoint "$S3_DIRECT" "$@" 2>"$WORK/err")
}

# Requests the server received with the contenders' key since line $1 of its log, as
# "total put copy delete head get other" (Garage logs one line per request it receives, with
# the key and the S3 operation).
log_lines() { wc -l <"$SERVER_DIR/garage.log" 2>/dev/null || echo 0; }
requests_since() {
	tail -n +"$(($1 + 1))" "$SERVER_DIR/garage.log" 2>/dev/null | awk -v key="(key $AWS_ACCESS_KEY_ID)" '
		index($0, "generic_server") && index($0, key) {
			n++
			if ($0 ~ /x-id=CopyObject/) c++
			else if ($0 ~ /x-id=UploadPartCopy/) c++
			else if ($0 ~ / PUT \//) p++
			else if ($0 ~ / DELETE \//) d++
			else if ($0 ~ / HEAD \//) h++
			else if ($0 ~ / GET \//) g++
			else o++
		}
		END { printf "%d %d %d %d %d %d %d\n", n, p, c, d, h, g, o }'
}

# ---------------------------------------------------------------------------------------------
# mounts, daemon PID, memory sampling

bucket_of() { echo "bench-$1"; }

daemon_pid() { # name mountpoint: the process whose argv holds exactly this mountpoint
	local name=$1 mnt=$2 p
	for p in $(pgrep -f -- "$mnt" 2>/dev/null); do
		[[ $p == "$$" ]] && continue
		local argv0
		argv0=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | head -n1) || continue
		[[ $(basename -- "$argv0") == "$name" ]] || continue
		tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qxF -- "$mnt" && {
			echo "$p"
			return 0
		}
	done
	return 1
}

sampler_start() { # pid: poll VmRSS/VmLck every 0.2 s, keep the maxima in $WORK/sample
	local pid=$1
	(
		maxr=0 maxl=0
		while [[ -r /proc/$pid/status ]]; do
			while read -r k v _; do
				case $k in
				VmHWM: | VmRSS:) ((v > maxr)) && maxr=$v ;;
				VmLck:) ((v > maxl)) && maxl=$v ;;
				esac
			done <"/proc/$pid/status" 2>/dev/null || break
			printf '%s %s\n' "$maxr" "$maxl" >"$WORK/sample"
			sleep 0.2
		done
	) &
	SAMPLER_PID=$!
}

# peak RSS and peak locked memory (KiB) of the current daemon so far: sets M_rss, M_lck
mem_peak() {
	local k v _ sr=0 sl=0
	M_rss=0 M_lck=0
	[[ -s $WORK/sample ]] && read -r sr sl <"$WORK/sample"
	if [[ -n $CUR_PID && -r /proc/$CUR_PID/status ]]; then
		while read -r k v _; do
			case $k in
			VmHWM:) M_rss=$v ;;
			VmLck:) M_lck=$v ;;
			esac
		done <"/proc/$CUR_PID/status"
	fi
	((sr > M_rss)) && M_rss=$sr
	((sl > M_lck)) && M_lck=$sl
	return 0
}

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/self/mounts; }

MOUNT_SEQ=0
PENDING_PIDS=()
do_mount() { # contender: mounts its bucket on a new mountpoint under $WORK/mnt; sets CUR_MNT CUR_PID
	local c=$1 mnt bucket name
	MOUNT_SEQ=$((MOUNT_SEQ + 1))
	mnt=$WORK/mnt/$c.$MOUNT_SEQ
	bucket=$(bucket_of "$c")
	mkdir -p "$mnt"
	CUR_MNT=$mnt CUR_PID=""
	rm -f "$WORK/sample"
	mark_logs "$WORK/logs/$c.log"
	local -a cmd
	case $c in
	ssecfs | ssecfs-wb | ssecfs-spill)
		name=ssecfs
		cmd=("$SSECFS" mount --endpoint "$S3_ENDPOINT" --allow-http --key-file "$WORK/key"
			--log-file "$WORK/logs/$c.log")
		[[ $c == ssecfs-wb ]] && cmd+=(--write-back)
		# the tier's files are anonymous (never linked) and go with the mount; room for the
		# whole file twice, so that nothing of it is dropped from the tier
		[[ $c == ssecfs-spill ]] && cmd+=(--spill-dir "$WORK/spill" --spill-size "$((FILE_MIB * 2))M")
		cmd+=("$bucket" "$mnt")
		;;
	s3fs | s3fs-nomp)
		name=s3fs
		local o="url=$S3_ENDPOINT,endpoint=$AWS_REGION,use_path_request_style"
		o+=",use_sse=custom:$WORK/key,passwd_file=$WORK/s3fs.passwd,tmpdir=$WORK/s3fs-tmp"
		o+=",logfile=$WORK/logs/$c.log,dbglevel=warn"
		[[ $c == s3fs-nomp ]] && o+=",nomultipart"
		cmd=(s3fs "$bucket" "$mnt" -o "$o")
		;;
	rclone-off | rclone-writes)
		name=rclone
		if [[ -z ${S3_ENDPOINT_TLS:-} ]]; then
			MOUNT_ERR="rclone refuses SSE-C keys over http and the server has no TLS front-end (install stunnel4)"
			return 1
		fi
		# AWS_CA_BUNDLE (if set in the environment) breaks rclone's S3 client; --ca-cert instead
		# a fresh cache dir per mount (deleted at unmount): reads after a remount are cold
		mkdir -p "$WORK/rclone-cache/$MOUNT_SEQ"
		cmd=(env -u AWS_CA_BUNDLE rclone mount "bench:$bucket" "$mnt" --config "$WORK/rclone.conf"
			--cache-dir "$WORK/rclone-cache/$MOUNT_SEQ" --daemon --daemon-wait 30s
			--ca-cert "$S3_CA_CERT" --log-file "$WORK/logs/$c.log" --log-level NOTICE)
		if [[ $c == rclone-off ]]; then
			cmd+=(--vfs-cache-mode off)
		else
			# default --vfs-write-back 5s: uploads start 5 s after the last close (with 0 s,
			# rsync's renames race the uploads of the temporary files and fail)
			cmd+=(--vfs-cache-mode writes)
		fi
		;;
	*) die "do_mount: unknown contender $c" ;;
	esac
	if ! timeout -k 5 60 "${cmd[@]}" >"$WORK/err" 2>&1; then
		MOUNT_ERR=$(reason "$WORK/err" "mount failed")
		fusermount3 -u -z "$mnt" 2>/dev/null || true
		return 1
	fi
	local i
	for i in $(seq 150); do
		is_mounted "$mnt" && break
		sleep 0.2
	done
	if ! is_mounted "$mnt"; then
		MOUNT_ERR="not mounted 30 s after start: $(reason "$WORK/logs/$c.log")"
		return 1
	fi
	for i in $(seq 50); do
		CUR_PID=$(daemon_pid "$name" "$mnt") && break
		sleep 0.1
	done
	[[ -n $CUR_PID ]] && sampler_start "$CUR_PID"
	return 0
}

do_umount() {
	local mnt=$CUR_MNT pid=$CUR_PID i
	[[ -n $mnt ]] || return 0
	if [[ -n $SAMPLER_PID ]]; then
		kill "$SAMPLER_PID" 2>/dev/null || true
		wait "$SAMPLER_PID" 2>/dev/null || true
		SAMPLER_PID=""
	fi
	if is_mounted "$mnt"; then
		for i in 1 2 3 4 5; do
			fusermount3 -u "$mnt" 2>/dev/null && break
			sleep 1
		done
		is_mounted "$mnt" && { fusermount3 -u -z "$mnt" 2>/dev/null || true; }
	fi
	# daemons take 1-2 s to exit after the unmount: reaped later (reap_daemons), not waited for
	[[ -n $pid ]] && PENDING_PIDS+=("$pid")
	rmdir "$mnt" 2>/dev/null || true
	rm -rf "$WORK/rclone-cache/${mnt##*.}" "$WORK/s3fs-tmp/"* 2>/dev/null || true
	CUR_MNT="" CUR_PID=""
	return 0
}

# wait for unmounted daemons to exit (10 s each at most, then kill them)
reap_daemons() {
	local pid i
	for pid in ${PENDING_PIDS[@]+"${PENDING_PIDS[@]}"}; do
		for i in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "  daemon $pid still running 10 s after its unmount: killing it"
			kill "$pid" 2>/dev/null || true
			sleep 1
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
	PENDING_PIDS=()
	return 0
}

# ---------------------------------------------------------------------------------------------
# workloads: the raw contender

raw_run() { # run
	local c=raw r=$1 b
	b=$(bucket_of raw)
	local P=r$r
	mark_logs
	# 1 write
	settle
	if rawcmd put-file "$b" "$P/f" "$DATA" && parse_result "$OUT"; then
		record $c write "$r" ok "$R_seconds" "$FILE_BYTES" "$R_rss" 0
	else
		fail $c write "$r" "$(reason "$WORK/err")"
	fi
	# 2 read, cold then warm (the API has no cache: the same GETs again)
	local w
	settle
	for w in read read-warm; do
		if rawcmd get-file "$b" "$P/f" && parse_result "$OUT"; then
			record $c $w "$r" ok "$R_seconds" "$R_bytes" "$R_rss" 0
		else
			fail $c $w "$r" "$(reason "$WORK/err")"
		fi
	done
	# 3 random 4 KiB reads
	if rawcmd rand-read "$b" "$P/f" --seconds "$FIO_RT" && parse_result "$OUT"; then
		record $c randread "$r" ok "$R_seconds" "$R_ops" "$R_rss" 0
	else
		fail $c randread "$r" "$(reason "$WORK/err")"
	fi
	# 4 small files, then the no-op second sync
	local lines0
	lines0=$(log_lines)
	if rawcmd put-tree "$b" "$P/tree" "$TREE" && parse_result "$OUT"; then
		record $c rsync "$r" ok "$R_seconds" "$R_ops" "$R_rss" 0 "requests $(requests_since "$lines0")"
	else
		fail $c rsync "$r" "$(reason "$WORK/err")"
	fi
	if rawcmd sync-tree "$b" "$P/tree" "$TREE" && parse_result "$OUT"; then
		local note=""
		((R_uploaded > 0)) && note="re-sent $R_uploaded"
		record $c rsync-noop "$r" ok "$R_seconds" "$R_ops" "$R_rss" 0 "$note"
	else
		fail $c rsync-noop "$r" "$(reason "$WORK/err")"
	fi
	# 5 listing
	if rawcmd list "$b" list && parse_result "$OUT"; then
		if ((R_ops == LISTN)); then
			record $c ls "$r" ok "$R_seconds" "$R_ops" "$R_rss" 0
		else
			fail $c ls "$r" "listed $R_ops of $LISTN"
		fi
	else
		fail $c ls "$r" "$(reason "$WORK/err")"
	fi
	# 6 copy the tree out
	rm -rf "$WORK/cpout"
	mkdir -p "$WORK/cpout"
	if rawcmd get-tree "$b" "$P/tree" "$WORK/cpout/tree" && parse_result "$OUT"; then
		if diff -rq "$TREE" "$WORK/cpout/tree" >"$WORK/err" 2>&1; then
			record $c cp "$r" ok "$R_seconds" "$R_ops" "$R_rss" 0
		else
			fail $c cp "$r" "copy differs: $(reason "$WORK/err")"
		fi
	else
		fail $c cp "$r" "$(reason "$WORK/err")"
	fi
	rm -rf "$WORK/cpout"
}

# ---------------------------------------------------------------------------------------------
# workloads: a FUSE contender

# mount for one workload, or record the failure for it (and return 1)
mount_for() { # contender workload run
	if do_mount "$1"; then
		return 0
	fi
	fail "$1" "$2" "$3" "$MOUNT_ERR"
	do_umount
	return 1
}

fuse_run() { # contender run
	local c=$1 r=$2 b P t0 t1 note
	b=$(bucket_of "$c")
	P=r$r
	local f_ok=0 tree_ok=0

	# 1 sequential write: dd, then wait until the server has the whole object
	settle
	if mount_for "$c" write "$r"; then
		if ! mkdir -p "$CUR_MNT/$P" 2>"$WORK/err"; then
			fail "$c" write "$r" "$(reason "$WORK/err" mkdir)"
		else
			t0=$EPOCHREALTIME
			local rc=0
			timeout -k 5 "$WRITE_T" dd if="$DATA" of="$CUR_MNT/$P/f" bs=1M status=none 2>"$WORK/err" || rc=$?
			if ((rc == 124 || rc == 137)); then
				fail "$c" write "$r" "dd did not finish within $WRITE_T s"
			elif ((rc != 0)); then
				fail "$c" write "$r" "$(reason "$WORK/err" dd)"
			elif ! obscmd wait-object "$b" "$P/f" "$FILE_BYTES" --timeout "$WRITE_T"; then
				fail "$c" write "$r" "$(reason "$WORK/err")"
			else
				t1=$EPOCHREALTIME
				mem_peak
				record "$c" write "$r" ok "$(elapsed "$t0" "$t1")" "$FILE_BYTES" "$M_rss" "$M_lck"
				f_ok=1
			fi
		fi
		do_umount
	fi
	note=""
	if ((!f_ok)); then
		# the read workloads still run, on a file the raw tool puts there
		obscmd empty "$b" "$P/f" || true
		if obscmd put-file "$b" "$P/f" "$DATA"; then
			note="file written by raw"
		else
			fail "$c" read "$r" "no test file (write failed, raw upload too)"
			fail "$c" read-warm "$r" "no test file (write failed, raw upload too)"
			fail "$c" randread "$r" "no test file (write failed, raw upload too)"
		fi
	fi

	if ((f_ok)) || [[ -n $note ]]; then
		# 2 cold sequential read
		settle
		if mount_for "$c" read "$r"; then
			t0=$EPOCHREALTIME
			if ! timeout -k 5 "$STEP_T" dd if="$CUR_MNT/$P/f" of=/dev/null bs=1M status=none 2>"$WORK/err"; then
				fail "$c" read "$r" "$(reason "$WORK/err" dd)"
			else
				t1=$EPOCHREALTIME
				mem_peak
				local rd_rss=$M_rss rd_lck=$M_lck rd_s
				rd_s=$(elapsed "$t0" "$t1")
				# spot check: first, middle and last MiB equal the source
				local k bad=""
				for k in 0 $((FILE_MIB / 2)) $((FILE_MIB - 1)); do
					if ! cmp -s <(dd if="$CUR_MNT/$P/f" bs=1M skip="$k" count=1 status=none) \
						<(dd if="$DATA" bs=1M skip="$k" count=1 status=none); then
						bad+=" $k"
					fi
				done
				if [[ -n $bad ]]; then
					fail "$c" read "$r" "wrong data at MiB$bad"
				else
					record "$c" read "$r" ok "$rd_s" "$FILE_BYTES" "$rd_rss" "$rd_lck" "$note"
				fi
				# 2b warm: the same file again in the same mount (whatever the contender and
				# the kernel's page cache kept)
				t0=$EPOCHREALTIME
				if ! timeout -k 5 "$STEP_T" dd if="$CUR_MNT/$P/f" of=/dev/null bs=1M status=none 2>"$WORK/err"; then
					fail "$c" read-warm "$r" "$(reason "$WORK/err" dd)"
				else
					t1=$EPOCHREALTIME
					mem_peak
					record "$c" read-warm "$r" ok "$(elapsed "$t0" "$t1")" "$FILE_BYTES" "$M_rss" "$M_lck" "$note"
				fi
			fi
			do_umount
		fi

		# 3 random 4 KiB reads (fresh mount; for the spill tier, after one full read that fills it)
		local rnote=$note
		if mount_for "$c" randread "$r"; then
			if [[ $c == ssecfs-spill ]]; then
				rnote+="${rnote:+, }after one full read (untimed)"
				timeout -k 5 "$STEP_T" dd if="$CUR_MNT/$P/f" of=/dev/null bs=1M status=none 2>"$WORK/err" ||
					rnote+=" that failed: $(reason "$WORK/err" dd)"
			fi
			if ! timeout -k 5 $((FIO_RT + 120)) fio --name=r --rw=randread --bs=4k --size="$FILE_BYTES" \
				--runtime="$FIO_RT" --time_based --ioengine=psync --direct=0 \
				--filename="$CUR_MNT/$P/f" --output-format=json --output="$WORK/fio.json" >"$WORK/err" 2>&1; then
				fail "$c" randread "$r" "$(reason "$WORK/err" fio)"
			else
				mem_peak
				local fio_out
				if fio_out=$(python3 - "$WORK/fio.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])
job = j["jobs"][0]
if job.get("error"):
    sys.exit("fio job error %s" % job["error"])
rd = job["read"]
print("%.6f %d" % (rd["runtime"] / 1000.0, rd["total_ios"]))
PY
				) && [[ ${fio_out#* } -gt 0 ]]; then
					record "$c" randread "$r" ok "${fio_out% *}" "${fio_out#* }" "$M_rss" "$M_lck" "$rnote"
				else
					fail "$c" randread "$r" "fio: no reads completed ${fio_out:-}"
				fi
			fi
			do_umount
		fi
	fi
	obscmd empty "$b" "$P/f" || true # free the server's disk

	# 4 rsync of the small-file tree, until the server lists all of it; then the no-op rerun
	if mount_for "$c" rsync "$r"; then
		local rc=0
		# the run's directory (rclone keeps no empty directories on the server)
		mkdir -p "$CUR_MNT/$P" 2>"$WORK/err" || true
		t0=$EPOCHREALTIME
		local lines0
		lines0=$(log_lines)
		timeout -k 5 "$STEP_T" rsync -a "$TREE/" "$CUR_MNT/$P/tree/" >"$WORK/err" 2>&1 || rc=$?
		if ((rc == 124 || rc == 137)); then
			fail "$c" rsync "$r" "did not finish within $STEP_T s"
			fail "$c" rsync-noop "$r" "first rsync failed"
		elif ((rc != 0)); then
			fail "$c" rsync "$r" "$(reason "$WORK/err" "rsync exit $rc")"
			fail "$c" rsync-noop "$r" "first rsync failed"
		elif ! obscmd wait-tree "$b" "$P/tree" "$TREE" --timeout "$STEP_T"; then
			fail "$c" rsync "$r" "$(reason "$WORK/err")"
			fail "$c" rsync-noop "$r" "first rsync incomplete"
		else
			t1=$EPOCHREALTIME
			mem_peak
			record "$c" rsync "$r" ok "$(elapsed "$t0" "$t1")" "$SMALL" "$M_rss" "$M_lck" "requests $(requests_since "$lines0")"
			tree_ok=1
			t0=$EPOCHREALTIME
			if ! timeout -k 5 "$STEP_T" rsync -a -i "$TREE/" "$CUR_MNT/$P/tree/" >"$WORK/rsync2.out" 2>"$WORK/err"; then
				fail "$c" rsync-noop "$r" "$(reason "$WORK/err" rsync)"
			else
				t1=$EPOCHREALTIME
				mem_peak
				local resent attrs
				resent=$(grep -c '^[<>]f' "$WORK/rsync2.out" || true)
				attrs=$(grep -c '^\.[fd]' "$WORK/rsync2.out" || true)
				note=""
				((resent > 0)) && note="re-sent $resent"
				((attrs > 0)) && note+="${note:+, }attrs reset on $attrs"
				record "$c" rsync-noop "$r" ok "$(elapsed "$t0" "$t1")" "$SMALL" "$M_rss" "$M_lck" "$note"
			fi
		fi
		do_umount
	else
		fail "$c" rsync-noop "$r" "$MOUNT_ERR"
	fi

	# 5 ls -l of the pre-made directory (fresh mount)
	if mount_for "$c" ls "$r"; then
		t0=$EPOCHREALTIME
		if ! timeout -k 5 "$STEP_T" ls -l "$CUR_MNT/list" >"$WORK/ls.out" 2>"$WORK/err"; then
			fail "$c" ls "$r" "$(reason "$WORK/err" ls)"
		else
			t1=$EPOCHREALTIME
			mem_peak
			local n
			n=$(grep -c '^[-l]' "$WORK/ls.out" || true)
			if ((n != LISTN)); then
				fail "$c" ls "$r" "listed $n of $LISTN files"
			else
				record "$c" ls "$r" ok "$(elapsed "$t0" "$t1")" "$LISTN" "$M_rss" "$M_lck"
			fi
		fi
		do_umount
	fi

	# 6 cp -r of the tree out to /dev/shm (fresh mount)
	note=""
	if ((!tree_ok)); then
		obscmd empty "$b" "$P/tree/" || true
		obscmd put-tree "$b" "$P/tree" "$TREE" && note="tree written by raw"
	fi
	rm -rf "$WORK/cpout"
	mkdir -p "$WORK/cpout"
	if mount_for "$c" cp "$r"; then
		t0=$EPOCHREALTIME
		if ! timeout -k 5 "$STEP_T" cp -r "$CUR_MNT/$P/tree" "$WORK/cpout/" 2>"$WORK/err"; then
			fail "$c" cp "$r" "$(reason "$WORK/err" cp)"
		else
			t1=$EPOCHREALTIME
			mem_peak
			if diff -rq "$TREE" "$WORK/cpout/tree" >"$WORK/err" 2>&1; then
				record "$c" cp "$r" ok "$(elapsed "$t0" "$t1")" "$SMALL" "$M_rss" "$M_lck" "$note"
			else
				fail "$c" cp "$r" "copy differs from the source: $(reason "$WORK/err")"
			fi
		fi
		do_umount
	fi
	rm -rf "$WORK/cpout"
}

# ---------------------------------------------------------------------------------------------
# run

log "contenders: ${CONTENDERS[*]}; runs: $RUNS; file ${FILE_MIB} MiB, $SMALL small files, ls of $LISTN, fio ${FIO_RT} s$( ((PROXY)) && echo "; RTT $RTT_LABEL${RATE:+, rate $RATE}")"
# the buckets, made with the observer's own key (see obscmd)
read -r OBS_ID OBS_SECRET < <(server key observer $(for c in "${CONTENDERS[@]}"; do bucket_of "$c"; done)) ||
	die "scripts/test-server.sh key observer failed"
[[ -n $OBS_SECRET ]] || die "scripts/test-server.sh key observer printed no key"
for c in "${CONTENDERS[@]}"; do
	b=$(bucket_of "$c")
	obscmd populate "$b" list "$LISTN" || die "populate $b/list: $(reason "$WORK/err")"
done
log "buckets ready ($LISTN listing objects each); the observer uses its own key, $OBS_ID"

# Wait (at most 30 s) until the server has used under 5% of a core for a second: the work a
# contender or a workload leaves behind (Garage's background table and block work after a 1 GiB
# upload and a bucket emptied) must not be billed to the next one. Called before each
# contender and before each 1 GiB write and cold read, where that work weighs most (the
# server's CPU is most of what these two workloads cost on 2 cores).
settle() {
	local pid ticks0 ticks1 hz i
	pid=$(cat "$SERVER_DIR/garage.pid" 2>/dev/null) || return 0
	hz=$(getconf CLK_TCK)
	for ((i = 0; i < 30; i++)); do
		ticks0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || return 0
		sleep 1
		ticks1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || return 0
		((ticks1 - ticks0 <= hz / 20)) && return 0
	done
	log "  the server is still busy after 30 s; going on"
}

declare -A SPENT
for ((run = 1; run <= RUNS; run++)); do
	# Contenders interleaved per run, so that background noise spreads over all of them, and
	# in a rotated order (run 2 starts with the second one, …), so that none always goes first.
	order=("${CONTENDERS[@]:$(((run - 1) % ${#CONTENDERS[@]}))}" "${CONTENDERS[@]:0:$(((run - 1) % ${#CONTENDERS[@]}))}")
	for c in "${order[@]}"; do
		settle
		[[ -f $DATA && -x $RAW ]] || die "the scratch dir $WORK vanished (something removed it)"
		log "run $run/$RUNS: $c"
		t_c=$EPOCHREALTIME
		if [[ $c == raw ]]; then
			raw_run "$run"
		else
			fuse_run "$c" "$run"
			reap_daemons
		fi
		obscmd empty "$(bucket_of "$c")" "r$run/" || log "  could not empty r$run/ of $c's bucket"
		SPENT[$c]=$(awk -v a="${SPENT[$c]:-0}" -v b="$(elapsed "$t_c" "$EPOCHREALTIME")" 'BEGIN { printf "%.1f", a + b }')
	done
done

# ---------------------------------------------------------------------------------------------
# report

T_END=$EPOCHREALTIME
META=$SERVER_DIR/last-meta.tsv
{
	printf 'command\t%s\n' "$COMMAND"
	printf 'mode\t%s\n' "$( ((QUICK)) && echo quick || echo full)"
	printf 'runs\t%s\n' "$RUNS"
	printf 'file_mib\t%s\n' "$FILE_MIB"
	printf 'small_files\t%s\n' "$SMALL"
	printf 'small_dirs\t%s\n' "$SMALL_DIRS"
	printf 'list_objects\t%s\n' "$LISTN"
	printf 'fio_seconds\t%s\n' "$FIO_RT"
	printf 'contenders\t%s\n' "${CONTENDERS[*]}"
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'total_seconds\t%s\n' "$(elapsed "$T_START" "$T_END")"
	for c in "${CONTENDERS[@]}"; do printf 'spent_%s\t%s\n' "$c" "${SPENT[$c]:-0}"; done
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	printf 'memory\t%s\n' "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
	printf 'kernel\t%s\n' "$(uname -sr)"
	printf 'tcp\t%s\n' "$TCP_NOTE"
	printf 'rtt_us\t%s\n' "$((PROXY ? RTT_US : 0))"
	printf 'rtt_label\t%s\n' "$RTT_LABEL"
	printf 'rate\t%s\n' "$RATE"
	((PROXY)) && printf 'proxy\t%s\n' "ssecfs-delay-proxy ${proxy_args[*]}"
	printf 'rtt_direct_ms\t%s\n' "$RTT_DIRECT"
	printf 'rtt_kept_ms\t%s\n' "$RTT_KEPT"
	printf 'rtt_new_ms\t%s\n' "$RTT_NEW"
	printf 'os\t%s\n' "$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
	printf 'garage\t%s\n' "$("$GARAGE_BIN" --version 2>/dev/null | head -n1)"
	printf 'ssecfs\t%s (git %s)\n' "$("$SSECFS" --version 2>/dev/null | head -n1)" "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
	printf 'rustc\t%s\n' "$(rustc --version 2>/dev/null || echo '?')"
	printf 's3fs\t%s\n' "$(s3fs --version 2>/dev/null | head -n1 || echo 'not installed')"
	printf 'rclone\t%s\n' "$(rclone version 2>/dev/null | head -n1 || echo 'not installed')"
	printf 'fio\t%s\n' "$(fio --version 2>/dev/null)"
	printf 'rsync\t%s\n' "$(rsync --version 2>/dev/null | head -n1 | sed 's/  */ /g')"
} >"$META"

# python3 with matplotlib for the chart: the Debian one if the default python3 lacks it
PY=python3
if ! python3 -c 'import matplotlib' >/dev/null 2>&1 && [[ -x /usr/bin/python3 ]] &&
	/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1; then
	PY=/usr/bin/python3
fi
report_args=(--results "$RESULTS" --meta "$META")
# a latency profile has its own chart (and section, which report.py finds from the meta)
PNG=docs/benchmarks.png
((PROXY)) && PNG=docs/benchmarks-rtt$RTT_LABEL${RATE:+-rate${RATE,,}}.png
if ((DOCS)); then
	mkdir -p docs
	report_args+=(--md docs/BENCHMARKS.md --png "$PNG")
fi
"$PY" scripts/bench/report.py "${report_args[@]}"
((DOCS)) && log "wrote docs/BENCHMARKS.md and $PNG"
log "total $(elapsed "$T_START" "$EPOCHREALTIME") s"
