#!/usr/bin/env bash
# Counts the SQL statements intake sends Postgres per operation (what its
# scale costs the database), with pg_stat_statements on a cluster of its own:
#   - one limited API-key request (GET /me, GET /files);
#   - a streaming upload of 1 MiB and of 64 MiB (one streamed PUT), a batch of 10
#     files of 100 KiB in one request;
#   - a presigned upload (issue, PUT to storage, complete), single and
#     multipart (4 parts);
#   - a resumable (tus) upload of 1 MiB in one PATCH and of 32 MiB in 4 PATCHes;
#   - an idle instance for 30 s (its reaper runs every 10 s).
# Each case runs ROUNDS times (default 3) over REPEAT operations (default
# 10, 2 for the large ones), one after another; the figure is the fewest
# statements per operation of the rounds (a round that met the reaper
# counts its statements too).
#   scripts/bench/statements.sh                 on s3s-fs
#   STORE=garage scripts/bench/statements.sh    on a single-node Garage
#
# This script starts the services (a Postgres cluster of its own with
# pg_stat_statements, the S3 server); intake, the operations and the counts
# are `bench statements` (examples/bench/statements.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

STORE=${STORE:-s3s-fs}
ensure_rust
bench_build

PG_BIN=$(pg_bindir)
PG_PORT=${INTAKE_STMT_PG_PORT:-54332}
DB_URL=$(pg_start statements "$PG_PORT" \
    "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c fsync=off")
"$PG_BIN/psql" "$DB_URL" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
SCHEMA=stmt_$(date +%s)
"$PG_BIN/psql" "$DB_URL" -qc "CREATE SCHEMA $SCHEMA"

WORK=$(mktemp -d)
S3_PID= GARAGE_PID=
cleanup() {
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
    [ -n "$GARAGE_PID" ] && garage_stop "$GARAGE_PID"
    "$PG_BIN/psql" "$DB_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

case $STORE in
s3s-fs)
    ensure_s3s_fs
    S3_PORT=$(free_port)
    mkdir -p "$WORK/s3/bench"
    s3_start "$WORK/s3" "$S3_PORT" bench-key bench-secret
    export S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3_REGION=us-east-1
    export S3_ACCESS_KEY_ID=bench-key S3_SECRET_ACCESS_KEY=bench-secret
    ;;
garage)
    ensure_garage
    read -r key secret < <(garage_keypair)
    garage_start "$WORK/garage" "$key" "$secret" bench
    export S3_ENDPOINT=http://127.0.0.1:$GARAGE_S3_PORT S3_REGION=garage
    export S3_ACCESS_KEY_ID=$key S3_SECRET_ACCESS_KEY=$secret
    ;;
*) log "STORE is s3s-fs or garage"; exit 2 ;;
esac

export DATABASE_URL="$DB_URL?options=-c%20search_path%3D$SCHEMA" STATEMENTS_DATABASE_URL=$DB_URL
export STORAGE_BACKEND=s3 S3_BUCKET=bench
export JWT_SECRET=bench-secret-0123456789abcdefghijklmnopqrstuvwxyz ADMIN_TOKEN=bench-admin-token-0123456789abcdefghij
export RUST_LOG=warn UPLOAD_PART_BYTES=8388608 BENCH_WORK=$WORK

log "counting statements on $STORE (pg_stat_statements)"
"$BENCH" statements
