#!/usr/bin/env bash
# Benchmark of presigned uploads against the same S3 server (s3s-fs) on
# loopback: a 1 GiB multipart upload through intake's presigned URLs (issue,
# PUT the parts straight to S3, complete) against the same upload done by
# boto3 directly (same part size, parts one after another, same checksum
# policy, payloads unsigned as in intake's presigned URLs), and the latency
# of issue and complete calls with 50 presigned uploads in flight at once.
#
#   scripts/bench/presign.sh            (SIZE_MIB=1024 CONCURRENT=50)
#
# This script installs and starts the services (Postgres, s3s-fs); intake,
# the account, the uploads and the figures are `bench presign`
# (examples/bench/presign.rs), whose Python client
# (scripts/bench/presign/client.py) sends the parts of both sides.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

ensure_rust
ensure_s3s_fs
python3 -c 'import boto3, requests' 2>/dev/null || python3 -m pip install -q boto3 requests
bench_build

bench_database bench_presign
export BENCH_WORK=$(mktemp -d)
S3_PORT=$(free_port)
S3_PID=
cleanup() {
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
    bench_database_drop
    rm -rf "$BENCH_WORK"
}
trap cleanup EXIT
s3_start "$BENCH_WORK/s3" "$S3_PORT" bench-key bench-secret

export STORAGE_BACKEND=s3 S3_REGION=us-east-1 RUST_LOG=warn
export S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3_BUCKET=bench S3_ACCESS_KEY_ID=bench-key S3_SECRET_ACCESS_KEY=bench-secret
"$BENCH" presign
