#!/usr/bin/env bash
# Benchmark of the tus reference server (@tus/server + @tus/s3-store, from
# npm) writing to s3s-fs on loopback: the reference alone, as
# `scripts/bench/upload.sh` (CASES=tus or all) measures it beside intake in
# the same run.
#
#   scripts/bench/tus.sh            (PART_BYTES=8388608)
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
# uploads that file (at least 100 MiB) instead of fresh random bytes.
#
# This script installs the packages and starts s3s-fs; the server, the
# client runs, the checks and the figures are `bench tus`
# (examples/bench/tus.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

ensure_rust
ensure_s3s_fs
bench_build

export BENCH_WORK=$(mktemp -d)
S3_PORT=$(free_port)
S3_PID=
cleanup() {
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
    rm -rf "$BENCH_WORK"
}
trap cleanup EXIT
tus_reference_install "${TUS_BENCH_DIR:-$BENCH_WORK/node}"
s3_start "$BENCH_WORK/s3" "$S3_PORT" bench-key bench-secret

export S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3_BUCKET=bench S3_ACCESS_KEY_ID=bench-key S3_SECRET_ACCESS_KEY=bench-secret
export PART_BYTES=${PART_BYTES:-8388608}
"$BENCH" tus
