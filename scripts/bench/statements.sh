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
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

STORE=${STORE:-s3s-fs}
ensure_rust
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}
cargo build --locked --bin intake >/dev/null 2>&1
BIN=$CARGO_TARGET_DIR/debug/intake

PG_BIN=$(pg_bindir)
PG_PORT=${INTAKE_STMT_PG_PORT:-54332}
DB_URL=$(pg_start statements "$PG_PORT" \
    "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c fsync=off")
"$PG_BIN/psql" "$DB_URL" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
SCHEMA=stmt_$(date +%s)
"$PG_BIN/psql" "$DB_URL" -qc "CREATE SCHEMA $SCHEMA"

WORK=$(mktemp -d)
S3_PID= GARAGE_PID= SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
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

export DATABASE_URL="$DB_URL?options=-c%20search_path%3D$SCHEMA" STORAGE_BACKEND=s3 S3_BUCKET=bench
export JWT_SECRET=bench-secret-0123456789abcdefghijklmnopqrstuvwxyz ADMIN_TOKEN=bench-admin-token-0123456789abcdefghij
export RUST_LOG=warn UPLOAD_PART_BYTES=8388608
PORT=$(free_port)
export BIND_ADDR=127.0.0.1:$PORT INTAKE_URL=http://127.0.0.1:$PORT
"$BIN" serve >"$WORK/intake.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -fs "$INTAKE_URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

log "counting statements on $STORE (pg_stat_statements)"
PSQL="$PG_BIN/psql" python3 - "$DB_URL" <<'PY'
import base64, hashlib, json, os, subprocess, sys, time, urllib.request, uuid

DB = sys.argv[1]
URL, ADMIN = os.environ["INTAKE_URL"], os.environ["ADMIN_TOKEN"]
ROUNDS, REPEAT = int(os.environ.get("ROUNDS", 3)), int(os.environ.get("REPEAT", 10))

def sql(q):
    return subprocess.run([os.environ["PSQL"], DB, "-tAc", q], check=True,
                          capture_output=True, text=True).stdout.strip()

def statements():
    # Every statement of every intake connection; not this script's own.
    return int(sql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
                   " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'intake'"
                   " AND s.query NOT ILIKE '%pg_stat_statements%'"))

def call(method, path, body=None, headers=None, raw=False, url=None):
    headers = dict(headers or {})
    data = body
    if body is not None and not isinstance(body, (bytes, bytearray)):
        data = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    req = urllib.request.Request(url or URL + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req) as resp:
        out = resp.read()
        return resp.status, dict(resp.headers), (out if raw else (json.loads(out) if out else None))

_, _, account = call("POST", "/admin/accounts", {"email": f"{uuid.uuid4().hex}@example.com",
                     "password": "correct horse battery", "tier": "enterprise"},
                     {"authorization": f"Bearer {ADMIN}"})
call("PATCH", f"/admin/accounts/{account['id']}",
     {"custom_limits": {"requests_per_minute": 100000, "concurrent_uploads": 1000}},
     {"authorization": f"Bearer {ADMIN}"})
_, _, key = call("POST", f"/admin/accounts/{account['id']}/api-keys", {"name": "bench"},
                 {"authorization": f"Bearer {ADMIN}"})
AUTH = {"authorization": f"Bearer {key['key']}"}

def png(n):
    head = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89"
    return head + os.urandom(n - len(head))

def form(name, files):
    b = uuid.uuid4().hex
    out = bytearray()
    for i, data in enumerate(files):
        out += (f"--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"f{i}.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{b}--\r\n".encode()
    return bytes(out), {"content-type": f"multipart/form-data; boundary={b}", **AUTH}

def stream(data):
    body, h = form("file", [data])
    call("POST", "/upload/stream", body, h)

def batch(files):
    body, h = form("files", files)
    call("POST", "/upload/stream-batch", body, h)

def presigned(data, multipart=False):
    ask = {"filename": "p.png", "content_type": "image/png", "size": len(data)}
    if multipart:
        ask["multipart"] = True
    _, _, up = call("POST", "/upload/presigned", ask, AUTH)
    if multipart:
        parts, size = [], up["part_size"]
        for p in up["parts"]:
            n = p["part_number"]
            _, h, _ = call("PUT", "", data[(n - 1) * size:n * size], raw=True, url=p["url"])
            parts.append({"part_number": n, "etag": h.get("ETag") or h.get("etag")})
        call("POST", f"/upload/presigned/{up['upload_id']}/complete", {"parts": parts}, AUTH)
    else:
        h = {k: v for k, v in up["headers"].items() if k.lower() != "content-length"}
        call(up["method"], "", data, h, raw=True, url=up["url"])
        call("POST", f"/upload/presigned/{up['upload_id']}/complete", {}, AUTH)

def tus(data, patches):
    meta = "filename " + base64.b64encode(b"t.png").decode() + ",filetype " + \
        base64.b64encode(b"image/png").decode()
    _, h, _ = call("POST", "/upload/tus", b"", {"tus-resumable": "1.0.0",
                   "upload-length": str(len(data)), "upload-metadata": meta, **AUTH}, raw=True)
    loc = h.get("Location") or h.get("location")
    loc = loc if loc.startswith("http") else URL + loc
    step, off = -(-len(data) // patches), 0
    while off < len(data):
        chunk = data[off:off + step]
        call("PATCH", "", chunk, {"tus-resumable": "1.0.0", "upload-offset": str(off),
             "content-type": "application/offset+octet-stream", **AUTH}, raw=True, url=loc)
        off += len(chunk)

def settled():
    # Work an answer leaves behind (a lease ended after the response) counts
    # for the operation: wait until the count stops moving.
    last = statements()
    while True:
        time.sleep(0.3)
        now = statements()
        if now == last:
            return now
        last = now

MiB = 1 << 20
small, big = png(MiB), png(64 * MiB)
cases = [
    ("GET /me (API key)", lambda: call("GET", "/me", headers=AUTH), REPEAT),
    ("GET /files (API key)", lambda: call("GET", "/files", headers=AUTH), REPEAT),
    ("POST /upload/stream, 1 MiB", lambda: stream(small), REPEAT),
    ("POST /upload/stream, 64 MiB (one streamed PUT)", lambda: stream(big), 2),
    ("POST /upload/stream-batch, 10 x 100 KiB", lambda: batch([png(100 << 10)] * 10), REPEAT),
    ("presigned PUT, 1 MiB (issue + PUT + complete)", lambda: presigned(small), REPEAT),
    ("presigned multipart, 32 MiB (4 parts)", lambda: presigned(big[:32 * MiB], True), 2),
    ("tus, 1 MiB in 1 PATCH (create + PATCH)", lambda: tus(small, 1), REPEAT),
    ("tus, 32 MiB in 4 PATCHes", lambda: tus(big[:32 * MiB], 4), 2),
]
print(f"{'operation':<50} {'statements':>10}")
for name, op, n in cases:
    best = None
    for _ in range(ROUNDS):
        sql("SELECT pg_stat_statements_reset()")
        before = statements()
        for _ in range(n):
            op()
        per = (settled() - before) / n
        best = per if best is None else min(best, per)
    print(f"{name:<50} {best:>10.1f}", flush=True)
# What an idle instance sends (the reaper's pass every 10 s, the limiter's
# flushes), over 30 s.
sql("SELECT pg_stat_statements_reset()")
before = statements()
time.sleep(30)
print(f"{'idle instance, per 10 s (reaper pass)':<50} {(statements() - before) / 3:>10.1f}")
PY
