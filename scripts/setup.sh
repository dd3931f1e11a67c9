#!/usr/bin/env bash
# Install what ssecfs's scripts need and is missing (idempotent; a no-op in about a second when
# everything is there). Shared by scripts/quickstart.sh, scripts/test.sh and .ci/run.
#
#   scripts/setup.sh              everything
#   scripts/setup.sh --no-garage  everything but Garage (quickstart against your own S3 server)
#   scripts/setup.sh --no-deb     everything but cargo-deb (quickstart: no Debian package)
#
# Meant for Debian 12 (apt); runs as root, or uses sudo. Installs:
#   apt:    fuse3 rsync stunnel4 openssl curl ca-certificates gdb (gcore, for the core-dump test),
#           s3fs (the test that mounts one bucket with both), build-essential if there is no `cc`
#   Rust:   rustup (stable, minimal profile) with rustfmt and clippy, if there is no `cargo`
#   Garage: scripts/test-server.sh install (`cargo install garage --locked`, ~10 min on 2 cores,
#           kept in ~/.cargo/bin)
#   pjdfstest: `cargo install pjdfstest --locked` (~2 min, kept in ~/.cargo/bin), for
#           scripts/pjdfstest.sh (with Garage)
#   cargo-deb: `cargo install cargo-deb --locked` (~3 min on 2 cores, kept in ~/.cargo/bin), for
#           scripts/deb.sh and scripts/test-deb.sh
# Nothing here depends on which python3 comes first on PATH: no Python is needed.
# Progress goes to stderr; stdout stays empty.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

garage=1
deb=1
for a in "$@"; do
	case $a in
	--no-garage) garage=0 ;;
	--no-deb) deb=0 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*)
		echo "setup.sh: unknown argument '$a' (see --help)" >&2
		exit 2
		;;
	esac
done
exec 1>&2 # progress to stderr (callers may capture stdout)

export DEBIAN_FRONTEND=noninteractive
export PATH=$HOME/.cargo/bin:$PATH

SUDO=()
if [[ $(id -u) != 0 ]]; then
	SUDO=(sudo)
fi
as_root() {
	if ((${#SUDO[@]})) && ! command -v sudo >/dev/null 2>&1; then
		echo "setup.sh: need root for: $* (not root, and no sudo)"
		exit 1
	fi
	"${SUDO[@]}" "$@"
}

# --- system packages -------------------------------------------------------------------------
packages=(fuse3 rsync stunnel4 openssl curl ca-certificates gdb s3fs)
if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
	installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
	missing=()
	for p in "${packages[@]}"; do
		installed "$p" || missing+=("$p")
	done
	# garage (cold build) and some crates' build scripts need a C toolchain
	command -v cc >/dev/null 2>&1 || missing+=(build-essential)
	if ((${#missing[@]})); then
		echo "setup.sh: apt-get install ${missing[*]}"
		as_root apt-get update -q
		as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
else
	# not Debian: say what is missing, install nothing
	for t in fusermount3 rsync stunnel4 openssl curl gcore cc; do
		command -v "$t" >/dev/null 2>&1 || echo "setup.sh: WARNING: no apt here and '$t' is missing; install it by hand"
	done
fi
if [[ ! -e /dev/fuse ]]; then
	as_root modprobe fuse 2>/dev/null || true
	[[ -e /dev/fuse ]] || echo "setup.sh: WARNING: /dev/fuse is missing; mounts (and the FUSE tests) will fail"
fi

# --- Rust toolchain --------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
	echo "setup.sh: no cargo: installing rustup (stable, minimal profile, rustfmt and clippy)"
	curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
		sh -s -- -y --profile minimal --default-toolchain stable -c rustfmt -c clippy
fi
if command -v rustup >/dev/null 2>&1; then
	# no-ops when present (with a rust-toolchain file, for that toolchain)
	cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

# --- Garage ----------------------------------------------------------------------------------
if ((garage)); then
	scripts/test-server.sh install
fi

# --- pjdfstest (scripts/pjdfstest.sh) --------------------------------------------------------
if ((garage)) && ! command -v pjdfstest >/dev/null 2>&1; then
	echo "setup.sh: no pjdfstest: cargo install pjdfstest --locked --version 0.2.2 (~2 min on 2 cores)"
	(cd / && env -u CARGO_TARGET_DIR cargo install pjdfstest --locked --version 0.2.2)
fi

# --- cargo-deb -------------------------------------------------------------------------------
if ((deb)) && ! cargo deb --version >/dev/null 2>&1; then
	v=${CARGO_DEB_VERSION:-3.8.0} # the version scripts/deb.sh was checked with
	echo "setup.sh: no cargo-deb: cargo install cargo-deb --locked --version $v (~3 min on 2 cores)"
	# own target dir (not the project's CARGO_TARGET_DIR), from a neutral cwd, like Garage
	(cd / && env -u CARGO_TARGET_DIR cargo install cargo-deb --locked --version "$v")
fi
