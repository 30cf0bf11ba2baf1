#!/usr/bin/env bash
# Benchmark of a replayed request (Idempotency-Key): the latency of a
# POST /upload/stream that repeats a finished upload's key (answered from the
# kept answer, its body not read) beside a plain GET /me, on one server, from
# wrk on loopback, ROUNDS rounds alternating; prints both and their ratio
# (goal: the replay's median within 1.5 x GET /me's).
#
#   scripts/bench/replay.sh                 # 5 s per measurement, 4 rounds
#   ROUNDS=6 DURATION=3s CONNECTIONS=32 scripts/bench/replay.sh
#   INTAKE_BIN=path scripts/bench/replay.sh   runs that intake binary
#
# This script installs wrk and starts Postgres; the server, the account and
# the figures are `bench replay` (examples/bench/replay.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

ensure_rust
ensure_wrk
bench_build

bench_database bench_replay
export STORAGE_BACKEND=fs FS_ROOT=$(mktemp -d) LOG_FORMAT=json RUST_LOG=warn
export BENCH_WORK=$(mktemp -d)
cleanup() {
    bench_database_drop
    rm -rf "$FS_ROOT" "$BENCH_WORK"
}
trap cleanup EXIT
"$BENCH" replay
