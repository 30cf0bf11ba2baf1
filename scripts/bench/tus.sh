#!/usr/bin/env bash
# Benchmark of the tus reference server (@tus/server + @tus/s3-store, from
# npm) writing to an S3-compatible server, for comparison with our server
# against the same S3 in the same run.
#
#   scripts/bench/tus.sh S3_ENDPOINT ACCESS_KEY SECRET_KEY BUCKET PART_BYTES
#   e.g. scripts/bench/tus.sh http://127.0.0.1:9014 key secret bench 8388608
#
# Cases, each on a fresh tus server process, run once to warm it (as a
# server that has been up a while) and then timed, with the peak RSS of the
# timed pass:
#   single  one 100 MiB upload
#   10x20   10 concurrent uploads of 20 MiB each
# The client (tus/client.mjs) creates each upload with POST and then sends
# PATCH requests of PART_BYTES each, like tus-js-client with chunkSize set.
# The store runs with its defaults apart from partSize and the checksum
# policy (only when required, as intake's): it spools each part to a temp
# file before sending it.
#
# Prints one line per case on stdout (all logs go to stderr):
#   tus <case> seconds=<wall> mib_per_s=<total MiB / wall> peak_rss_mib=<server VmHWM>
# Every object is checked for its size in the bucket and then deleted; a
# missing or short object fails the run.
#
# TUS_BENCH_DIR=<dir> keeps the npm install there between runs; without it
# the packages go to a temporary folder removed at exit. TUS_BENCH_FILE=<file>
# uploads that file (at least 100 MiB) instead of fresh random bytes, so
# another server can be measured with the very same bytes.
set -euo pipefail

if [ $# -ne 5 ]; then
    echo "usage: $0 S3_ENDPOINT ACCESS_KEY SECRET_KEY BUCKET PART_BYTES" >&2
    exit 2
fi
export TUS_S3_ENDPOINT=$1 TUS_S3_ACCESS_KEY=$2 TUS_S3_SECRET_KEY=$3 TUS_S3_BUCKET=$4 TUS_PART_BYTES=$5
HERE=$(cd "$(dirname "$0")" && pwd)
MIB=1048576

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# npm packages, installed once per folder. The .mjs files are copied next to
# node_modules because ES module imports resolve from the script's location.
NODE_DIR=${TUS_BENCH_DIR:-$WORK/node}
mkdir -p "$NODE_DIR"
if [ ! -f "$NODE_DIR/node_modules/@tus/s3-store/package.json" ] || [ ! -f "$NODE_DIR/node_modules/@tus/server/package.json" ]; then
    echo "installing @tus/server and @tus/s3-store into $NODE_DIR" >&2
    ( cd "$NODE_DIR" && { [ -f package.json ] || echo '{"private":true}' >package.json; } \
        && npm install --no-audit --no-fund --loglevel=error '@tus/server@^2' '@tus/s3-store@^2' ) >&2
fi
cp "$HERE"/tus/server.mjs "$HERE"/tus/client.mjs "$NODE_DIR/"
for pkg in @tus/server @tus/s3-store @tus/utils @aws-sdk/client-s3; do
    echo "$pkg $(node -p "require('$NODE_DIR/node_modules/$pkg/package.json').version")" >&2
done

# One source file of random bytes; the 20 MiB uploads read its first 20 MiB.
if [ -n "${TUS_BENCH_FILE:-}" ]; then
    ln -s "$TUS_BENCH_FILE" "$WORK/data.bin"
else
    head -c $((100 * MIB)) /dev/urandom >"$WORK/data.bin"
fi
# S3Store spools every part to a file in the OS temp dir before sending it;
# keep those files in our work folder so cleanup removes any leftovers.
mkdir -p "$WORK/tmp"

start_server() {
    rm -f "$WORK/port"
    TMPDIR=$WORK/tmp TUS_PORT_FILE=$WORK/port node "$NODE_DIR/server.mjs" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$WORK/port" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "tus server did not start:" >&2; cat "$WORK/server.log" >&2; return 1
}
stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }

# Checks that every upload landed as an object of the expected size, then
# deletes it together with the store's .info / .part side objects.
verify_and_delete() {
    python3 - "$1" "$2" <<'PY'
import json, os, sys
import boto3
from botocore.config import Config
size, ids = int(sys.argv[1]), json.loads(sys.argv[2])
s3 = boto3.client('s3', endpoint_url=os.environ['TUS_S3_ENDPOINT'],
                  aws_access_key_id=os.environ['TUS_S3_ACCESS_KEY'],
                  aws_secret_access_key=os.environ['TUS_S3_SECRET_KEY'],
                  region_name='us-east-1', config=Config(s3={'addressing_style': 'path'}))
bucket, bad = os.environ['TUS_S3_BUCKET'], []
for key in ids:
    try:
        got = s3.head_object(Bucket=bucket, Key=key)['ContentLength']
    except Exception as e:
        got = repr(e)
    if got != size:
        bad.append(f'{key}: expected {size} bytes, got {got}')
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get('Contents', [])
    for obj in listed:
        s3.delete_object(Bucket=bucket, Key=obj['Key'])
for line in bad:
    print(line, file=sys.stderr)
sys.exit(1 if bad or not ids else 0)
PY
}

# run_case NAME COUNT UPLOAD_MIB
run_case() {
    local name=$1 count=$2 mib=$3 out seconds ids rss
    start_server
    echo "case $name: $count x $mib MiB to $(cat "$WORK/port")" >&2
    for pass in warm timed; do
        if ! out=$(node "$NODE_DIR/client.mjs" "http://127.0.0.1:$(cat "$WORK/port")/files" "$WORK/data.bin" \
                $((mib * MIB)) "$count" "$TUS_PART_BYTES"); then
            echo "case $name: upload failed; server log:" >&2; cat "$WORK/server.log" >&2; return 1
        fi
        ids=$(node -p "JSON.stringify(JSON.parse(process.argv[1]).ids)" "$out")
        verify_and_delete $((mib * MIB)) "$ids" || { echo "case $name: verification failed" >&2; return 1; }
        # VmHWM is the peak resident set of the node process; the timed
        # pass's own peak is read.
        if [ "$pass" = warm ]; then echo 5 >"/proc/$SERVER_PID/clear_refs"; fi
    done
    rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
    stop_server
    seconds=$(node -p "JSON.parse(process.argv[1]).seconds" "$out")
    awk -v n="$name" -v s="$seconds" -v total=$((count * mib)) -v kb="$rss" \
        'BEGIN { printf "tus %s seconds=%.3f mib_per_s=%.1f peak_rss_mib=%.1f\n", n, s, total / s, kb / 1024 }'
}

run_case single 1 100
run_case 10x20 10 20
