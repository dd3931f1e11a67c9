#!/usr/bin/env bash
# Quickstart: build ssecfs, make a key, mount a bucket, write a file, and show that the server
# will not hand it out without the key.
#
#   scripts/quickstart.sh                      local Garage (started by scripts/test-server.sh)
#   scripts/quickstart.sh --endpoint URL BUCKET [MOUNT OPTIONS]   your own S3 server
#                                              (credentials from the AWS chain)
#
# Mountpoint: $SSECFS_MNT (default ./mnt). Key: $SSECFS_KEY (default ~/.config/ssecfs/key,
# created with `ssecfs keygen` if missing). Unmount with `fusermount3 -u ./mnt`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
export PATH=$HOME/.cargo/bin:$PATH

need=()
for p in fuse3 openssl curl python3 python3-boto3; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
	echo "quickstart: installing ${need[*]}" >&2
	SUDO=(); [[ $(id -u) == 0 ]] || SUDO=(sudo)
	"${SUDO[@]}" apt-get update -q >&2 && "${SUDO[@]}" apt-get install -y -q "${need[@]}" >&2
fi

conn=()
if [[ ${1:-} == --endpoint ]]; then
	endpoint=$2 bucket=$3
	shift 3
	conn=(--endpoint "$endpoint" "$@") # e.g. --allow-http, only if you mean it
else
	env_lines=$(scripts/test-server.sh)
	eval "$env_lines"
	endpoint=$S3_ENDPOINT bucket=$S3_BUCKET
	conn=(--endpoint "$endpoint" --allow-http) # loopback only
	echo "quickstart: local Garage at $endpoint, bucket $bucket (stop it with scripts/test-server.sh stop)"
fi

cargo build --release -q
bin=$CARGO_TARGET_DIR/release/ssecfs
key=${SSECFS_KEY:-$HOME/.config/ssecfs/key}
if [[ ! -f $key ]]; then
	mkdir -p "$(dirname "$key")"
	"$bin" keygen "$key"
fi
mnt=${SSECFS_MNT:-$PWD/mnt}
mkdir -p "$mnt"
mountpoint -q "$mnt" && fusermount3 -u "$mnt"
"$bin" mount "${conn[@]}" --key-file "$key" "$bucket" "$mnt"
echo "quickstart: mounted $bucket at $mnt"

echo "hello from ssecfs, $(date)" > "$mnt/hello.txt"
echo "quickstart: wrote $mnt/hello.txt; reading it back through the mount:"
cat "$mnt/hello.txt"

echo "quickstart: the same object fetched straight from S3 without the key:"
python3 - "$endpoint" "$bucket" <<'PY'
import sys, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name=__import__("os").environ.get("AWS_REGION", "us-east-1"),
                  config=Config(s3={"addressing_style": "path"}))
try:
    s3.get_object(Bucket=sys.argv[2], Key="hello.txt")
    print("  UNEXPECTED: the server returned the object without the key")
    sys.exit(1)
except ClientError as e:
    print("  refused:", e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"].get("Code") or "(no body)",
          "- the object is SSE-C encrypted; only the key opens it")
PY
echo "quickstart: done. Unmount with: fusermount3 -u $mnt"
