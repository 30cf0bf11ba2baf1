#!/usr/bin/env bash
# Runs the whole test suite against a real Postgres cluster and the real S3
# test server (s3s-fs), both started here, a stock tus client (tuspy,
# from PyPI, in a virtualenv of its own), then the dashboard's browser
# tests (scripts/lib/browser.sh), checks docker-compose.yml
# (scripts/check-compose.py) and fuzzes the API from its OpenAPI document
# with schemathesis (scripts/lib/schema.sh); installs what is missing.
# Extra arguments go to `cargo test` (e.g. a test name filter).
# INTAKE_SCHEMA_TESTS=0 skips the schema fuzzing;
# INTAKE_BROWSER_TESTS=0 skips the browser tests; =only runs nothing else;
# BROWSER_TEST_ARGS go to Playwright (e.g. "--grep quota --project fs").
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

ensure_s3s_fs
S3_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/intake-s3.XXXXXX")
S3_PORT=$(free_port)
cleanup() {
    [ -n "${S3_PID:-}" ] && kill "$S3_PID" 2>/dev/null || true
    rm -rf "$S3_ROOT" "$S3_ROOT.log"
}
trap cleanup EXIT
s3_start "$S3_ROOT" "$S3_PORT" intake-test intake-test-secret
export TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export TEST_S3_ACCESS_KEY_ID=intake-test
export TEST_S3_SECRET_ACCESS_KEY=intake-test-secret
export TEST_S3_ROOT=$S3_ROOT

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
    log "running the test suite"
    cargo test --locked "$@" 2>&1 | tee "$OUT" || status=$?
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
