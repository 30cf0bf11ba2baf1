#!/usr/bin/env bash
# CPU per request of intake builds, side by side: an unlimited
# (RATE_LIMIT_ENABLED=false) authenticated GET /me from wrk on loopback,
# each build on a fresh process in turn, ROUNDS times. Prints requests per
# second and the CPU microseconds per request that intake and Postgres
# spent (from /proc), which move less with the machine's load than
# throughput does.
#
#   scripts/bench/cpu.sh OLD_BIN NEW_BIN     (ROUNDS=3 DURATION=8s CONNECTIONS=32)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

[ $# -ge 1 ] || { echo "usage: $0 INTAKE_BIN [INTAKE_BIN ...]" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
command -v wrk >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq wrk; }

bench_database bench_cpu
export STORAGE_BACKEND=fs LOG_FORMAT=json RUST_LOG=warn RATE_LIMIT_ENABLED=false
FS_ROOT=$(mktemp -d)
export FS_ROOT
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    bench_database_drop
    rm -rf "$FS_ROOT"
}
trap cleanup EXIT

# Clock ticks (user + system) of a process, and of every Postgres process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pg_ticks() {
    local t=0 p
    for p in $(pgrep -x postgres); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}
HZ=$(getconf CLK_TCK)
KEY=
printf '%-6s %-40s %10s %16s %18s\n' round build req/s "intake us/req" "postgres us/req"
for round in $(seq 1 "$ROUNDS"); do
    for bin in "$@"; do
        PORT=$(free_port)
        BIND_ADDR=127.0.0.1:$PORT "$bin" serve >"$FS_ROOT.log" 2>&1 &
        PID=$!
        for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
        if [ -z "$KEY" ]; then
            KEY=$(python3 - "$PORT" <<'PY'
import json, os, sys, urllib.request
port = sys.argv[1]
def call(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
        data=json.dumps(body).encode(), headers={"Authorization": "Bearer " + os.environ["ADMIN_TOKEN"],
        "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
account = call("/admin/accounts", {"email": "cpu@example.com", "tier": "enterprise"})
print(call(f"/admin/accounts/{account['id']}/api-keys", {"name": "bench"})["key"])
PY
)
        fi
        # A warm-up, then the measured run.
        wrk -t1 -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/me" >/dev/null
        before=$(ticks "$PID") pg_before=$(pg_ticks)
        out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/me")
        after=$(ticks "$PID") pg_after=$(pg_ticks)
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        [ -n "$n" ] && [ "$n" -gt 0 ] || { echo "wrk made no request against $bin" >&2; exit 1; }
        awk -v r="$round" -v b="$bin" -v rps="$rps" -v n="$n" -v hz="$HZ" -v i=$((after - before)) -v p=$((pg_after - pg_before)) \
            'BEGIN { printf "%-6s %-40s %10.0f %16.1f %18.1f\n", r, b, rps, i * 1e6 / hz / n, p * 1e6 / hz / n }'
        kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    done
done
echo "(wrk -t1 -c$CONNECTIONS -d$DURATION on 127.0.0.1; one ENTERPRISE key; $(nproc) cores shared by wrk, intake and Postgres)"
