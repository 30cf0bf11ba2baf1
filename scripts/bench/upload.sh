#!/usr/bin/env bash
# Benchmarks of streaming uploads, each figure beside its baseline from the
# same run, on one S3 server (s3s-fs) on loopback:
#   - 100 MiB through intake vs the same bytes straight to S3 with the same
#     operations (multipart, same part size, parts one after another), and a
#     single direct PUT for reference; intake's CPU seconds per GiB (and
#     again on a server reading 1 MiB at a time), beside
#     the least a relay that receives, hashes (SHA-256) and sends spends
#     (examples/relay_floor.rs), and the same direct PUT sent through a bare
#     relay (receive, SHA-256, one PUT: examples/put_relay.rs), the best
#     single-PUT ratio any relay reaches here;
#   - peak RSS of intake under 20 concurrent 100 MiB uploads and under 10
#     concurrent 20 MiB uploads (those also with 1 MiB reads);
#   - the tus reference server (@tus/server + @tus/s3-store) and intake's own
#     /upload/tus, driven by the same tus client (tus/client.mjs, PATCHes of
#     one part each) with the same 100 MiB file and the same 10 x 20 MiB
#     load, each case on a fresh server process, run once to warm it (as a
#     server up for a while: connections, caches) and then timed, with the
#     peak RSS of the timed pass, and a bare tus relay driven alike
#     (receive, SHA-256, one S3 part per PATCH: examples/tus_relay.rs), the
#     best tus ratio any server reaches here;
#   - a batch of 50 x 1 MiB files vs 50 direct PUTs.
#
#   scripts/bench/upload.sh          (REPEAT=3 runs of each timed case; median)
#   CASES=tus scripts/bench/upload.sh   only the tus comparison and the
#                                    streaming baseline it is held against
#   CASES=stream scripts/bench/upload.sh   only one 100 MiB file: intake
#                                    beside a direct single PUT, and
#                                    intake's CPU seconds per GiB
#   CASES=batch scripts/bench/upload.sh   only the batch of 50 x 1 MiB
#                                    beside 50 direct PUTs
#   CASES=profile scripts/bench/upload.sh   one upload of PROFILE_MIB (100)
#                                    through intake under callgrind: its
#                                    instructions per MiB and where they go
#                                    (counts that do not depend on the load)
#   INTAKE_BIN=path scripts/bench/upload.sh   runs that intake binary (another
#                                    build, to compare two in the same setup)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

REPEAT=${REPEAT:-3}
# The read buffer (READ_BUFFER_BYTES) of the second measurement of CPU per
# GiB and of the 10 x 20 MiB peak RSS.
BIG_READS=1048576
CASES=${CASES:-all}
PART_BYTES=${PART_BYTES:-8388608}
ensure_rust
ensure_s3s_fs
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}
cargo build --release --locked --bin intake --example upload_bench --example relay_floor --example put_relay --example tus_relay >/dev/null 2>&1
BIN=${INTAKE_BIN:-$CARGO_TARGET_DIR/release/intake}
CLIENT=$CARGO_TARGET_DIR/release/examples/upload_bench
FLOOR=$CARGO_TARGET_DIR/release/examples/relay_floor
RELAY=$CARGO_TARGET_DIR/release/examples/put_relay
TUS_RELAY=$CARGO_TARGET_DIR/release/examples/tus_relay

DB_URL=$(pg_start bench "${INTAKE_BENCH_PG_PORT:-54331}")
PG_BIN=$(pg_bindir)
SCHEMA=bench_upload_$(date +%s)
"$PG_BIN/psql" "$DB_URL" -qc "CREATE SCHEMA $SCHEMA"

WORK=$(mktemp -d)
S3_PORT=$(free_port)
S3_PID= SERVER_PID= RELAY_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null || true
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
    "$PG_BIN/psql" "$DB_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
s3_start "$WORK/s3" "$S3_PORT" bench-key bench-secret
python3 - "$S3_PORT" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="bench-key", aws_secret_access_key="bench-secret",
                  config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="bench")
PY

export S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3_BUCKET=bench S3_ACCESS_KEY_ID=bench-key S3_SECRET_ACCESS_KEY=bench-secret
export DATABASE_URL="$DB_URL?options=-c%20search_path%3D$SCHEMA" STORAGE_BACKEND=s3 S3_REGION=us-east-1
export JWT_SECRET=bench-secret-0123456789abcdefghijklmnopqrstuvwxyz ADMIN_TOKEN=bench-admin-token-0123456789abcdefghij
export UPLOAD_PART_BYTES=$PART_BYTES PART_BYTES RUST_LOG=warn
PORT=$(free_port)
export BIND_ADDR=127.0.0.1:$PORT INTAKE_URL=http://127.0.0.1:$PORT

start_intake() {
    ${INTAKE_WRAP:-} "$BIN" serve >"$WORK/intake.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        curl -fs "$INTAKE_URL/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$WORK/intake.log" >&2; return 1
}
stop_intake() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$SERVER_PID/status"; }
# reset_peak_rss [PID]: the peak RSS of PID (default: intake) starts again
# from its current RSS.
reset_peak_rss() { echo 5 >"/proc/${1:-$SERVER_PID}/clear_refs"; }
# cpu_ticks [PID]: user + system clock ticks of PID (default: intake).
cpu_ticks() { awk '{print $14 + $15}' "/proc/${1:-$SERVER_PID}/stat"; }
# cpu_seconds_since T0 [PID]: CPU seconds spent since cpu_ticks gave T0.
cpu_seconds_since() { python3 -c "print(f'{($(cpu_ticks "${2:-}") - $1) / $(getconf CLK_TCK):.2f}')"; }
# per_gib T0 T1 MIB: CPU seconds per GiB between two cpu_ticks readings
# taken around MIB MiB of uploads.
per_gib() { python3 -c "print(f'{($2 - $1) / $(getconf CLK_TCK) / ($3 / 1024):.2f}')"; }
# start_relay PORT BIN [ARGS...]: starts one of the bench's bare relays as
# `BIN 127.0.0.1:PORT ARGS...` and waits for it to answer; stop_relay ends it.
start_relay() {
    local port=$1 bin=$2; shift 2
    "$bin" "127.0.0.1:$port" "$@" >"$WORK/relay.log" 2>&1 &
    RELAY_PID=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
        sleep 0.1
    done
    cat "$WORK/relay.log" >&2; return 1
}
stop_relay() { kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=; }
# Deletes what the bucket holds between cases, so the disk does not fill.
empty_bucket() { rm -rf "${WORK:?}/s3/bench/"*; }

start_intake
INTAKE_KEY=$(python3 - "$INTAKE_URL" <<'PY'
import json, os, sys, urllib.request
base = sys.argv[1]
def call(method, path, body):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + os.environ["ADMIN_TOKEN"], "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
acct = call("POST", "/admin/accounts", {"email": "bench@example.com", "tier": "enterprise"})
call("PATCH", f"/admin/accounts/{acct['id']}", {"custom_limits": {
    "concurrent_uploads": 64, "batch_size": 64, "requests_per_minute": 100000, "storage_bytes": None}})
print(call("POST", f"/admin/accounts/{acct['id']}/api-keys", {"name": "bench"})["key"])
PY
)
export INTAKE_KEY

if [ "$CASES" = profile ]; then
    # intake under callgrind for one upload: instruction counts repeat from
    # run to run whatever else the machine is doing.
    command -v valgrind >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq valgrind; }
    stop_intake
    PROFILE_MIB=${PROFILE_MIB:-100}
    INTAKE_WRAP="valgrind --tool=callgrind --callgrind-out-file=$WORK/callgrind.out" start_intake
    "$CLIENT" intake 1 1 >/dev/null # warm up: connections, first statements
    callgrind_control -z "$SERVER_PID" >/dev/null 2>&1 || true
    "$CLIENT" intake 1 "$PROFILE_MIB" >/dev/null
    callgrind_control -d "$SERVER_PID" >/dev/null 2>&1 || true
    sleep 1
    stop_intake
    out=$(ls "$WORK"/callgrind.out.* | head -n 1) # the dump taken right after the upload
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
    echo
    echo "intake instructions for one $PROFILE_MIB MiB upload: $total ($(python3 -c "print(f'{$total / $PROFILE_MIB / 1e6:.1f}')") M per MiB)"
    callgrind_annotate --inclusive=no "$out" 2>/dev/null | sed -n '/^Ir/,$p' | head -n 30
    exit 0
fi

# median CASE COUNT MIB -> median seconds over REPEAT runs
median() {
    local times=()
    for _ in $(seq 1 "$REPEAT"); do
        times+=("$("$CLIENT" "$@" | sed -E 's/.*seconds=([0-9.]+).*/\1/')")
        empty_bucket
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
# divide DIGITS A B -> A / B to DIGITS decimals, or n/a when either is n/a
divide() { python3 -c "import sys; d, a, b = sys.argv[1:]; print(f'{float(a) / float(b):.{d}f}' if 'n/a' not in (a, b) else 'n/a')" "$@"; }
rate() { divide 1 "$@"; }
ratio() { divide 2 "$@"; }

# The lines a case prints, the same in the whole run and in a single case,
# so runs of either compare.
batch_rows() {
    cat <<OUT
direct S3 50 x 1 MiB PUTs              $(printf '%7s %8s' "$direct_puts" "$(rate 50 "$direct_puts")")
intake batch 50 x 1 MiB                $(printf '%7s %8s' "$intake_batch" "$(rate 50 "$intake_batch")")
OUT
}
batch_summary() {
    echo "intake / direct, batch 50 x 1 MiB:     $(ratio "$direct_puts" "$intake_batch")   goal >= 0.80"
}
stream_summary() {
    cat <<OUT
intake / direct single PUT (100 MiB):  $(ratio "$direct_put" "$intake_one")   goal >= 0.90
  floor, a bare relay (receive + SHA-256 + one PUT) / direct: $(ratio "$direct_put" "$relay_put")
intake CPU seconds per GiB streamed:   $cpu_per_gib   goal <= 1
  the same with 1 MiB reads (READ_BUFFER_BYTES=$BIG_READS): $cpu_per_gib_1m
  floor, receive + SHA-256 + send only: $floor_64 (64 KiB reads), $floor_1m (1 MiB reads); SHA-256 alone $floor_sha
OUT
}

if [ "$CASES" = batch ]; then
    direct_puts=$(median direct-puts 50 1)
    intake_batch=$(median intake-batch 50 1)
    cat <<OUT

case                                   seconds    MiB/s
$(batch_rows)

$(batch_summary)
(median of $REPEAT runs; $(nproc) cores shared by client, intake and s3s-fs)
OUT
    exit 0
fi

# 1. One 100 MiB file: direct multipart, direct PUT, intake (with its CPU).
if [ "$CASES" = all ]; then
    direct_mp=$(median direct-multipart 1 100)
fi
if [ "$CASES" = all ] || [ "$CASES" = stream ]; then
    direct_put=$(median direct-put 1 100)
    # The same PUT through a relay that only receives, hashes and sends on.
    RELAY_PORT=$(free_port)
    start_relay "$RELAY_PORT" "$RELAY"
    relay_put=$(S3_ENDPOINT=http://127.0.0.1:$RELAY_PORT median direct-put 1 100)
    stop_relay
fi
t0=$(cpu_ticks)
intake_one=$(median intake 1 100)
t1=$(cpu_ticks)
cpu_per_gib=$(per_gib "$t0" "$t1" $((REPEAT * 100)))
if [ "$CASES" = all ] || [ "$CASES" = stream ]; then
    # The same uploads on a server reading 1 MiB at a time
    # (READ_BUFFER_BYTES): less CPU per byte, more memory per upload.
    stop_intake; empty_bucket
    READ_BUFFER_BYTES=$BIG_READS start_intake
    "$CLIENT" intake 1 1 >/dev/null; empty_bucket
    t0=$(cpu_ticks)
    median intake 1 100 >/dev/null
    t1=$(cpu_ticks)
    cpu_per_gib_1m=$(per_gib "$t0" "$t1" $((REPEAT * 100)))
    if [ "$CASES" = all ]; then
        stop_intake
        READ_BUFFER_BYTES=$BIG_READS start_intake
        "$CLIENT" intake-concurrent 10 20 >/dev/null
        rss10_1m=$(peak_rss_mib)
        empty_bucket
    fi
    # Back on the default buffer, warmed as the server before it was.
    stop_intake
    start_intake
    "$CLIENT" intake 1 100 >/dev/null; empty_bucket
fi
# The least any server spends per GiB that receives, hashes and sends on
# (examples/relay_floor.rs), on this machine, now.
if [ "$CASES" = all ] || [ "$CASES" = stream ]; then
    read -r floor_64 floor_sha < <("$FLOOR" 2 64 |
        sed -E 's/.*relay_cpu_s_per_gib=([0-9.]+) sha256_cpu_s_per_gib=([0-9.]+).*/\1 \2/')
    floor_1m=$("$FLOOR" 2 1024 | sed -E 's/.*relay_cpu_s_per_gib=([0-9.]+).*/\1/')
fi
if [ "$CASES" = stream ]; then
    cat <<OUT

case                                   seconds    MiB/s
direct S3 single PUT, 100 MiB          $(printf '%7s %8s' "$direct_put" "$(rate 100 "$direct_put")")
same PUT through a bare relay          $(printf '%7s %8s' "$relay_put" "$(rate 100 "$relay_put")")
intake /upload/stream, 100 MiB         $(printf '%7s %8s' "$intake_one" "$(rate 100 "$intake_one")")

$(stream_summary)
(median of $REPEAT runs; $(nproc) cores shared by client, intake and s3s-fs)
OUT
    exit 0
fi

if [ "$CASES" = all ]; then
    # 2. Batch of 50 x 1 MiB vs 50 direct PUTs.
    direct_puts=$(median direct-puts 50 1)
    intake_batch=$(median intake-batch 50 1)
    stop_intake

    # 3. Peak RSS under concurrency, each on a fresh process.
    start_intake
    c20=$("$CLIENT" intake-concurrent 20 100 | sed -E 's/.*seconds=([0-9.]+).*/\1/')
    rss20=$(peak_rss_mib)
    stop_intake; empty_bucket
    start_intake
    c10=$("$CLIENT" intake-concurrent 10 20 | sed -E 's/.*seconds=([0-9.]+).*/\1/')
    rss10=$(peak_rss_mib)
fi
stop_intake; empty_bucket

# 4. The tus reference server and intake's /upload/tus, with the same client
# and the same file (an MP4 header, so that intake accepts it, then random
# bytes).
TUS_FILE=$WORK/clip.bin
{ printf '\0\0\0\030ftypmp42\0\0\0\0mp42isom'; head -c $((100 * 1048576 - 24)) /dev/urandom; } >"$TUS_FILE"
tus=$(TUS_BENCH_FILE=$TUS_FILE scripts/bench/tus.sh "$S3_ENDPOINT" bench-key bench-secret bench "$PART_BYTES")
tus_single=$(printf '%s\n' "$tus" | awk '/^tus single/' | sed -E 's/.*seconds=([0-9.]+).*/\1/')
tus_single_rss=$(printf '%s\n' "$tus" | awk '/^tus single/' | sed -E 's/.*peak_rss_mib=([0-9.]+).*/\1/')
tus_c10=$(printf '%s\n' "$tus" | awk '/^tus 10x20/' | sed -E 's/.*seconds=([0-9.]+).*/\1/')
tus_c10_rss=$(printf '%s\n' "$tus" | awk '/^tus 10x20/' | sed -E 's/.*peak_rss_mib=([0-9.]+).*/\1/')
start_intake
"$CLIENT" intake 1 100 >/dev/null
rss_single=$(peak_rss_mib)
# A build without /upload/tus (an older one, through INTAKE_BIN) gets n/a.
tus_status=$(curl -s -o /dev/null -w '%{http_code}' -X OPTIONS "$INTAKE_URL/upload/tus")
stop_intake; empty_bucket

# tus_load URL COUNT MIB: the bench's tus client, COUNT concurrent uploads
# of MIB MiB of the bench file created at URL; prints its JSON line.
tus_load() {
    node scripts/bench/tus/client.mjs "$1" "$TUS_FILE" $(($3 * 1048576)) "$2" "$PART_BYTES"
}
# Removes intake's bench files (rows and objects).
drop_tus_files() {
    "$PG_BIN/psql" "$DB_URL" -qc "DELETE FROM $SCHEMA.files WHERE filename LIKE 'bench-%.bin'"
    empty_bucket
}

# intake_tus COUNT MIB: on a fresh intake, the load once to warm it, then
# timed; prints "seconds rss cpu" of the timed pass (cpu: intake's user +
# system seconds). Every upload must have become a file of the full size.
intake_tus() {
    local count=$1 mib=$2 out seconds rss files t0 cpu
    start_intake
    TUS_AUTHORIZATION="Bearer $INTAKE_KEY" tus_load "$INTAKE_URL/upload/tus" "$count" "$mib" >/dev/null
    drop_tus_files
    reset_peak_rss
    t0=$(cpu_ticks)
    out=$(TUS_AUTHORIZATION="Bearer $INTAKE_KEY" tus_load "$INTAKE_URL/upload/tus" "$count" "$mib")
    rss=$(peak_rss_mib)
    cpu=$(cpu_seconds_since "$t0")
    stop_intake
    files=$("$PG_BIN/psql" "$DB_URL" -tAc "SELECT count(*) FROM $SCHEMA.files
        WHERE filename LIKE 'bench-%.bin' AND size = $((mib * 1048576)) AND sha256 IS NOT NULL")
    if [ "$files" != "$count" ]; then
        echo "intake tus $count x $mib MiB: $files files recorded, not $count" >&2; return 1
    fi
    drop_tus_files
    seconds=$(node -p "JSON.parse(process.argv[1]).seconds" "$out")
    printf '%.3f %s %s\n' "$seconds" "$rss" "$cpu"
}
if [ "$tus_status" = 204 ] || [ "$tus_status" = 200 ]; then
    read -r itus_single itus_single_rss itus_single_cpu < <(intake_tus 1 100)
    read -r itus_c10 itus_c10_rss itus_c10_cpu < <(intake_tus 10 20)
else
    itus_single=n/a itus_single_rss=n/a itus_c10=n/a itus_c10_rss=n/a itus_single_cpu=n/a itus_c10_cpu=n/a
fi

# relay_tus COUNT MIB: the same client and file against a bare tus relay
# (receive, SHA-256, one S3 part per PATCH, complete: examples/tus_relay.rs),
# warmed and timed alike; prints its seconds and its CPU seconds. Every
# upload must have become an object of the full size.
relay_tus() {
    local count=$1 mib=$2 port out objects t0 cpu
    port=$(free_port)
    start_relay "$port" "$TUS_RELAY" bench
    tus_load "http://127.0.0.1:$port/files" "$count" "$mib" >/dev/null
    empty_bucket
    t0=$(cpu_ticks "$RELAY_PID")
    out=$(tus_load "http://127.0.0.1:$port/files" "$count" "$mib")
    cpu=$(cpu_seconds_since "$t0" "$RELAY_PID")
    stop_relay
    objects=$(find "$WORK/s3/bench" -maxdepth 1 -type f -size "$((mib * 1048576))c" | wc -l)
    if [ "$objects" != "$count" ]; then
        echo "bare tus relay $count x $mib MiB: $objects objects of the full size, not $count" >&2; return 1
    fi
    empty_bucket
    printf '%s %s\n' "$(node -p "JSON.parse(process.argv[1]).seconds.toFixed(3)" "$out")" "$cpu"
}
read -r rtus_single rtus_single_cpu < <(relay_tus 1 100)
read -r rtus_c10 rtus_c10_cpu < <(relay_tus 10 20)

part_mib=$((PART_BYTES / 1048576))
tus_summary() {
    cat <<OUT
intake /upload/tus, 100 MiB            $(printf '%7s %8s %12s' "$itus_single" "$(rate 100 "$itus_single")" "$itus_single_rss")
intake tus 10 x 20 MiB concurrent      $(printf '%7s %8s %12s' "$itus_c10" "$(rate 200 "$itus_c10")" "$itus_c10_rss")
bare tus relay, 100 MiB                $(printf '%7s %8s' "$rtus_single" "$(rate 100 "$rtus_single")")
bare tus relay 10 x 20 MiB concurrent  $(printf '%7s %8s' "$rtus_c10" "$(rate 200 "$rtus_c10")")

intake-tus / tus-reference throughput, 100 MiB:     $(ratio "$tus_single" "$itus_single")   goal >= 2
intake-tus / tus-reference throughput, 10 x 20 MiB: $(ratio "$tus_c10" "$itus_c10")   goal >= 2
intake-tus / tus-reference peak RSS, 100 MiB:       $(ratio "$itus_single_rss" "$tus_single_rss")   goal < 0.5
intake-tus / tus-reference peak RSS, 10 x 20 MiB:   $(ratio "$itus_c10_rss" "$tus_c10_rss")   goal < 0.5
intake-tus / intake-stream throughput, 100 MiB:     $(ratio "$intake_one" "$itus_single")
  floor, a bare tus relay (receive + SHA-256 + one part per PATCH) / tus reference:
    100 MiB: $(ratio "$tus_single" "$rtus_single")   10 x 20 MiB: $(ratio "$tus_c10" "$rtus_c10")
  server CPU seconds, intake-tus / bare tus relay:
    100 MiB: $itus_single_cpu / $rtus_single_cpu   10 x 20 MiB: $itus_c10_cpu / $rtus_c10_cpu
OUT
}
if [ "$CASES" = tus ]; then
    cat <<OUT

case                                   seconds    MiB/s   peak RSS MiB
intake /upload/stream, 100 MiB         $(printf '%7s %8s %12s' "$intake_one" "$(rate 100 "$intake_one")" "$rss_single")
tus, 100 MiB                           $(printf '%7s %8s %12s' "$tus_single" "$(rate 100 "$tus_single")" "$tus_single_rss")
tus 10 x 20 MiB concurrent             $(printf '%7s %8s %12s' "$tus_c10" "$(rate 200 "$tus_c10")" "$tus_c10_rss")
$(tus_summary)
(median of $REPEAT runs for /upload/stream, one run for each tus case; part size $part_mib MiB; $(nproc) cores shared by client, intake and s3s-fs)
OUT
    exit 0
fi
cat <<OUT

case                                   seconds    MiB/s   peak RSS MiB
direct S3 multipart, 100 MiB           $(printf '%7s %8s' "$direct_mp" "$(rate 100 "$direct_mp")")
direct S3 single PUT, 100 MiB          $(printf '%7s %8s' "$direct_put" "$(rate 100 "$direct_put")")
same PUT through a bare relay          $(printf '%7s %8s' "$relay_put" "$(rate 100 "$relay_put")")
intake /upload/stream, 100 MiB         $(printf '%7s %8s %12s' "$intake_one" "$(rate 100 "$intake_one")" "$rss_single")
tus, 100 MiB                           $(printf '%7s %8s %12s' "$tus_single" "$(rate 100 "$tus_single")" "$tus_single_rss")
intake 20 x 100 MiB concurrent         $(printf '%7s %8s %12s' "$c20" "$(rate 2000 "$c20")" "$rss20")
intake 10 x 20 MiB concurrent          $(printf '%7s %8s %12s' "$c10" "$(rate 200 "$c10")" "$rss10")
tus 10 x 20 MiB concurrent             $(printf '%7s %8s %12s' "$tus_c10" "$(rate 200 "$tus_c10")" "$tus_c10_rss")
$(batch_rows)

intake / direct multipart (100 MiB):   $(ratio "$direct_mp" "$intake_one")   goal >= 0.90
$(stream_summary)
peak RSS, 20 x 100 MiB:                $rss20 MiB   goal <= 64 MiB (32 + 20 x 1 MiB of chunks: one PUT each, no part)
peak RSS, 10 x 20 MiB:                 $rss10 MiB   goal <= 64 MiB
  the same with 1 MiB reads (READ_BUFFER_BYTES=$BIG_READS): $rss10_1m MiB
intake / tus throughput, 100 MiB:      $(ratio "$tus_single" "$intake_one")   goal >= 2
intake / tus throughput, 10 x 20 MiB:  $(ratio "$tus_c10" "$c10")   goal >= 3
$(batch_summary)
$(tus_summary)
(median of $REPEAT runs for single cases; part size $part_mib MiB; $(nproc) cores shared by client, intake and s3s-fs)
OUT
