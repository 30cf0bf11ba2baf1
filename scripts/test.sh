#!/usr/bin/env bash
# Runs the whole test suite against a real Postgres cluster and real S3
# servers (the S3 test server s3s-fs and a single-node Garage, a production
# store), all started here, a stock tus client (tuspy,
# from PyPI, in a virtualenv of its own), then the dashboard's browser
# tests (scripts/lib/browser.sh), checks docker-compose.yml
# (scripts/check-compose.py) and fuzzes the API from its OpenAPI document
# with schemathesis (scripts/lib/schema.sh); installs what is missing.
# Extra arguments go to `cargo test` (e.g. a test name filter).
# INTAKE_SCHEMA_TESTS=0 skips the schema fuzzing;
# INTAKE_BROWSER_TESTS=0 skips the browser tests; =only runs nothing else;
# BROWSER_TEST_ARGS go to Playwright (e.g. "--grep quota --project fs").
# INTAKE_TEST_STORES (default "s3s-fs,garage") names the S3 servers: the
# first runs the whole suite, each other one the storage-facing tests
# ($STORE_SUITE, or the tests the arguments name) once more. With Garage
# among them and no arguments, a three-node Garage cluster then loses a node
# under uploads through three intake instances (tests/api/garage_cluster.rs;
# INTAKE_GARAGE_CLUSTER=0 leaves it out).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh
. scripts/lib/browser.sh
. scripts/lib/schema.sh

ensure_rust
ensure_cc
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}

# Tests do not need durability: a faster cluster, with room for parallel tests.
TEST_DATABASE_URL=$(pg_start test "${INTAKE_TEST_PG_PORT:-54330}" \
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400")
export TEST_DATABASE_URL

# The tests that talk to the object store, run on every store.
STORE_SUITE=${STORE_SUITE:-"storage:: upload:: presign:: tus:: files:: reconcile"}
IFS=, read -r -a stores <<<"${INTAKE_TEST_STORES:-s3s-fs,garage}"
has_store() { local s; for s in "${stores[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
S3_ROOT= GARAGE_DIR= CLUSTER_DIR=
# The exit trap's own status would replace the suite's (a false test as its
# last command made a green run exit 1), so it always ends true.
cleanup() {
    if [ -n "${S3_PID:-}" ]; then kill "$S3_PID" 2>/dev/null || true; fi
    if [ -n "${GARAGE_PID:-}" ]; then garage_stop "$GARAGE_PID"; fi
    if [ -n "$CLUSTER_DIR" ]; then garage_cluster_stop; rm -rf "$CLUSTER_DIR"; fi
    if [ -n "$S3_ROOT" ]; then rm -rf "$S3_ROOT" "$S3_ROOT.log"; fi
    if [ -n "$GARAGE_DIR" ]; then rm -rf "$GARAGE_DIR"; fi
    return 0
}
trap cleanup EXIT
for store in "${stores[@]}"; do
    case $store in
    s3s-fs)
        ensure_s3s_fs
        S3_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/intake-s3.XXXXXX")
        S3_PORT=$(free_port)
        s3_start "$S3_ROOT" "$S3_PORT" intake-test intake-test-secret
        ;;
    garage)
        ensure_garage
        GARAGE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/intake-garage.XXXXXX")
        read -r GARAGE_KEY GARAGE_SECRET < <(garage_keypair)
        garage_start "$GARAGE_DIR" "$GARAGE_KEY" "$GARAGE_SECRET" intake-test
        ;;
    *) log "unknown store in INTAKE_TEST_STORES: $store"; exit 2 ;;
    esac
done
# use_store NAME: points the tests at that store.
use_store() {
    export TEST_S3_STORE=$1
    case $1 in
    s3s-fs)
        export TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT" TEST_S3_REGION=us-east-1
        export TEST_S3_ACCESS_KEY_ID=intake-test TEST_S3_SECRET_ACCESS_KEY=intake-test-secret
        ;;
    garage)
        export TEST_S3_ENDPOINT="http://127.0.0.1:$GARAGE_S3_PORT" TEST_S3_REGION=garage
        export TEST_S3_ACCESS_KEY_ID=$GARAGE_KEY TEST_S3_SECRET_ACCESS_KEY=$GARAGE_SECRET
        ;;
    esac
}
use_store "${stores[0]}"

# The stock tus client the resumable-upload tests drive (tests/tuspy).
TUSPY_VERSION=1.1.0
TUS_VENV=${INTAKE_TUS_VENV:-$HOME/.cache/intake-tuspy}
if ! "$TUS_VENV/bin/python" -c "import tusclient" 2>/dev/null; then
    log "installing tuspy $TUSPY_VERSION into $TUS_VENV"
    python3 -m venv "$TUS_VENV"
    "$TUS_VENV/bin/pip" install -q "tuspy==$TUSPY_VERSION"
fi
export TUS_PYTHON=$TUS_VENV/bin/python

OUT=$(mktemp)
status=0
browser=${INTAKE_BROWSER_TESTS:-1}
if [ "$browser" != only ]; then
    log "checking docker-compose.yml"
    python3 -c 'import yaml' 2>/dev/null || as_root apt-get install -y -qq python3-yaml >/dev/null
    python3 scripts/check-compose.py || status=1
    log "running the test suite on ${stores[0]}"
    started=$SECONDS
    cargo test --locked "$@" 2>&1 | tee "$OUT" || status=$?
    log "the suite on ${stores[0]} took $((SECONDS - started)) s"
    for store in "${stores[@]:1}"; do
        use_store "$store"
        log "running the storage-facing tests on $store"
        started=$SECONDS
        if [ $# -gt 0 ]; then
            cargo test --locked "$@" 2>&1 | tee -a "$OUT" || status=$?
        else
            # shellcheck disable=SC2086 # one filter a word
            cargo test --locked --test api -- $STORE_SUITE 2>&1 | tee -a "$OUT" || status=$?
        fi
        log "the tests on $store took $((SECONDS - started)) s"
    done
    use_store "${stores[0]}"
    if has_store garage && [ $# -eq 0 ] && [ "${INTAKE_GARAGE_CLUSTER:-1}" != 0 ]; then
        log "a three-node Garage cluster loses a node under uploads on three instances"
        started=$SECONDS
        CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/intake-garage-cluster.XXXXXX")
        read -r CLUSTER_KEY CLUSTER_SECRET < <(garage_keypair)
        if garage_cluster_start "$CLUSTER_DIR" "$CLUSTER_KEY" "$CLUSTER_SECRET" intake-test 3; then
            # The suite talks to node 0; the test kills node 2, then node 1.
            TEST_S3_STORE=garage-cluster TEST_S3_REGION=garage \
            TEST_S3_ENDPOINT="http://127.0.0.1:${GARAGE_CLUSTER_S3_PORTS[0]}" \
            TEST_S3_ACCESS_KEY_ID=$CLUSTER_KEY TEST_S3_SECRET_ACCESS_KEY=$CLUSTER_SECRET \
            TEST_GARAGE_VICTIMS="${GARAGE_CLUSTER_PIDS[2]}:${GARAGE_CLUSTER_S3_PORTS[2]} ${GARAGE_CLUSTER_PIDS[1]}:${GARAGE_CLUSTER_S3_PORTS[1]}" \
                cargo test --locked --test api -- --ignored garage_cluster:: 2>&1 | tee -a "$OUT" || status=$?
        else
            log "the Garage cluster did not start"; status=1
        fi
        log "the cluster test took $((SECONDS - started)) s"
    fi
fi
if [ "$browser" != 0 ]; then
    run_browser_tests 2>&1 | tee -a "$OUT" || status=1
fi
# Schema fuzzing (scripts/lib/schema.sh, docs/api.md); INTAKE_SCHEMA_TESTS=0 skips it.
if [ "$browser" != only ] && [ "${INTAKE_SCHEMA_TESTS:-1}" != 0 ]; then
    run_schema_tests 2>&1 | tee -a "$OUT" || status=1
fi
# One closing line for the whole suite (cargo prints one per test binary;
# the browser tests add theirs).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^(browser|schema): [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     END { printf "suite: %d passed, %d failed\n", p, f }' "$OUT"
rm -f "$OUT"
exit "$status"
