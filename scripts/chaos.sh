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
# the tests use); CHAOS_KEEP_LOGS=1 keeps the instances' logs.
#
# This script installs what the soak needs; the soak itself (its services,
# workload, faults and figures) is the ignored test tests/api/soak.rs, on
# the suite's process harness.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

ensure_rust
ensure_cc
ensure_s3s_fs
pg_bindir >/dev/null # installs PostgreSQL when missing; the soak runs its own cluster
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}
profile=()
[ "${CHAOS_RELEASE:-0}" = 1 ] && profile=(--release)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/intake-chaos.XXXXXX")
cleanup() {
    if [ "${CHAOS_KEEP_LOGS:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
export CHAOS_LOG_DIR=$WORK
# The soak's private s3s-fs takes the suite's test credentials.
export TEST_S3_ACCESS_KEY_ID=chaos TEST_S3_SECRET_ACCESS_KEY=chaos-secret TEST_S3_REGION=us-east-1
export S3S_FS
S3S_FS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")

log "chaos: ${CHAOS_SECS:-300} s against ${CHAOS_INSTANCES:-3} instances"
cargo test --locked "${profile[@]}" --test api -- --ignored --exact soak::soak --nocapture --test-threads=1
