#!/usr/bin/env bash
# Quickstart: build ssecfs, make a key, mount a bucket, write a file, and show that the server
# will not hand it out without the key.
#
#   scripts/quickstart.sh                      local Garage (started by scripts/test-server.sh)
#   scripts/quickstart.sh --endpoint URL BUCKET[:PREFIX] [MOUNT OPTIONS]   your own S3 server
#                                              (credentials from the AWS chain)
#
# Mountpoint: $SSECFS_MNT (default ./mnt). Key: $SSECFS_KEY (default ~/.config/ssecfs/key,
# created with `ssecfs keygen` if missing). Unmount with `fusermount3 -u ./mnt`.
# Installs what is missing first (scripts/setup.sh). The refusal is shown with curl --aws-sigv4
# (a GET signed with your credentials but without the key); no Python is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ssecfs-target}
export PATH=$HOME/.cargo/bin:$PATH

conn=() local_garage=0
if [[ ${1:-} == --endpoint ]]; then
	if (($# < 3)); then
		echo "usage: scripts/quickstart.sh [--endpoint URL BUCKET[:PREFIX] [MOUNT OPTIONS]]" >&2
		exit 2
	fi
	endpoint=$2 bucket=$3
	shift 3
	conn=(--endpoint "$endpoint" "$@") # e.g. --allow-http, only if you mean it
	scripts/setup.sh --no-garage --no-deb # apt packages, Rust
else
	scripts/setup.sh --no-deb # apt packages, Rust, Garage (a cold build takes ~10 min)
	env_lines=$(scripts/test-server.sh)
	eval "$env_lines"
	endpoint=$S3_ENDPOINT bucket=$S3_BUCKET local_garage=1
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

text="hello from ssecfs, $(date)"
echo "$text" >"$mnt/hello.txt" # close() returning 0: the object is on the server
echo "quickstart: wrote $mnt/hello.txt; reading it back through the mount:"
cat "$mnt/hello.txt"

# The same object straight from S3, signed with the same credentials but without the SSE-C
# headers: the server refuses it (AWS and Garage answer 400). curl signs it (--aws-sigv4); the
# credentials go in on stdin (-K -), not on the command line where ps would show them.
bname=${bucket#s3://} prefix=""
if [[ $bname == *:* ]]; then
	prefix=${bname#*:} bname=${bname%%:*}
elif [[ $bname == */* ]]; then
	prefix=${bname#*/} bname=${bname%%/*}
fi
while [[ $prefix == /* ]]; do prefix=${prefix#/}; done
while [[ $prefix == */ ]]; do prefix=${prefix%/}; done
object=${prefix:+$prefix/}hello.txt

# credentials and region as the AWS chain finds them in the environment or ~/.aws (profiles)
ini() { # file section key
	awk -v s="$2" -v k="$3" '
		/^[ \t]*\[/ { cur = $0; gsub(/^[ \t]*\[[ \t]*|[ \t]*\][ \t\r]*$/, "", cur); next }
		cur == s && index($0, "=") {
			n = substr($0, 1, index($0, "=") - 1); v = substr($0, index($0, "=") + 1)
			gsub(/^[ \t]+|[ \t\r]+$/, "", n); gsub(/^[ \t]+|[ \t\r]+$/, "", v)
			if (n == k) { print v; exit }
		}' "$1" 2>/dev/null || true
}
profile=${AWS_PROFILE:-default}
creds_file=${AWS_SHARED_CREDENTIALS_FILE:-$HOME/.aws/credentials}
config_file=${AWS_CONFIG_FILE:-$HOME/.aws/config}
cfg_section=$([[ $profile == default ]] && echo default || echo "profile $profile")
key_id=${AWS_ACCESS_KEY_ID:-$(ini "$creds_file" "$profile" aws_access_key_id)}
secret=${AWS_SECRET_ACCESS_KEY:-$(ini "$creds_file" "$profile" aws_secret_access_key)}
token=${AWS_SESSION_TOKEN:-}
[[ -n ${AWS_ACCESS_KEY_ID:-} ]] || token=$(ini "$creds_file" "$profile" aws_session_token)
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(ini "$config_file" "$cfg_section" region)}}
region=${region:-us-east-1}

echo "quickstart: the same object fetched straight from S3 without the key:"
if [[ -z $key_id || -z $secret ]]; then
	echo "  skipped: no access key in the environment or $creds_file (profile $profile) for curl to sign with"
	echo "quickstart: done. Unmount with: fusermount3 -u $mnt"
	exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ssecfs-quickstart.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# s3_get URL OUT: a signed GET (x-amz-content-sha256 set by hand: curl before 8.x leaves it out,
# and S3 wants it); prints the HTTP status, 000 if nothing answered
s3_get() {
	local code
	code=$({
		printf 'user = "%s:%s"\n' "$key_id" "$secret"
		[[ -z $token ]] || printf 'header = "x-amz-security-token: %s"\n' "$token"
	} | curl -sS -K - --aws-sigv4 "aws:amz:$region:s3" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
		-o "$2" -w '%{http_code}' "$1") || code=000
	echo "$code"
}
urlencode() { # string [characters kept as they are, besides A-Za-z0-9._~-]
	local LC_ALL=C s=$1 keep=${2:-} o="" c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		if [[ $c == [A-Za-z0-9._~-] || (-n $keep && $keep == *"$c"*) ]]; then
			o+=$c
		else
			printf -v c '%%%02X' "'$c"
			o+=$c
		fi
	done
	echo "$o"
}
xml() { # element file: the first <element>text</element> of an S3 answer, or nothing
	if [[ -f $2 ]]; then
		sed -n "s:.*<$1>\\([^<]*\\)</$1>.*:\\1:p;T;q" "$2"
	fi
}

url=${endpoint%/}/$bname/$(urlencode "$object" /)

# first, that these credentials and this signature are good: the listing names the object
code=$(s3_get "${endpoint%/}/$bname?list-type=2&prefix=$(urlencode "$object")" "$tmp/list")
if [[ $code != 200 ]] || ! grep -qF "<Key>$object</Key>" "$tmp/list"; then
	echo "  could not check: listing $bname with these credentials gave HTTP $code $(xml Code "$tmp/list") $(xml Message "$tmp/list")"
	exit 1
fi
echo "  curl --aws-sigv4 aws:amz:$region:s3 --user \"\$AWS_ACCESS_KEY_ID:\$AWS_SECRET_ACCESS_KEY\" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' $url"
code=$(s3_get "$url" "$tmp/body")
err=$(xml Code "$tmp/body")
msg=$(xml Message "$tmp/body")
if grep -qF "$text" "$tmp/body" 2>/dev/null; then
	echo "  UNEXPECTED: the server returned the plaintext without the key (HTTP $code)"
	exit 1
elif [[ $code == 400 ]]; then
	echo "  refused: HTTP $code ${err:-(no error code)}${msg:+: $msg}"
	echo "  (the same credentials list the object: it is there, stored with SSE-C, and only the key opens it)"
else
	echo "  could not show the refusal: HTTP $code ${err}${msg:+: $msg} (expected 400: SSE-C object read without the key)"
	exit 1
fi

# The local Garage keeps its store on this machine: the bytes it holds for the object (its
# metadata and data dirs, uncompressed) do not contain the plaintext anywhere.
if ((local_garage)) && [[ -d $SSECFS_TEST_DIR/data ]]; then
	if grep -rqF "$text" "$SSECFS_TEST_DIR/meta" "$SSECFS_TEST_DIR/data"; then
		echo "quickstart: UNEXPECTED: the plaintext is in Garage's store under $SSECFS_TEST_DIR"
		exit 1
	fi
	size=$(du -sch "$SSECFS_TEST_DIR/meta" "$SSECFS_TEST_DIR/data" | tail -n1 | cut -f1)
	echo "quickstart: and the plaintext is nowhere in Garage's own store ($SSECFS_TEST_DIR/meta and data, $size, uncompressed): it holds only ciphertext"
fi
echo "quickstart: done. Unmount with: fusermount3 -u $mnt"
