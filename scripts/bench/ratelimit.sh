#!/usr/bin/env bash
# Benchmark of the per-minute rate limiter: requests/s and p50/p99 latency of
# a light authenticated GET (/me) with the limiter on and off, for one hot
# account and for many accounts, from wrk on loopback. Prints a table and the
# on/off ratios measured in this run.
#
# Two servers run side by side on one database, one with the limiter off and
# one with it on, and each round measures the two back to back (off first in
# odd rounds, on first in even ones). On a shared machine the throughput
# drifts by more than the limiter costs over a minute; a pair a few seconds
# apart sees the same machine, and the median of ROUNDS pairs (6 by
# default) is what is reported, beside every pair.
#
#   scripts/bench/ratelimit.sh            # 5 s per measurement, 6 rounds
#   ROUNDS=10 DURATION=3s CONNECTIONS=64 scripts/bench/ratelimit.sh
#   INTAKE_BIN=path scripts/bench/ratelimit.sh   runs that intake binary
#                                         (another build, to compare two)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-6}
CONNECTIONS=${CONNECTIONS:-32}
ACCOUNTS=${ACCOUNTS:-200}
ensure_rust
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}
command -v wrk >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq wrk; }

bench_database bench
export STORAGE_BACKEND=fs FS_ROOT=$(mktemp -d) LOG_FORMAT=json RUST_LOG=warn
WORK=$(mktemp -d)
declare -A PORT PID
cleanup() {
    for pid in "${PID[@]}"; do kill "$pid" 2>/dev/null || true; done
    bench_database_drop
    rm -rf "$WORK" "$FS_ROOT"
}
trap cleanup EXIT
[ -n "${KEEP_WORK:-}" ] && trap - EXIT

# The project's own build, unless another binary is given.
[ -n "${INTAKE_BIN:-}" ] || cargo build --release --locked --bin intake >/dev/null 2>&1
BIN=${INTAKE_BIN:-$CARGO_TARGET_DIR/release/intake}

# start_server LIMITER: the server with the limiter on (true) or off (false),
# on its own port.
start_server() {
    PORT[$1]=$(free_port)
    BIND_ADDR=127.0.0.1:${PORT[$1]} RATE_LIMIT_ENABLED=$1 "$BIN" serve >"$WORK/server-$1.log" 2>&1 &
    PID[$1]=$!
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:${PORT[$1]}/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$WORK/server-$1.log" >&2; return 1
}

start_server true
start_server false
# Accounts with a limit far above what the machine can send, so every request
# takes the allowed path and the limiter's cost is what is measured.
python3 - "${PORT[true]}" "$ACCOUNTS" "$WORK/keys.txt" <<'PY'
import json, os, sys, urllib.request
port, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def call(method, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
        data=json.dumps(body).encode(), headers={"Authorization": "Bearer " + os.environ["ADMIN_TOKEN"],
        "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
keys = []
for i in range(n):
    acct = call("POST", "/admin/accounts", {"email": f"bench{i}@example.com", "tier": "enterprise"})
    call("PATCH", f"/admin/accounts/{acct['id']}", {"custom_limits": {"requests_per_minute": 100000000}})
    keys.append(call("POST", f"/admin/accounts/{acct['id']}/api-keys", {"name": "bench"})["key"])
open(out, "w").write("\n".join(keys) + "\n")
PY

cat > "$WORK/many.lua" <<LUA
local keys = {}
for line in io.lines("$WORK/keys.txt") do keys[#keys + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/me", { ["Authorization"] = "Bearer " .. keys[(i % #keys) + 1] })
end
LUA
HOT_KEY=$(head -n 1 "$WORK/keys.txt")

# load LIMITER SCENARIO DURATION: wrk's report.
load() {
    local url="http://127.0.0.1:${PORT[$1]}/me"
    if [ "$2" = hot ]; then
        wrk -t1 -c"$CONNECTIONS" -d"$3" --latency -H "Authorization: Bearer $HOT_KEY" "$url"
    else
        wrk -t1 -c"$CONNECTIONS" -d"$3" --latency -s "$WORK/many.lua" "$url"
    fi
}

# key_lane LIMITER: the key lane's "batches statement_seconds requests" so far,
# from the server's metrics.
key_lane() {
    curl -fs "http://127.0.0.1:${PORT[$1]}/metrics" | python3 -c '
import re, sys
text = sys.stdin.read()
def value(name):
    m = re.search(r"^" + name + r"\{lane=\"keys\"\} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
print(value("intake_ratelimit_statement_seconds_count"), value("intake_ratelimit_statement_seconds_sum"),
      value("intake_ratelimit_batch_size_sum"))'
}

# run_case LIMITER SCENARIO -> "rps p50_ms p99_ms non2xx batch statement_ms":
# wrk's figures, and the key lane's mean requests per statement and mean
# statement time (the server's wait for Postgres) during the run.
run_case() {
    local limiter=$1 scenario=$2 out before
    before=$(key_lane "$limiter")
    out=$(load "$limiter" "$scenario" "$DURATION")
    printf '%s\n' "$out" >"$WORK/wrk-$limiter-$scenario.txt"
    python3 - "$WORK/wrk-$limiter-$scenario.txt" "$before" "$(key_lane "$limiter")" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
(b0, s0, r0), (b1, s1, r1) = (map(float, a.split()) for a in sys.argv[2:4])
batches = max(b1 - b0, 1)
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {bad.group(1) if bad else 0} {(r1 - r0) / batches:.1f} {(s1 - s0) / batches * 1000:.3f}")
PY
}

# Warm both servers' pools, statements and caches in both scenarios.
for limiter in false true; do
    for scenario in hot many; do load "$limiter" "$scenario" 2s >/dev/null; done
done

declare -A R
for round in $(seq 1 "$ROUNDS"); do
    order="false true"
    [ $((round % 2)) = 0 ] && order="true false"
    for scenario in hot many; do
        for limiter in $order; do
            R[$limiter-$scenario-$round]=$(run_case "$limiter" "$scenario")
        done
    done
done

printf '\n%-6s %-8s %-8s %10s %9s %9s %8s %7s %9s\n' round limiter accounts 'req/s' 'p50 ms' 'p99 ms' 'non-2xx' batch 'stmt ms'
for round in $(seq 1 "$ROUNDS"); do
    for scenario in hot many; do
        for limiter in false true; do
            read -r rps p50 p99 bad batch stmt <<<"${R[$limiter-$scenario-$round]}"
            label=$([ "$limiter" = true ] && echo on || echo off)
            who=$([ "$scenario" = hot ] && echo 1 || echo "$ACCOUNTS")
            printf '%-6s %-8s %-8s %10s %9s %9s %8s %7s %9s\n' "$round" "$label" "$who" "$rps" "$p50" "$p99" "$bad" "$batch" "$stmt"
        done
    done
done
echo
for scenario in hot many; do
    pairs=
    for round in $(seq 1 "$ROUNDS"); do
        read -r off_rps _ off_p99 _ _ off_stmt <<<"${R[false-$scenario-$round]}"
        read -r on_rps _ on_p99 _ _ on_stmt <<<"${R[true-$scenario-$round]}"
        pairs="$pairs ($on_rps/$off_rps, $on_p99-$off_p99, $on_stmt-$off_stmt),"
    done
    python3 -c "
import statistics
pairs = [$pairs]
ratios = ', '.join(f'{r:.2f}' for r, _, _ in pairs)
added = ', '.join(f'{a:+.3f}' for _, a, _ in pairs)
print(f'$scenario: throughput on/off = {statistics.median(r for r, _, _ in pairs):.2f}  (goal >= 0.90);  p99 added = {statistics.median(a for _, a, _ in pairs):+.3f} ms  (goal < 1 ms)')
print(f'  each round: on/off {ratios};  p99 added {added} ms')
print(f'  key statement time added by the limiter: {statistics.median(s for _, _, s in pairs):+.3f} ms per batch (median)')
"
done
echo "(median of $ROUNDS back-to-back pairs; wrk -t1 -c$CONNECTIONS -d$DURATION on 127.0.0.1; $(nproc) cores shared by wrk, intake and Postgres)"
