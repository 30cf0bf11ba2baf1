# Schema fuzzing, run by scripts/test.sh: schemathesis (from PyPI, in a
# venv of its own) drives every route of GET /openapi.json with generated
# requests, once with an API key and once with a session, and fails on any
# 5xx, undocumented status, or answer that does not match the schema. Then
# openapi-python-client (same venv) generates a client from the document,
# and the check fails on any warning or any route left out of the client.
# shellcheck shell=bash

SCHEMATHESIS_VERSION=4.32.5
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
SCHEMA_VENV=${INTAKE_SCHEMA_VENV:-$HOME/.cache/intake-schemathesis}

ensure_schemathesis() {
    # Python 3.11's parser can fail with "AST constructor recursion depth
    # mismatch" inside hypothesis while it describes a strategy (a CPython
    # bug fixed in 3.12), which ends a run with an error: a newer Python is
    # taken when there is one.
    local python=python3 candidate
    for candidate in python3.13 python3.12; do
        if "$candidate" -V >/dev/null 2>&1; then python=$candidate; break; fi
    done
    if [ -x "$SCHEMA_VENV/bin/schemathesis" ] &&
        "$SCHEMA_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" &&
        [ "$("$SCHEMA_VENV/bin/python" -V 2>&1)" = "$("$python" -V 2>&1)" ]; then
        "$SCHEMA_VENV/bin/openapi-python-client" --version 2>/dev/null |
            grep -q "$OPENAPI_PYTHON_CLIENT_VERSION" ||
            "$SCHEMA_VENV/bin/pip" install -q "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
        return 0
    fi
    log "installing schemathesis $SCHEMATHESIS_VERSION with $python (first time only)"
    rm -rf "$SCHEMA_VENV"
    "$python" -m venv "$SCHEMA_VENV" 2>/dev/null || {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 || {
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        }
        "$python" -m venv "$SCHEMA_VENV"
    }
    "$SCHEMA_VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" \
        "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
}

# check_generated_client URL DIR: generates a Python client from the
# OpenAPI document at URL into DIR and fails on any warning of the
# generator or any operation of the document without its module.
check_generated_client() {
    local doc=$2/openapi.json out=$2/client report
    python3 -c "import urllib.request,sys; open(sys.argv[2],'wb').write(urllib.request.urlopen(sys.argv[1]).read())" \
        "$1" "$doc" || return 1
    report=$("$SCHEMA_VENV/bin/openapi-python-client" generate --path "$doc" --output-path "$out" \
        --config "$PWD/scripts/lib/openapi-python-client.yml" 2>&1) || { echo "$report"; return 1; }
    if grep -q "WARNING\|Warning" <<<"$report"; then
        echo "$report"
        return 1
    fi
    python3 - "$doc" "$out" <<'PY'
import json, pathlib, re, sys
doc, out = json.load(open(sys.argv[1])), pathlib.Path(sys.argv[2])
methods = {"get", "put", "post", "delete", "options", "head", "patch"}
ops = [(m.upper(), p, o["operationId"]) for p, item in doc["paths"].items()
       for m, o in item.items() if m in methods]
modules = {f.stem.rstrip("_") for f in out.glob("*/api/*/*.py") if f.stem != "__init__"}
snake = lambda s: re.sub(r"(?<!^)(?=[A-Z])", "_", s).lower()
missing = [f"{m} {p}" for m, p, op in ops if snake(op) not in modules]
print(f"generated client: {len(ops)} operations, {len(modules)} modules")
if missing:
    print("left out of the generated client:", ", ".join(missing))
    sys.exit(1)
PY
}

# schema_config SCHEME 'KEY = "VALUE"': a schemathesis.toml for one run,
# authenticated with SCHEME (and the admin token), and the statuses that
# the checks accept beyond their defaults, each with why.
schema_config() {
    cat <<EOF
hooks = "$PWD/scripts/lib/schema-hooks.py"

# Every run starts from the seed alone, not from an earlier run's failures.
[cache]
enabled = false

[auth.openapi.$1]
$2

[auth.openapi.admin_token]
bearer = "$admin_token"

# The tus protocol answers a missing or other Tus-Resumable with 412
# Precondition Failed (tus 1.0.0, "Tus-Resumable"), which is how it refuses
# such a request, so 412 counts as a refusal on the tus routes; a body that
# does not match a well-formed Upload-Checksum is the protocol's 460, a
# relation between a header and the body that no schema states; a length
# above the cap of the account's tier is the protocol's 413 (tier caps are
# not in the schema, as for presigned uploads below).
[[operations]]
include-path-regex = "^/upload/tus"
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "412", "413", "415", "422", "428", "429", "5xx"]
checks.missing_required_header.expected-statuses = ["400", "401", "403", "406", "412", "415", "422"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "460", "5xx"]

# Whether a file is accepted is decided by its bytes (magic numbers) and by
# the account's tier (its caps): a schema states neither, so a well-formed
# upload may be refused with 413 (above a cap) or 415 (bytes of a type
# intake does not take). Every other status is held to the defaults.
[[operations]]
include-name = "POST /upload/stream"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "415", "429", "5xx"]

# Whether a file can be described depends on what it holds (a video, a
# PDF without text: 415), which no schema of the request states.
[[operations]]
include-name = "POST /files/{id}/describe"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "415", "429", "5xx"]

# A batch answers 200 with one result per part whatever the parts hold
# (the contract: a failed file never fails the others), so a malformed
# part is refused in its result, not by the status.
[[operations]]
include-name = "POST /upload/stream-batch"
checks.negative_data_rejection.expected-statuses = ["200", "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# A presigned upload's size is held to the cap of its type on the account's
# tier (or custom limits), which no static schema can state: 413, also for
# sizes beyond any cap; a filename whose extension names another category
# than content_type is 415 type_mismatch, a relation between two fields
# that the schema cannot state either.
[[operations]]
include-name = "POST /upload/presigned"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "415", "429", "5xx"]
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
EOF
}

# Prints `schema: N passed, N failed` last (one per credential kind).
run_schema_tests() (
    local logs port pid admin admin_token status=0 passed=0 failed=0
    ensure_schemathesis
    cargo build --locked --bin intake
    logs=$(mktemp -d)
    port=$(free_port)
    admin=schema-admin-token-$RANDOM$RANDOM-0123456789abcdef
    # A database of this run's own (the cluster may be shared by other runs),
    # dropped at the end.
    local server=${TEST_DATABASE_URL%/*} db=intake_schema_$$
    "$(pg_bindir)/psql" "$server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    "$(pg_bindir)/psql" "$server/postgres" -qc "CREATE DATABASE $db" >/dev/null
    drop_db() { "$(pg_bindir)/psql" "$server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true; }
    mkdir -p "$logs/objects"
    # A stand-in AI provider (scripts/lib/ai-standin.py), so the AI routes
    # answer as they do with a real one instead of 503 ai_unavailable.
    local ai_key=schema-ai-key-$RANDOM ai_pid i
    python3 scripts/lib/ai-standin.py "$logs/ai.port" "$ai_key" &
    ai_pid=$!
    trap 'kill $ai_pid 2>/dev/null; rm -rf "$logs"; drop_db' EXIT
    for i in $(seq 1 100); do [ -s "$logs/ai.port" ] && break; sleep 0.1; done
    # Rate limits far above what the fuzzer sends: what is tested is every
    # route's contract, not the limiter (which has its own tests).
    env DATABASE_URL="$server/$db" JWT_SECRET=schema-test-jwt-secret-0123456789abcdef \
        BIND_ADDR="127.0.0.1:$port" PUBLIC_BASE_URL="http://127.0.0.1:$port" \
        ADMIN_TOKEN="$admin" COOKIE_SECURE=false RUST_LOG=warn ANON_RATE_LIMIT_PER_MINUTE=1000000 \
        SIGNUP_RATE_LIMIT_PER_HOUR=1000000 LOGIN_FAILURES_BEFORE_DELAY=1000000 \
        STORAGE_BACKEND=fs FS_ROOT="$logs/objects" \
        AI_BASE_URL="http://127.0.0.1:$(cat "$logs/ai.port")/v1" AI_MODEL=schema-standin AI_API_KEY="$ai_key" \
        "$CARGO_TARGET_DIR/debug/intake" serve >"$logs/intake.log" 2>&1 &
    pid=$!
    trap 'kill $pid $ai_pid 2>/dev/null; rm -rf "$logs"; drop_db' EXIT
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
    admin_token=$admin
    key=$(sed -n 1p <<<"$creds"); cookie=$(sed -n 2p <<<"$creds"); csrf=$(sed -n 3p <<<"$creds")
    # The credentials go in through the schema's own security schemes, so
    # schemathesis knows which scheme each is and tests refusals with them
    # removed or spoiled; the admin token opens the admin routes too.
    schema_config api_key "bearer = \"$key\"" >"$logs/api-key.toml"
    schema_config session "api_key = \"${cookie#*=}\"" >"$logs/session.toml"
    # /auth/logout and /auth/logout-all are left out: they would end the
    # session the run uses.
    local common=(run "http://127.0.0.1:$port/openapi.json" --checks all
        --max-examples "${SCHEMA_MAX_EXAMPLES:-30}" --seed 1 --no-color --workers 2
        --exclude-path /auth/logout --exclude-path /auth/logout-all)
    log "fuzzing the API from its schema (API key)"
    if "$SCHEMA_VENV/bin/schemathesis" --config-file "$logs/api-key.toml" "${common[@]}"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); status=1
    fi
    log "fuzzing the API from its schema (session)"
    if "$SCHEMA_VENV/bin/schemathesis" --config-file "$logs/session.toml" "${common[@]}" \
        -H "X-CSRF-Token: $csrf"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); status=1
    fi
    log "generating a Python client from the schema (openapi-python-client)"
    if check_generated_client "http://127.0.0.1:$port/openapi.json" "$logs"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); status=1
    fi
    echo "schema: $passed passed, $failed failed"
    return "$status"
)
