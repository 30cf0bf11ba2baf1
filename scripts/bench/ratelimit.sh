#!/usr/bin/env bash
# Benchmark of the per-minute rate limiter: requests/s and p50/p99 latency of
# a light authenticated GET (/me) with the limiter on and off, for one hot
# account and for many accounts, from wrk on loopback. Prints a table and the
# on/off ratios measured in this run.
#
# Two servers run side by side on one database, one with the limiter off and
# one with it on, and each round measures the two back to back (off first in
# odd rounds, on first in even ones); the median of ROUNDS pairs (6 by
# default) is what is reported, beside every pair.
#
#   scripts/bench/ratelimit.sh            # 5 s per measurement, 6 rounds
#   ROUNDS=10 DURATION=3s CONNECTIONS=64 scripts/bench/ratelimit.sh
#   INTAKE_BIN=path scripts/bench/ratelimit.sh   runs that intake binary
#                                         (another build, to compare two)
#
# This script installs wrk and starts Postgres; the servers, accounts,
# rounds and figures are `bench ratelimit` (examples/bench/ratelimit.rs).
# KEEP_WORK=1 keeps the servers' logs and the keys file.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

ensure_rust
ensure_wrk
bench_build

bench_database bench
export STORAGE_BACKEND=fs FS_ROOT=$(mktemp -d) LOG_FORMAT=json RUST_LOG=warn
export BENCH_WORK=$(mktemp -d)
cleanup() {
    bench_database_drop
    rm -rf "$FS_ROOT"
    [ -n "${KEEP_WORK:-}" ] && log "kept $BENCH_WORK" || rm -rf "$BENCH_WORK"
}
trap cleanup EXIT
"$BENCH" ratelimit
