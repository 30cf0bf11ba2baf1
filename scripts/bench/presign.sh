#!/usr/bin/env bash
# Benchmark of presigned uploads against the same S3 server (s3s-fs) on
# loopback: a 1 GiB multipart upload through intake's presigned URLs (issue,
# PUT the parts straight to S3, complete) against the same upload done by
# boto3 directly (same part size, parts one after another, same checksum
# policy, payloads unsigned as in intake's presigned URLs), and the latency
# of issue and complete calls with 50 presigned uploads in flight at once.
#
#   scripts/bench/presign.sh            (SIZE_MIB=1024 CONCURRENT=50)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

SIZE_MIB=${SIZE_MIB:-1024}
CONCURRENT=${CONCURRENT:-50}
ensure_rust
ensure_s3s_fs
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}
cargo build --release --locked --bin intake >/dev/null 2>&1
BIN=$CARGO_TARGET_DIR/release/intake

bench_database bench_presign
WORK=$(mktemp -d)
S3_PORT=$(free_port)
S3_PID= SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
    bench_database_drop
    rm -rf "$WORK"
}
trap cleanup EXIT
s3_start "$WORK/s3" "$S3_PORT" bench-key bench-secret

PORT=$(free_port)
export STORAGE_BACKEND=s3 S3_REGION=us-east-1
export S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3_BUCKET=bench S3_ACCESS_KEY_ID=bench-key S3_SECRET_ACCESS_KEY=bench-secret
export BIND_ADDR=127.0.0.1:$PORT RUST_LOG=warn DATABASE_MAX_CONNECTIONS=20
"$BIN" serve >"$WORK/intake.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

python3 - "$PORT" "$S3_PORT" "$SIZE_MIB" "$CONCURRENT" <<'PY'
import concurrent.futures as cf, json, os, statistics, sys, time
import boto3, requests
from botocore.config import Config

port, s3_port, size_mib, concurrent = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = f"http://127.0.0.1:{port}"
admin = {"Authorization": "Bearer " + os.environ["ADMIN_TOKEN"]}
# Payloads unsigned (UNSIGNED-PAYLOAD), as the parts PUT to intake's
# presigned URLs are: over plain http botocore would otherwise hash every
# part it sends, work the presigned side never does.
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                  aws_access_key_id="bench-key", aws_secret_access_key="bench-secret",
                  config=Config(s3={"addressing_style": "path", "payload_signing_enabled": False},
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required", max_pool_connections=64))
s3.create_bucket(Bucket="bench")
acct = requests.post(f"{base}/admin/accounts", headers=admin, json={"email": "b@example.com", "tier": "enterprise"}).json()
requests.patch(f"{base}/admin/accounts/{acct['id']}", headers=admin, json={"custom_limits": {
    "concurrent_uploads": 200, "requests_per_minute": 1000000, "storage_bytes": None}}).raise_for_status()
key = requests.post(f"{base}/admin/accounts/{acct['id']}/api-keys", headers=admin, json={"name": "b"}).json()["key"]
auth = {"Authorization": f"Bearer {key}"}
http = requests.Session()

size = size_mib * 1024 * 1024
part = 8 * 1024 * 1024
header = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom"
block = os.urandom(part)
def part_bytes(i, n):
    data = block[: n]
    return header + data[len(header):] if i == 0 else data

# 1. Direct multipart with boto3.
t0 = time.perf_counter()
up = s3.create_multipart_upload(Bucket="bench", Key="direct")
parts = []
for i, off in enumerate(range(0, size, part)):
    n = min(part, size - off)
    r = s3.upload_part(Bucket="bench", Key="direct", UploadId=up["UploadId"], PartNumber=i + 1, Body=part_bytes(i, n))
    parts.append({"PartNumber": i + 1, "ETag": r["ETag"]})
s3.complete_multipart_upload(Bucket="bench", Key="direct", UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
direct = time.perf_counter() - t0
s3.delete_object(Bucket="bench", Key="direct")

# 2. The same through intake's presigned URLs.
t0 = time.perf_counter()
ti = time.perf_counter()
issued = http.post(f"{base}/upload/presigned", headers=auth, json={
    "filename": "big.mp4", "content_type": "video/mp4", "size": size, "multipart": True}).json()
issue_s = time.perf_counter() - ti
done = []
for i, p in enumerate(issued["parts"]):
    n = min(issued["part_size"], size - i * issued["part_size"])
    r = http.put(p["url"], data=part_bytes(i, n))
    r.raise_for_status()
    done.append({"part_number": p["part_number"], "etag": r.headers["ETag"]})
tc = time.perf_counter()
r = http.post(f"{base}/upload/presigned/{issued['upload_id']}/complete", headers=auth, json={"parts": done})
assert r.status_code == 201, r.text
complete_s = time.perf_counter() - tc
through = time.perf_counter() - t0

# 3. Issue and complete latency with CONCURRENT uploads at once.
small = header + os.urandom(256 * 1024)
def issue_one(_):
    t = time.perf_counter()
    r = requests.post(f"{base}/upload/presigned", headers=auth, json={
        "filename": "s.mp4", "content_type": "video/mp4", "size": len(small)})
    assert r.status_code == 201, r.text
    return time.perf_counter() - t, r.json()
def complete_one(issued):
    hdrs = {k: v for k, v in issued["headers"].items() if k != "content-length"}
    requests.put(issued["url"], data=small, headers=hdrs).raise_for_status()
    t = time.perf_counter()
    r = requests.post(f"{base}/upload/presigned/{issued['upload_id']}/complete", headers=auth, json={})
    assert r.status_code == 201, r.text
    return time.perf_counter() - t
with cf.ThreadPoolExecutor(concurrent) as pool:
    issues = list(pool.map(issue_one, range(concurrent)))
    completes = list(pool.map(complete_one, [i[1] for i in issues]))
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000

print(f"\ncase                                         seconds   MiB/s")
print(f"direct boto3 multipart, {size_mib} MiB            {direct:8.2f} {size_mib / direct:7.1f}")
print(f"intake presigned multipart, {size_mib} MiB        {through:8.2f} {size_mib / through:7.1f}")
print(f"  of which issue {issue_s * 1000:.1f} ms ({len(issued['parts'])} part URLs), complete {complete_s * 1000:.1f} ms")
print(f"\nintake / direct throughput: {direct / through:.2f}")
print(f"{concurrent} concurrent presigns: issue p50 {pct([i[0] for i in issues], .5):.1f} ms, p99 {pct([i[0] for i in issues], .99):.1f} ms")
print(f"{concurrent} concurrent completes: p50 {pct(completes, .5):.1f} ms, p99 {pct(completes, .99):.1f} ms")
print(f"(parts {part // 1048576} MiB, sent one after another by the same Python client; s3s-fs on loopback)")
PY
