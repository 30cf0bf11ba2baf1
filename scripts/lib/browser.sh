# The dashboard's browser tests, run by scripts/test.sh: Debian's Chromium
# driven by Playwright against intake served from the same target folder,
# once on the local-folder backend and once on the S3 test server.
# shellcheck shell=bash

BROWSER_DIR=tests/browser

ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && return 0
    log "installing Chromium (the browser tests' browser)"
    # The package lists are refreshed only when the install needs it.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || {
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    }
}

ensure_node() {
    local major
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$major" -ge 18 ] && command -v npm >/dev/null 2>&1; then return 0; fi
    log "installing Node.js and npm"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null 2>&1 || {
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    }
}

# npm ci, skipped while node_modules matches the lockfile.
ensure_browser_deps() {
    local stamp=$BROWSER_DIR/node_modules/.lock-sha256 want
    want=$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
    log "installing the browser tests' packages (npm ci)"
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$want" > "$stamp"
}

# The dashboard's one vendored script, tus-js-client's browser build: the
# lockfile pins it, the embedded copy in src/dashboard/assets must be that
# file. Outside CI a differing copy is refreshed (commit it); in CI it fails.
vendor_dashboard_assets() {
    local pkg=$BROWSER_DIR/node_modules/tus-js-client assets=src/dashboard/assets
    if cmp -s "$pkg/dist/tus.min.js" "$assets/tus.min.js" && cmp -s "$pkg/LICENSE" "$assets/tus-js-client.LICENSE"; then
        return 0
    fi
    if [ -n "${CI:-}" ]; then
        log "$assets/tus.min.js is not the lockfile's tus-js-client: run scripts/test.sh and commit it"
        return 1
    fi
    log "refreshing $assets/tus.min.js from the lockfile's tus-js-client (commit it)"
    cp "$pkg/dist/tus.min.js" "$assets/tus.min.js"
    cp "$pkg/LICENSE" "$assets/tus-js-client.LICENSE"
}

# A fresh database on the test cluster; prints its URL.
fresh_database() {
    local name=$1 base=$TEST_DATABASE_URL bin
    bin=$(pg_bindir)
    local server=${base%/*}
    "$bin/psql" "$server/postgres" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null
    "$bin/psql" "$server/postgres" -qc "CREATE DATABASE $name" >/dev/null
    printf '%s/%s\n' "$server" "$name"
}

# start_intake NAME PORT [VAR=value ...]: intake serve in the background,
# waiting until /healthz answers. Sets INTAKE_PIDS.
start_intake() {
    local name=$1 port=$2; shift 2
    local db
    db=$(fresh_database "intake_browser_$name")
    env DATABASE_URL="$db" JWT_SECRET=browser-test-jwt-secret-0123456789abcdef \
        BIND_ADDR="127.0.0.1:$port" PUBLIC_BASE_URL="http://127.0.0.1:$port" \
        ADMIN_TOKEN="$BROWSER_ADMIN_TOKEN" COOKIE_SECURE=false RUST_LOG=warn "$@" \
        "$CARGO_TARGET_DIR/debug/intake" serve >"$BROWSER_LOGS/intake-$name.log" 2>&1 &
    INTAKE_PIDS+=("$!")
    local i
    for i in $(seq 1 150); do
        if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "intake ($name) did not start:"; cat "$BROWSER_LOGS/intake-$name.log" >&2; return 1
}

stop_browser_servers() {
    local pid
    for pid in "${INTAKE_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    [ -n "${AI_PID:-}" ] && kill "$AI_PID" 2>/dev/null || true
    INTAKE_PIDS=()
    AI_PID=
}

# Runs the browser tests; prints `browser: N passed, N failed` last. A
# subshell, so the servers it starts are stopped however it ends.
run_browser_tests() (
    trap stop_browser_servers EXIT
    ensure_chromium
    ensure_node
    ensure_browser_deps
    vendor_dashboard_assets || return 1
    command -v curl >/dev/null 2>&1 || { as_root apt-get install -y -qq curl >/dev/null; }
    log "building intake for the browser tests"
    cargo build --locked --bin intake
    local artifacts=$BROWSER_DIR/artifacts
    rm -rf "$artifacts" && mkdir -p "$artifacts/logs"
    BROWSER_LOGS=$PWD/$artifacts/logs
    # At least 32 characters, as intake requires of ADMIN_TOKEN.
    BROWSER_ADMIN_TOKEN=browser-admin-token-$(od -An -N16 -tx1 /dev/urandom | tr -d " \n")
    INTAKE_PIDS=()

    local fs_port s3_port ai_port
    fs_port=$(free_port); s3_port=$(free_port); ai_port=$(free_port)
    # The AI provider is a third-party service: a stand-in speaking its
    # protocol, shared by both servers.
    node "$BROWSER_DIR/support/ai-provider.mjs" "$ai_port" >"$BROWSER_LOGS/ai-provider.log" 2>&1 &
    AI_PID=$!
    local ai=(AI_BASE_URL="http://127.0.0.1:$ai_port/v1" AI_MODEL=stand-in-vision AI_API_KEY=stand-in-key)
    local fs_root=$artifacts/objects
    mkdir -p "$fs_root"
    start_intake fs "$fs_port" STORAGE_BACKEND=fs FS_ROOT="$PWD/$fs_root" "${ai[@]}"

    # The page sends every request to intake (uploads through tus); only
    # download redirects and thumbnails point at the bucket, which need no
    # CORS rule.
    node "$BROWSER_DIR/support/create-bucket.mjs" "$TEST_S3_ENDPOINT" intake-browser
    start_intake s3 "$s3_port" STORAGE_BACKEND=s3 S3_BUCKET=intake-browser \
        S3_ENDPOINT="$TEST_S3_ENDPOINT" \
        S3_ACCESS_KEY_ID="$TEST_S3_ACCESS_KEY_ID" S3_SECRET_ACCESS_KEY="$TEST_S3_SECRET_ACCESS_KEY" \
        S3_KEY_PREFIX="browser-$$/" "${ai[@]}"

    log "running the browser tests"
    local status=0
    # shellcheck disable=SC2086 # BROWSER_TEST_ARGS is a list of arguments
    (cd "$BROWSER_DIR" && INTAKE_FS_URL="http://127.0.0.1:$fs_port" INTAKE_S3_URL="http://127.0.0.1:$s3_port" \
        INTAKE_ADMIN_TOKEN="$BROWSER_ADMIN_TOKEN" INTAKE_AI_STANDIN_URL="http://127.0.0.1:$ai_port" \
        npx playwright test ${BROWSER_TEST_ARGS:-}) || status=$?
    stop_browser_servers
    rm -rf "$fs_root"
    node -e '
        const fs = require("fs");
        let s = { expected: 0, unexpected: 0, flaky: 0 };
        try { s = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).stats; } catch {}
        const failed = s.unexpected + (s.expected + s.flaky + s.unexpected === 0 ? 1 : 0);
        console.log(`browser: ${s.expected + s.flaky} passed, ${failed} failed`);
    ' "$artifacts/results.json"
    return "$status"
)
