#!/usr/bin/env bash
# A soak under faults: CHAOS_INSTANCES (default 3) intake processes behind a
# round-robin load balancer, on a Postgres cluster and an S3 server of
# their own (so they can be restarted), a mixed workload (listing, small
# and large streaming uploads, batches, presigned and resumable uploads,
# deletes, an account held at its per-minute limit) for CHAOS_SECS
# (default 300) with faults at random moments: kill -9 and restart of an
# instance, an S3 server restart, a Postgres restart. Prints requests
# served, answers by status, p50/p99 latency, the steady instance's RSS at
# the start and the end, and `intake admin reconcile`'s report; exits
# non-zero unless reconcile is clean and the RSS stayed within
# CHAOS_RSS_BOUND_MIB (default 64). CHAOS_SEED replays a run's choices;
# CHAOS_RELEASE=1 measures a release build (the default is the debug build
# the tests use).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

ensure_rust
ensure_cc
ensure_s3s_fs
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}
if ! python3 -c 'import requests, boto3' 2>/dev/null; then
    as_root apt-get install -y -qq python3-requests python3-boto3 >/dev/null
fi

if [ "${CHAOS_RELEASE:-0}" = 1 ]; then
    cargo build --locked --release --bin intake
    export INTAKE_BIN=$CARGO_TARGET_DIR/release/intake
else
    cargo build --locked --bin intake
    export INTAKE_BIN=$CARGO_TARGET_DIR/debug/intake
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/intake-chaos.XXXXXX")
PG_PORT=$(free_port)
export PG_BIN
PG_BIN=$(pg_bindir)
if [ "$(id -u)" -eq 0 ]; then
    export PG_DIR=/var/lib/postgresql/intake-chaos-$$
else
    export PG_DIR=$WORK/postgres
fi
cleanup() {
    pg_stop "$PG_BIN" "$PG_DIR"
    rm -rf "$PG_DIR"
    if [ "${CHAOS_KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
CHAOS_DATABASE_URL=$(INTAKE_PG_DIR=$PG_DIR pg_start chaos "$PG_PORT" "-c fsync=off -c synchronous_commit=off -c max_connections=200")
export CHAOS_DATABASE_URL
export CHAOS_S3_PORT
CHAOS_S3_PORT=$(free_port)
export CHAOS_S3_ROOT=$WORK/s3 CHAOS_LOG_DIR=$WORK
mkdir -p "$CHAOS_S3_ROOT"
export S3S_FS
S3S_FS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
export ADMIN_TOKEN=chaos-admin-token-0123456789abcdefghij

log "chaos: ${CHAOS_SECS:-300} s against ${CHAOS_INSTANCES:-3} instances"
python3 scripts/chaos.py
