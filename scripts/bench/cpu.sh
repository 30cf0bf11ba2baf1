#!/usr/bin/env bash
# CPU per request of intake builds, side by side: an unlimited
# (RATE_LIMIT_ENABLED=false) authenticated GET /me from wrk on loopback,
# each build on a fresh process in turn, ROUNDS times. Prints requests per
# second and the CPU microseconds per request that intake and Postgres
# spent (from /proc), which move less with the machine's load than
# throughput does.
#
#   scripts/bench/cpu.sh OLD_BIN NEW_BIN     (ROUNDS=3 DURATION=8s CONNECTIONS=32)
#
# This script installs wrk and starts Postgres; the servers, rounds and
# figures are `bench cpu` (examples/bench/cpu.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

[ $# -ge 1 ] || { echo "usage: $0 INTAKE_BIN [INTAKE_BIN ...]" >&2; exit 2; }
ensure_rust
ensure_wrk
INTAKE_BIN=$1 bench_build  # the builds compared are given: none to build

bench_database bench_cpu
# Each build on a schema of its own (builds with different migrations cannot
# share one): the one bench_database made, then one more per further build.
urls=("$DATABASE_URL")
extra=()
for ((i = 2; i <= $#; i++)); do
    "$PG_BIN/psql" "$DB_URL" -qc "CREATE SCHEMA ${SCHEMA}_$i"
    extra+=("${SCHEMA}_$i")
    urls+=("$DB_URL?options=-c%20search_path%3D${SCHEMA}_$i")
done
export BENCH_DATABASE_URLS="${urls[*]}"
export STORAGE_BACKEND=fs FS_ROOT=$(mktemp -d) LOG_FORMAT=json RUST_LOG=warn
export BENCH_WORK=$(mktemp -d)
cleanup() {
    for s in "${extra[@]}"; do
        "$PG_BIN/psql" "$DB_URL" -qc "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true
    done
    bench_database_drop
    rm -rf "$FS_ROOT" "$BENCH_WORK"
}
trap cleanup EXIT
"$BENCH" cpu "$@"
