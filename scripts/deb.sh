#!/usr/bin/env bash
# Build the Debian package: the release binary, its man pages and shell completions (generated
# by the binary from its clap definitions), then `cargo deb` ([package.metadata.deb] in
# Cargo.toml says what goes where). Prints the path of the .deb on stdout; progress on stderr.
#
#   scripts/deb.sh            then: apt-get install ./path/to/ssecfs_*.deb
#   scripts/deb.sh --dbgsym   also ssecfs-dbgsym_*.ddeb, the debug symbols (about a minute more)
#
# Generated files live in $CARGO_TARGET_DIR/release/deb-assets/ (cargo-deb's target/release/),
# the packages in $CARGO_TARGET_DIR/debian/; nothing is written inside the clone. The binary in
# the package is stripped (19 MB; with the release profile's debug info it is 150 MB).
# Needs cargo-deb (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
export PATH=$HOME/.cargo/bin:$PATH

debug=(--strip)
for a in "$@"; do
	case $a in
	--dbgsym) debug=(--dbgsym) ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*)
		echo "deb.sh: unknown argument '$a' (see --help)" >&2
		exit 2
		;;
	esac
done
exec 3>&1 1>&2 # progress to stderr, the path alone to stdout

if ! cargo deb --version >/dev/null 2>&1; then
	echo "deb.sh: cargo-deb is missing; run scripts/setup.sh (or: cargo install cargo-deb --locked)"
	exit 1
fi

cargo build --release --bin ssecfs
target=$(cd "$CARGO_TARGET_DIR" && pwd) # absolute, for the path printed
bin=$target/release/ssecfs

assets=$target/release/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" manpages "$assets/man"
gzip -9n "$assets"/man/*.1 # -n: no name or time stamp, the same bytes every build
"$bin" completions bash >"$assets/completions/ssecfs.bash"
"$bin" completions zsh >"$assets/completions/_ssecfs"
"$bin" completions fish >"$assets/completions/ssecfs.fish"

out=$target/debian
mkdir -p "$out"
rm -f "$out"/ssecfs_*.deb "$out"/ssecfs-dbgsym_*.ddeb
cargo deb --no-build "${debug[@]}" --output "$out/" >/dev/null
debs=("$out"/ssecfs_*.deb)
[[ -f ${debs[0]} ]] || {
	echo "deb.sh: cargo deb wrote no ssecfs_*.deb into $out"
	exit 1
}
echo "deb.sh: built ${debs[0]} ($(du -h "${debs[0]}" | cut -f1))"
echo "${debs[0]}" >&3
