# Schema fuzzing, run by scripts/test.sh: schemathesis (from PyPI, in a
# venv of its own) drives every route of GET /openapi.json with generated
# requests, once with an API key and once with a session, and fails on any
# 5xx, undocumented status, or answer that does not match the schema.
# shellcheck shell=bash

SCHEMATHESIS_VERSION=4.32.5
SCHEMA_VENV=${INTAKE_SCHEMA_VENV:-$HOME/.cache/intake-schemathesis}

ensure_schemathesis() {
    if [ -x "$SCHEMA_VENV/bin/schemathesis" ] &&
        "$SCHEMA_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
        return 0
    fi
    log "installing schemathesis $SCHEMATHESIS_VERSION (first time only)"
    python3 -m venv "$SCHEMA_VENV" 2>/dev/null || {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 || {
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        }
        python3 -m venv "$SCHEMA_VENV"
    }
    "$SCHEMA_VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
}

# Prints `schema: N passed, N failed` last (one per credential kind).
run_schema_tests() (
    local logs port pid admin status=0 passed=0 failed=0
    ensure_schemathesis
    cargo build --locked --bin intake
    logs=$(mktemp -d)
    port=$(free_port)
    admin=schema-admin-token-$RANDOM$RANDOM-0123456789abcdef
    local server=${TEST_DATABASE_URL%/*}
    "$(pg_bindir)/psql" "$server/postgres" -qc "DROP DATABASE IF EXISTS intake_schema WITH (FORCE)" >/dev/null
    "$(pg_bindir)/psql" "$server/postgres" -qc "CREATE DATABASE intake_schema" >/dev/null
    mkdir -p "$logs/objects"
    # Rate limits far above what the fuzzer sends: what is tested is every
    # route's contract, not the limiter (which has its own tests).
    env DATABASE_URL="$server/intake_schema" JWT_SECRET=schema-test-jwt-secret-0123456789abcdef \
        BIND_ADDR="127.0.0.1:$port" PUBLIC_BASE_URL="http://127.0.0.1:$port" \
        ADMIN_TOKEN="$admin" COOKIE_SECURE=false RUST_LOG=warn ANON_RATE_LIMIT_PER_MINUTE=1000000 \
        STORAGE_BACKEND=fs FS_ROOT="$logs/objects" \
        "$CARGO_TARGET_DIR/debug/intake" serve >"$logs/intake.log" 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null; rm -rf "$logs"' EXIT
    local i
    for i in $(seq 1 150); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1])" \
            "http://127.0.0.1:$port/healthz" 2>/dev/null && break
        sleep 0.2
    done
    # One enterprise account with an API key and a session.
    local creds
    creds=$(python3 - "http://127.0.0.1:$port" "$admin" <<'PY'
import json, sys, urllib.request
base, admin = sys.argv[1], sys.argv[2]
def call(method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req) as r:
        return r, json.loads(r.read() or b"null")
auth = {"authorization": f"Bearer {admin}"}
_, acct = call("POST", "/admin/accounts",
               {"email": "fuzz@example.com", "password": "fuzz-password-123", "tier": "enterprise"}, auth)
call("PATCH", f"/admin/accounts/{acct['id']}", {"custom_limits": {"requests_per_minute": 1000000}}, auth)
_, key = call("POST", f"/admin/accounts/{acct['id']}/api-keys", {"name": "fuzz"}, auth)
resp, login = call("POST", "/auth/login", {"email": "fuzz@example.com", "password": "fuzz-password-123"})
cookie = resp.headers["set-cookie"].split(";")[0]
print(key["key"]); print(cookie); print(login["csrf_token"])
PY
    ) || { log "could not set up the fuzzed account:"; cat "$logs/intake.log" >&2; echo "schema: 0 passed, 1 failed"; return 1; }
    local key cookie csrf
    key=$(sed -n 1p <<<"$creds"); cookie=$(sed -n 2p <<<"$creds"); csrf=$(sed -n 3p <<<"$creds")
    local common=(run "http://127.0.0.1:$port/openapi.json" --checks all
        --max-examples "${SCHEMA_MAX_EXAMPLES:-30}" --seed 1 --no-color --workers 2
        --exclude-path /auth/logout)
    log "fuzzing the API from its schema (API key)"
    if "$SCHEMA_VENV/bin/schemathesis" "${common[@]}" -H "Authorization: Bearer $key"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); status=1
    fi
    log "fuzzing the API from its schema (session)"
    if "$SCHEMA_VENV/bin/schemathesis" "${common[@]}" -H "Cookie: $cookie" -H "X-CSRF-Token: $csrf"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); status=1
    fi
    echo "schema: $passed passed, $failed failed"
    return "$status"
)
