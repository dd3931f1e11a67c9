#!/usr/bin/env bash
# Install ssecfs system-wide: the binary in /usr/local/bin, and /sbin/mount.ssecfs so that
# `mount -t ssecfs` works too (`mount -t fuse.ssecfs` goes through fuse3's mount helper, which
# finds `ssecfs` on PATH). Needs fuse3 (apt-get install -y fuse3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
PREFIX=${PREFIX:-/usr/local}
cargo build --release -q
install -D -m 0755 "$CARGO_TARGET_DIR/release/ssecfs" "$PREFIX/bin/ssecfs"
ln -sf "$PREFIX/bin/ssecfs" /sbin/mount.ssecfs
echo "installed $PREFIX/bin/ssecfs and /sbin/mount.ssecfs -> it"
