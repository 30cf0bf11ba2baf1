#!/usr/bin/env bash
# Starts intake on the embedded defaults: a private Postgres cluster in
# .data/ (when DATABASE_URL is not set), the local-folder store in
# .data/objects, a demo STARTER account whose API key is printed once, and
# the server on port 8080. Any variable of .env.example can be set to
# override a default.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

ensure_rust
ensure_cc
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}

if [ -z "${DATABASE_URL:-}" ]; then
    DATABASE_URL=$(pg_start dev "${INTAKE_DEV_PG_PORT:-54329}")
    export DATABASE_URL
fi
mkdir -p .data
if [ -z "${JWT_SECRET:-}" ]; then
    # A secret kept across restarts, so sessions survive them.
    [ -s .data/jwt_secret ] || head -c 48 /dev/urandom | base64 | tr -d '\n' > .data/jwt_secret
    JWT_SECRET=$(cat .data/jwt_secret)
    export JWT_SECRET
fi
export STORAGE_BACKEND=${STORAGE_BACKEND:-fs}
export FS_ROOT=${FS_ROOT:-$PWD/.data/objects}
export BIND_ADDR=${BIND_ADDR:-0.0.0.0:8080}
export COOKIE_SECURE=${COOKIE_SECURE:-false}

log "building intake"
cargo build --release --locked --bin intake
BIN=$CARGO_TARGET_DIR/release/intake

"$BIN" migrate
if [ ! -f .data/demo-account ]; then
    DEMO_EMAIL=${DEMO_EMAIL:-demo@example.com}
    # The cluster may outlive this checkout (as root it lives outside it):
    # an account made by an earlier run is kept, not made again.
    if ! account=$("$BIN" admin create-account --email "$DEMO_EMAIL" --tier starter \
            --password "${DEMO_PASSWORD:-demo-password}" 2>.data/demo-account.err); then
        if grep -q "already exists" .data/demo-account.err; then
            log "the demo account $DEMO_EMAIL exists already (its API key was shown when it was made)"
            : > .data/demo-account
            rm -f .data/demo-account.err
            exec "$BIN" serve
        fi
        cat .data/demo-account.err >&2
        exit 1
    fi
    rm -f .data/demo-account.err
    id=$(printf '%s' "$account" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    key=$("$BIN" admin create-api-key --account "$id" --name demo)
    printf '%s\n' "$id" > .data/demo-account
    api_key=$(printf '%s' "$key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
    cat >&2 <<MSG

  Demo STARTER account: $DEMO_EMAIL / ${DEMO_PASSWORD:-demo-password}
  Its API key (shown once, keep it):

      $api_key

  Try: curl -H "Authorization: Bearer $api_key" http://localhost:${BIND_ADDR##*:}/me

MSG
fi
exec "$BIN" serve
