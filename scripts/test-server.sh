#!/usr/bin/env bash
# Local S3 test server for ssecfs: a fresh single-node Garage on 127.0.0.1, with one access key
# and one bucket, optionally behind a TLS front-end (stunnel4, self-signed leaf certificate).
#
#   eval "$(scripts/test-server.sh)"      start (or restart, fresh) and export the connection env
#   scripts/test-server.sh stop            stop the Garage/stunnel started by this script
#   scripts/test-server.sh install         only make sure a Garage binary exists (cargo install)
#   scripts/test-server.sh status          exit 0 if the Garage started by this script is running
#   scripts/test-server.sh kill            SIGKILL Garage (a crash), keeping its meta/data dirs
#   scripts/test-server.sh resume          start Garage again on the kept meta/data dirs and config
#                                          (after kill or stop; same key, bucket and ports)
#   scripts/test-server.sh key NAME BUCKET…  a second access key, with read and write on each
#                                          BUCKET (created if missing, owned by the first key);
#                                          prints `ID SECRET` (scripts/bench.sh's observer:
#                                          its requests are told apart in the server's log)
#
# A 3-node cluster (replication factor 3, all on 127.0.0.1) for fault tests:
#   eval "$(scripts/test-server.sh cluster)"   start (fresh) and export the same variables, plus
#                                          S3_CLUSTER=1 and S3_ENDPOINT_NODE{1,2,3}; S3_ENDPOINT
#                                          is node 1's S3 API (kill node 2 or 3 to keep it up)
#   scripts/test-server.sh kill-node N     SIGKILL node N (a crash; its data dirs stay)
#   scripts/test-server.sh start-node N    start node N again on its kept data (after kill-node);
#                                          returns once every node sees every other
#   scripts/test-server.sh cluster-stop    stop every node of the cluster
#   Node N listens on CLUSTER_BASE_PORT+10*(N-1) + 0 (S3), +1 (RPC), +3 (admin); state in
#   SSECFS_CLUSTER_DIR (default $SSECFS_TEST_DIR/cluster); `stop` also stops the cluster.
#
# stdout carries ONLY `export` lines (also written to $SSECFS_TEST_DIR/env.sh); progress goes to
# $SSECFS_TEST_DIR/setup.log, errors to stderr. Every start wipes the previous meta/data dirs.
#
# Environment (defaults):
#   SSECFS_TEST_DIR=${XDG_RUNTIME_DIR:-/tmp}/ssecfs-garage
#   S3_PORT=3900 RPC_PORT=3901 ADMIN_PORT=3903
#   TLS_PORT=3943        stunnel TLS front-end to S3_PORT; 0 disables; skipped without stunnel4
#   TLS_BACKEND_PORT=$S3_PORT  where the TLS front-end forwards (scripts/bench.sh --rtt: its
#                        delaying proxy, so that https clients take the same path as the others)
#   S3_BUCKET=ssecfs     bucket created for the key (read/write/owner); the key may also create
#                        more buckets (S3 CreateBucket), tests may use that or the admin API
#   GARAGE_BIN           garage binary; default: `garage` on PATH, else ~/.cargo/bin/garage,
#                        else `cargo install garage --locked` (GARAGE_VERSION=x.y.z to pin)
#   RUST_LOG=garage=info log level of the Garage server ($SSECFS_TEST_DIR/garage.log)
set -euo pipefail

DIR=${SSECFS_TEST_DIR:-${XDG_RUNTIME_DIR:-/tmp}/ssecfs-garage}
S3_PORT=${S3_PORT:-3900}
RPC_PORT=${RPC_PORT:-3901}
ADMIN_PORT=${ADMIN_PORT:-3903}
TLS_PORT=${TLS_PORT:-3943}
TLS_BACKEND_PORT=${TLS_BACKEND_PORT:-$S3_PORT}
BUCKET=${S3_BUCKET:-ssecfs}
CDIR=${SSECFS_CLUSTER_DIR:-$DIR/cluster}
CLUSTER_BASE_PORT=${CLUSTER_BASE_PORT:-3970}
NODES=3
KEY_NAME=ssecfs-test
CFG=$DIR/garage.toml
LOG=$DIR/setup.log

die() {
	echo "test-server.sh: $*" >&2
	exit 1
}

# ---------------------------------------------------------------------------------------------
# install

find_garage() {
	if [[ -n ${GARAGE_BIN:-} ]]; then
		[[ -x $GARAGE_BIN ]] || die "GARAGE_BIN=$GARAGE_BIN is not executable"
		return 0
	fi
	if command -v garage >/dev/null 2>&1; then
		GARAGE_BIN=$(command -v garage)
	elif [[ -x $HOME/.cargo/bin/garage ]]; then
		GARAGE_BIN=$HOME/.cargo/bin/garage
	else
		return 1
	fi
}

install_garage() {
	find_garage && return 0
	local cargo
	cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
	[[ -x $cargo ]] || die "garage not found and no cargo to build it (install Rust: https://rustup.rs)"
	command -v cc >/dev/null 2>&1 || die "garage not found and no C compiler to build it (apt-get install build-essential)"
	local -a version=()
	version=(--version "${GARAGE_VERSION:-2.5.0}")  # the version the test bed was checked with
	echo "test-server.sh: garage not found, building it: cargo install garage --locked ${version[*]} (about 10 min on 2 cores)" >&2
	# Own target dir (not the project's CARGO_TARGET_DIR), from a neutral cwd (no project .cargo/config).
	(cd / && env -u CARGO_TARGET_DIR "$cargo" install garage --locked "${version[@]}") >&2 ||
		die "cargo install garage failed"
	GARAGE_BIN=$HOME/.cargo/bin/garage
	[[ -x $GARAGE_BIN ]] || die "cargo install garage succeeded but $GARAGE_BIN is missing (CARGO_INSTALL_ROOT set?)"
}

need_tools() {
	local t
	for t in openssl curl; do
		command -v "$t" >/dev/null 2>&1 || die "'$t' is required (apt-get install $t)"
	done
}

# ---------------------------------------------------------------------------------------------
# process handling (only processes recorded in our PID files, and only if they still are what
# we started: the PID may have been recycled)

pid_alive() { # pidfile name-in-cmdline
	local f=$1 want=$2 p
	[[ -f $f ]] || return 1
	p=$(cat "$f" 2>/dev/null) || return 1
	[[ $p =~ ^[0-9]+$ ]] || return 1
	kill -0 "$p" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$want" || return 1
	echo "$p"
}

stop_pidfile() { # pidfile name-in-cmdline
	local f=$1 want=$2 p
	if p=$(pid_alive "$f" "$want"); then
		kill "$p" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$p" 2>/dev/null; then
			kill -9 "$p" 2>/dev/null || true
			sleep 0.2
		fi
	fi
	rm -f "$f"
}

stop_single() {
	stop_pidfile "$DIR/stunnel.pid" stunnel
	stop_pidfile "$DIR/garage.pid" garage
}

stop_all() {
	stop_single
	cluster_stop
}

# prints the HTTP status (000 when nothing answers)
http_status() {
	curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" 2>/dev/null || true
}

port_free() { # port
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# start

g() { "$GARAGE_BIN" -c "$CFG" "$@" >>"$LOG" 2>&1; }

# EXIT trap while starting: on any failure, show the logs and leave nothing running
on_start_exit() {
	local rc=$?
	[[ $rc == 0 ]] && return 0
	{
		echo "test-server.sh: start failed (exit $rc); last lines of $LOG and $DIR/garage.log:"
		tail -n 20 "$LOG" 2>/dev/null || true
		tail -n 20 "$DIR/garage.log" 2>/dev/null || true
	} >&2
	stop_single
	exit "$rc"
}

start() {
	need_tools
	install_garage
	mkdir -p "$DIR"
	chmod 700 "$DIR" # env.sh, garage.toml: secrets
	stop_single
	rm -rf "$DIR/meta" "$DIR/data" "$DIR/env.sh" "$DIR/garage.log"
	: >"$LOG"

	local port
	for port in "$S3_PORT" "$RPC_PORT" "$ADMIN_PORT"; do
		port_free "$port" || die "port $port on 127.0.0.1 is already in use (not by an instance of this script); set S3_PORT/RPC_PORT/ADMIN_PORT"
	done
	if [[ $TLS_PORT != 0 ]] && command -v stunnel4 >/dev/null 2>&1; then
		port_free "$TLS_PORT" || die "TLS port $TLS_PORT on 127.0.0.1 is already in use; set TLS_PORT (0 disables TLS)"
	fi
	trap on_start_exit EXIT

	mkdir -p "$DIR/meta" "$DIR/data"
	"$GARAGE_BIN" --version >>"$LOG" 2>&1 || true

	ADMIN_TOKEN=$(openssl rand -hex 32)
	(
		umask 077
		cat >"$CFG" <<CONF
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
replication_factor = 1
# no compression: tests may grep the data dir to prove that no plaintext reaches the server
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
admin_token = "$ADMIN_TOKEN"
CONF
	)

	NO_COLOR=1 RUST_LOG=${RUST_LOG:-garage=info} nohup "$GARAGE_BIN" -c "$CFG" server >"$DIR/garage.log" 2>&1 </dev/null &
	local gpid=$!
	echo "$gpid" >"$DIR/garage.pid"

	local ok=0
	for _ in $(seq 150); do
		kill -0 "$gpid" 2>/dev/null || die "garage exited at startup, see $DIR/garage.log"
		if "$GARAGE_BIN" -c "$CFG" status >>"$LOG" 2>&1; then
			ok=1
			break
		fi
		sleep 0.2
	done
	[[ $ok == 1 ]] || die "garage did not answer 'garage status' within 30 s, see $DIR/garage.log"

	local node
	node=$("$GARAGE_BIN" -c "$CFG" node id -q 2>>"$LOG" | cut -d@ -f1)
	[[ -n $node ]] || die "could not read the garage node id"
	g layout assign -z dc1 -c 1G "$node"
	g layout apply --version 1

	KEY_ID=GK$(openssl rand -hex 12)
	SECRET=$(openssl rand -hex 32)
	g key import --yes -n "$KEY_NAME" "$KEY_ID" "$SECRET"
	g key allow --create-bucket "$KEY_ID"
	g bucket create "$BUCKET"
	g bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID"

	# the S3 API answers (403/400 for an anonymous request is fine: it is HTTP)
	ok=0
	for _ in $(seq 150); do
		[[ $(http_status "http://127.0.0.1:$S3_PORT/") != 000 ]] && {
			ok=1
			break
		}
		sleep 0.2
	done
	[[ $ok == 1 ]] || die "S3 endpoint http://127.0.0.1:$S3_PORT did not answer within 30 s"

	TLS=0
	if [[ $TLS_PORT != 0 ]] && command -v stunnel4 >/dev/null 2>&1; then
		start_tls
		TLS=1
	elif [[ $TLS_PORT != 0 ]]; then
		echo "stunnel4 not installed: no TLS front-end" >>"$LOG"
	fi
	emit_env >"$DIR/env.sh.tmp"
	mv "$DIR/env.sh.tmp" "$DIR/env.sh"
	trap - EXIT
	cat "$DIR/env.sh"
}

# ---------------------------------------------------------------------------------------------
# kill / resume: a crash and a restart that keep the data (fault-injection tests)

# SIGKILL the Garage of this pid file (a crash: its data dirs stay), wait up to 5 s for it to go
crash_pidfile() { # pidfile
	local p
	if p=$(pid_alive "$1" garage); then
		kill -9 "$p" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$1"
}

kill_garage() {
	crash_pidfile "$DIR/garage.pid"
}

resume() {
	[[ -f $CFG && -d $DIR/meta ]] || die "nothing to resume in $DIR (run start first)"
	find_garage || die "garage binary not found"
	pid_alive "$DIR/garage.pid" garage >/dev/null && return 0
	NO_COLOR=1 RUST_LOG=${RUST_LOG:-garage=info} nohup "$GARAGE_BIN" -c "$CFG" server >>"$DIR/garage.log" 2>&1 </dev/null &
	local gpid=$!
	echo "$gpid" >"$DIR/garage.pid"
	# the S3 port of the kept config (the first api_bind_addr is [s3_api]'s)
	local port
	port=$(sed -n 's/^api_bind_addr = "127.0.0.1:\([0-9]*\)"$/\1/p' "$CFG" | head -n1)
	S3_PORT=${port:-$S3_PORT}
	for _ in $(seq 150); do
		kill -0 "$gpid" 2>/dev/null || die "garage exited at restart, see $DIR/garage.log"
		[[ $(http_status "http://127.0.0.1:$S3_PORT/") != 000 ]] && return 0
		sleep 0.2
	done
	die "S3 endpoint http://127.0.0.1:$S3_PORT did not answer within 30 s of restart"
}

start_tls() {
	local tls=$DIR/tls
	mkdir -p "$tls"
	# self-signed LEAF certificate: rustls rejects a CA:TRUE certificate used as end entity
	if ! openssl x509 -in "$tls/cert.pem" -noout -checkend 86400 >/dev/null 2>&1 || [[ ! -s $tls/key.pem ]]; then
		openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 \
			-keyout "$tls/key.pem" -out "$tls/cert.pem" -subj "/CN=127.0.0.1" \
			-addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
			-addext "basicConstraints=critical,CA:FALSE" \
			-addext "extendedKeyUsage=serverAuth" >>"$LOG" 2>&1
		chmod 600 "$tls/key.pem"
	fi
	cat >"$tls/stunnel.conf" <<CONF
foreground = no
pid = $DIR/stunnel.pid
output = $tls/stunnel.log
[ssecfs-s3]
accept = 127.0.0.1:$TLS_PORT
connect = 127.0.0.1:$TLS_BACKEND_PORT
cert = $tls/cert.pem
key = $tls/key.pem
CONF
	stunnel4 "$tls/stunnel.conf" >>"$LOG" 2>&1
	local ok=0
	for _ in $(seq 100); do
		[[ $(http_status --cacert "$tls/cert.pem" "https://127.0.0.1:$TLS_PORT/") != 000 ]] && {
			ok=1
			break
		}
		sleep 0.1
	done
	[[ $ok == 1 ]] || die "TLS front-end https://127.0.0.1:$TLS_PORT did not answer, see $tls/stunnel.log"
}

emit_env() {
	local -a vars=(
		S3_ENDPOINT "http://127.0.0.1:$S3_PORT"
		AWS_ACCESS_KEY_ID "$KEY_ID"
		AWS_SECRET_ACCESS_KEY "$SECRET"
		AWS_REGION garage
		AWS_DEFAULT_REGION garage
		S3_BUCKET "$BUCKET"
		GARAGE_BIN "$GARAGE_BIN"
		GARAGE_CONFIG "$CFG"
		GARAGE_ADMIN_ENDPOINT "http://127.0.0.1:$ADMIN_PORT"
		GARAGE_ADMIN_TOKEN "$ADMIN_TOKEN"
		SSECFS_TEST_DIR "$DIR"
	)
	if [[ ${CLUSTER:-0} == 1 ]]; then
		local n
		vars+=(S3_CLUSTER 1 SSECFS_CLUSTER_DIR "$CDIR")
		for n in $(seq "$NODES"); do
			vars+=("S3_ENDPOINT_NODE$n" "http://127.0.0.1:$(node_port "$n" 0)")
		done
	fi
	if [[ $TLS == 1 ]]; then
		vars+=(S3_ENDPOINT_TLS "https://127.0.0.1:$TLS_PORT" S3_CA_CERT "$DIR/tls/cert.pem")
	fi
	local i
	for ((i = 0; i < ${#vars[@]}; i += 2)); do
		printf 'export %s=%q\n' "${vars[i]}" "${vars[i + 1]}"
	done
}

# ---------------------------------------------------------------------------------------------
# 3-node cluster

node_port() { echo $((CLUSTER_BASE_PORT + 10 * ($1 - 1) + $2)); } # node offset
node_cfg() { echo "$CDIR/node$1/garage.toml"; }

cluster_stop() {
	local n
	for n in $(seq "$NODES"); do
		stop_pidfile "$CDIR/node$n/garage.pid" garage
	done
}

check_node() {
	[[ $1 =~ ^[1-9][0-9]*$ && $1 -le $NODES ]] || die "node number must be 1..$NODES, not '${1:-}'"
}

start_node() { # n: start the server on its config and wait until its RPC answers
	local n=$1 cfg gpid
	cfg=$(node_cfg "$n")
	[[ -f $cfg ]] || die "no cluster config $cfg: start the cluster first (test-server.sh cluster)"
	if pid_alive "$CDIR/node$n/garage.pid" garage >/dev/null; then
		return 0
	fi
	NO_COLOR=1 RUST_LOG=${RUST_LOG:-garage=info} nohup "$GARAGE_BIN" -c "$cfg" server \
		>>"$CDIR/node$n/garage.log" 2>&1 </dev/null &
	gpid=$!
	echo "$gpid" >"$CDIR/node$n/garage.pid"
	for _ in $(seq 150); do
		kill -0 "$gpid" 2>/dev/null || die "garage node $n exited at startup, see $CDIR/node$n/garage.log"
		"$GARAGE_BIN" -c "$cfg" status >>"$LOG" 2>&1 && return 0
		sleep 0.2
	done
	die "garage node $n did not answer 'garage status' within 30 s, see $CDIR/node$n/garage.log"
}

kill_node() {
	local n=$1
	check_node "$n"
	crash_pidfile "$CDIR/node$n/garage.pid"
}

# how many nodes node N (default 1) sees as up (garage status lists "HEALTHY NODES" first)
healthy_nodes() {
	"$GARAGE_BIN" -c "$(node_cfg "${1:-1}")" status 2>/dev/null |
		awk '/HEALTHY NODES/ {h=1; next} /FAILED NODES/ {h=0} h && $1 ~ /^[0-9a-f]+$/ {c++} END {print c+0}'
}

cluster_start() {
	need_tools
	install_garage
	LOG=$CDIR/setup.log
	CFG=$(node_cfg 1)
	mkdir -p "$CDIR"
	chmod 700 "$CDIR"
	cluster_stop
	rm -rf "$CDIR"/node* "$CDIR/env.sh"
	: >"$LOG"
	local n off
	for n in $(seq "$NODES"); do
		for off in 0 1 3; do
			port_free "$(node_port "$n" "$off")" || die "port $(node_port "$n" "$off") on 127.0.0.1 is already in use; set CLUSTER_BASE_PORT"
		done
	done
	trap 'rc=$?; [[ $rc == 0 ]] || { echo "test-server.sh: cluster start failed; see $LOG" >&2; tail -n 20 "$LOG" >&2; cluster_stop; }' EXIT

	ADMIN_TOKEN=$(openssl rand -hex 32)
	local secret
	secret=$(openssl rand -hex 32)
	for n in $(seq "$NODES"); do
		mkdir -p "$CDIR/node$n/meta" "$CDIR/node$n/data"
		(
			umask 077
			cat >"$(node_cfg "$n")" <<CONF
metadata_dir = "$CDIR/node$n/meta"
data_dir = "$CDIR/node$n/data"
db_engine = "sqlite"
replication_factor = 3
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$(node_port "$n" 1)"
rpc_public_addr = "127.0.0.1:$(node_port "$n" 1)"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$(node_port "$n" 0)"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$(node_port "$n" 3)"
admin_token = "$ADMIN_TOKEN"
CONF
		)
	done
	for n in $(seq "$NODES"); do
		start_node "$n"
	done
	local ids=() id
	for n in $(seq "$NODES"); do
		id=$("$GARAGE_BIN" -c "$(node_cfg "$n")" node id -q 2>>"$LOG")
		[[ -n $id ]] || die "could not read the id of garage node $n"
		ids+=("$id")
		[[ $n == 1 ]] || g node connect "$id"
	done
	for n in $(seq "$NODES"); do
		g layout assign -z "dc$n" -c 1G "${ids[n - 1]%%@*}"
	done
	g layout apply --version 1
	local ok=0
	for _ in $(seq 150); do
		[[ $(healthy_nodes) == "$NODES" ]] && {
			ok=1
			break
		}
		sleep 0.2
	done
	[[ $ok == 1 ]] || die "the $NODES garage nodes did not all become healthy within 30 s"

	KEY_ID=GK$(openssl rand -hex 12)
	SECRET=$(openssl rand -hex 32)
	g key import --yes -n "$KEY_NAME" "$KEY_ID" "$SECRET"
	g key allow --create-bucket "$KEY_ID"
	g bucket create "$BUCKET"
	g bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID"
	S3_PORT=$(node_port 1 0)
	ADMIN_PORT=$(node_port 1 3)
	ok=0
	for _ in $(seq 150); do
		[[ $(http_status "http://127.0.0.1:$S3_PORT/") != 000 ]] && {
			ok=1
			break
		}
		sleep 0.2
	done
	[[ $ok == 1 ]] || die "S3 endpoint http://127.0.0.1:$S3_PORT did not answer within 30 s"
	TLS=0
	CLUSTER=1
	emit_env >"$CDIR/env.sh.tmp"
	mv "$CDIR/env.sh.tmp" "$CDIR/env.sh"
	trap - EXIT
	cat "$CDIR/env.sh"
}

# ---------------------------------------------------------------------------------------------

case ${1:-start} in
start) start ;;
stop) stop_all ;;
install)
	need_tools
	install_garage
	echo "garage: $GARAGE_BIN ($("$GARAGE_BIN" --version 2>/dev/null | head -n1))" >&2
	;;
status) pid_alive "$DIR/garage.pid" garage >/dev/null ;;
key)
	[[ -n ${2:-} ]] || die "key: a name is needed (key NAME BUCKET…)"
	find_garage || die "garage not found"
	pid_alive "$DIR/garage.pid" garage >/dev/null || die "key: no Garage started by this script is running"
	id=GK$(openssl rand -hex 12)
	secret=$(openssl rand -hex 32)
	g key import --yes -n "$2" "$id" "$secret" || die "key: garage key import failed, see $LOG"
	main_key=$(sed -n 's/^export AWS_ACCESS_KEY_ID=//p' "$DIR/env.sh")
	for b in "${@:3}"; do
		# a global alias (a bucket made by CreateBucket has only its key's local one)
		"$GARAGE_BIN" -c "$CFG" bucket info "$b" >/dev/null 2>&1 || g bucket create "$b" ||
			die "key: garage bucket create $b failed, see $LOG"
		g bucket allow --read --write --owner --key "$main_key" "$b" &&
			g bucket allow --read --write --key "$id" "$b" || die "key: garage bucket allow $b failed, see $LOG"
	done
	echo "$id $secret"
	;;
kill) kill_garage ;;
resume) resume ;;
cluster) cluster_start ;;
cluster-stop) cluster_stop ;;
kill-node)
	kill_node "${2:-}"
	;;
start-node)
	check_node "${2:-}"
	find_garage || die "garage not found"
	LOG=$CDIR/setup.log
	start_node "$2"
	# back in the cluster: it and node 1 both see every node (else its requests miss quorum)
	ok=0
	for _ in $(seq 300); do
		if [[ $(healthy_nodes "$2") == "$NODES" && $(healthy_nodes 1) == "$NODES" ]]; then
			ok=1
			break
		fi
		sleep 0.2
	done
	[[ $ok == 1 ]] || die "node $2 did not rejoin the cluster within 60 s, see $CDIR/node$2/garage.log"
	;;
-h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*) die "unknown command '$1' (start | stop | install | status | kill | resume | key NAME BUCKET… | cluster | cluster-stop | kill-node N | start-node N)" ;;
esac
