#!/usr/bin/env bash
# Benchmarks of streaming uploads, each figure beside its baseline from the
# same run, on one S3 server (s3s-fs) on loopback:
#   - 100 MiB through intake vs the same bytes straight to S3 with the same
#     operations (multipart, same part size, parts one after another), and a
#     single direct PUT for reference; intake's CPU seconds per GiB (and
#     again on a server reading 1 MiB at a time), beside
#     the least a relay that receives, hashes (SHA-256) and sends spends
#     (examples/relay_floor.rs), and the same direct PUT sent through a bare
#     relay (receive, SHA-256, one PUT: examples/put_relay.rs), the best
#     single-PUT ratio any relay reaches here;
#   - peak RSS of intake under 20 concurrent 100 MiB uploads and under 10
#     concurrent 20 MiB uploads (those also with 1 MiB reads);
#   - the tus reference server (@tus/server + @tus/s3-store) and intake's own
#     /upload/tus, driven by the same tus client (tus/client.mjs, PATCHes of
#     one part each) with the same 100 MiB file and the same 10 x 20 MiB
#     load, each case on a fresh server process, run once to warm it (as a
#     server up for a while: connections, caches) and then timed, with the
#     peak RSS of the timed pass, and a bare tus relay driven alike
#     (receive, SHA-256, one S3 part per PATCH: examples/tus_relay.rs), the
#     best tus ratio any server reaches here;
#   - a batch of 50 x 1 MiB files vs 50 direct PUTs.
#
#   scripts/bench/upload.sh          (REPEAT=3 runs of each timed case; median)
#   CASES=tus scripts/bench/upload.sh   only the tus comparison and the
#                                    streaming baseline it is held against
#   CASES=stream scripts/bench/upload.sh   only one 100 MiB file: intake
#                                    beside a direct single PUT, and
#                                    intake's CPU seconds per GiB
#   CASES=batch scripts/bench/upload.sh   only the batch of 50 x 1 MiB
#                                    beside 50 direct PUTs
#   CASES=profile scripts/bench/upload.sh   one upload of PROFILE_MIB (100)
#                                    through intake under callgrind: its
#                                    instructions per MiB and where they go
#                                    (counts that do not depend on the load)
#   INTAKE_BIN=path scripts/bench/upload.sh   runs that intake binary (another
#                                    build, to compare two in the same setup)
#
#   TUS_BENCH_DIR=dir scripts/bench/upload.sh   keeps the tus reference's
#                                    npm packages in dir between runs
#
# This script installs and starts the services (Postgres, s3s-fs) and the
# tus reference's packages; the cases, their repeats, medians and figures
# are `bench upload` (examples/bench/upload/), which starts intake, the
# relays and the tus reference server as each case needs them. A run that
# fails ends the bench with an error rather than leave a figure without it.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

ensure_rust
ensure_s3s_fs
if [ "${CASES:-all}" = profile ]; then
    command -v valgrind >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq valgrind; }
fi
bench_build --example relay_floor --example put_relay --example tus_relay

bench_database bench_upload

WORK=$(mktemp -d)
S3_PORT=$(free_port)
S3_PID=
cleanup() {
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
    bench_database_drop
    rm -rf "$WORK"
}
trap cleanup EXIT
case ${CASES:-all} in
all | tus) tus_reference_install "${TUS_BENCH_DIR:-$WORK/node}" ;;
esac
s3_start "$WORK/s3" "$S3_PORT" bench-key bench-secret

export S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3_BUCKET=bench S3_ACCESS_KEY_ID=bench-key S3_SECRET_ACCESS_KEY=bench-secret
export STORAGE_BACKEND=s3 S3_REGION=us-east-1
export UPLOAD_PART_BYTES=${PART_BYTES:-8388608} PART_BYTES=${PART_BYTES:-8388608} RUST_LOG=warn
export BENCH_WORK=$WORK BENCH_S3_ROOT=$WORK/s3
"$BENCH" upload
