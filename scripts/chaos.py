#!/usr/bin/env python3
"""The soak behind scripts/chaos.sh: N intake instances behind a round-robin
load balancer on one Postgres and one S3 server, a mixed workload, and
faults at random moments (kill -9 and restart of an instance, an S3 server
restart, a Postgres restart). Prints requests served, the answers by code,
p50/p99 latency, the steady instance's RSS at the start and the end, and
reconcile's report; exits non-zero when reconcile finds anything or the
RSS grew past its bound.

Everything it needs comes from the environment chaos.sh sets (see there).
"""

import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import requests

E = os.environ
SECS = int(E.get("CHAOS_SECS", "300"))
INSTANCES = int(E.get("CHAOS_INSTANCES", "3"))
WORKERS = int(E.get("CHAOS_WORKERS", "6"))
SEED = int(E.get("CHAOS_SEED", str(int(time.time()))))
# Growth of the steady instance's RSS from the first sample to the last,
# beyond which the run fails (allocator caches and pools warm up first).
RSS_BOUND_MIB = int(E.get("CHAOS_RSS_BOUND_MIB", "64"))
BIN = E["INTAKE_BIN"]
ADMIN = E["ADMIN_TOKEN"]
LEASE_TTL = 4
PRESIGN_EXPIRY = 20
TUS_EXPIRY = 20
MIB = 1024 * 1024

rng = random.Random(SEED)
stop = threading.Event()
lock = threading.Lock()
answers = Counter()       # "op status" -> count
codes = Counter()         # status -> count
latencies = []            # seconds, every HTTP exchange
faults = []               # (elapsed, what)
started_at = time.time()


def log(msg):
    print(f"[{time.time() - started_at:6.1f}s] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, cond, bound):
    deadline = time.time() + bound
    while time.time() < deadline:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


# --- the services ---------------------------------------------------------

BASE_ENV = {
    "DATABASE_URL": E["CHAOS_DATABASE_URL"],
    "JWT_SECRET": "chaos-jwt-secret-0123456789abcdefghijklmnop",
    "ADMIN_TOKEN": ADMIN,
    "COOKIE_SECURE": "false",
    "STORAGE_BACKEND": "s3",
    "S3_BUCKET": "intake-chaos",
    "S3_ENDPOINT": f"http://127.0.0.1:{E['CHAOS_S3_PORT']}",
    "S3_ACCESS_KEY_ID": "chaos",
    "S3_SECRET_ACCESS_KEY": "chaos-secret",
    "S3_TIMEOUT_SECS": "10",
    "UPLOAD_PART_BYTES": str(5 * MIB),
    "UPLOAD_LEASE_TTL_SECS": str(LEASE_TTL),
    "PRESIGN_EXPIRY_SECS": str(PRESIGN_EXPIRY),
    "TUS_EXPIRY_SECS": str(TUS_EXPIRY),
    "REAPER_INTERVAL_SECS": "5",
    "DATABASE_ACQUIRE_TIMEOUT_SECS": "5",
    "DATABASE_MAX_CONNECTIONS": "10",
    "SHUTDOWN_GRACE_SECS": "5",
    "RUST_LOG": "warn",
    "PATH": E.get("PATH", "/usr/bin:/bin"),
}


class S3:
    def __init__(self):
        self.port = int(E["CHAOS_S3_PORT"])
        self.root = E["CHAOS_S3_ROOT"]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [E["S3S_FS"], "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", "chaos", "--secret-key", "chaos-secret", self.root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for("s3s-fs", lambda: socket.create_connection(("127.0.0.1", self.port), 0.5).close() is None, 10)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


class Instance:
    def __init__(self, index, logdir):
        self.index = index
        self.port = free_port()
        self.log = open(os.path.join(logdir, f"intake-{index}.log"), "ab")
        self.proc = None

    def start(self):
        env = dict(BASE_ENV, BIND_ADDR=f"127.0.0.1:{self.port}",
                   PUBLIC_BASE_URL=f"http://127.0.0.1:{self.port}")
        self.proc = subprocess.Popen([BIN, "serve"], env=env, stdout=self.log, stderr=self.log)
        wait_for(f"instance {self.index}", lambda: requests.get(
            f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok, 60)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def intake_cli(*args):
    env = dict(BASE_ENV)
    out = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=300)
    try:
        body = json.loads(out.stdout)
    except ValueError:
        body = out.stdout
    return out.returncode, body, out.stderr


def pg_restart():
    runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(runner + [os.path.join(E["PG_BIN"], "pg_ctl"), "-D", E["PG_DIR"],
                             "-m", "fast", "-w", "-t", "60", "restart"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Balancer:
    """Round-robin TCP balancer over the instances; skips ones that refuse."""

    def __init__(self, instances):
        self.instances = instances
        self.next = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.sock.accept()
            threading.Thread(target=self.relay, args=(client,), daemon=True).start()

    def relay(self, client):
        server = None
        with lock:
            first = self.next
            self.next += 1
        for i in range(len(self.instances)):
            inst = self.instances[(first + i) % len(self.instances)]
            try:
                server = socket.create_connection(("127.0.0.1", inst.port), 1)
                # The 1 s bound is for connecting only: an answer may take
                # longer than that to start (a large upload being stored).
                server.settimeout(None)
                break
            except OSError:
                continue
        if server is None:
            client.close()
            return

        def pump(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        t = threading.Thread(target=pump, args=(server, client), daemon=True)
        t.start()
        pump(client, server)
        t.join()
        client.close()
        server.close()


# --- the workload -----------------------------------------------------------

def magic(kind, size):
    heads = {
        "png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89",
        "mp4": b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom\0\0\0\x08free",
    }
    head = heads[kind]
    return head + os.urandom(max(0, size - len(head)))


def conflict_reason(r):
    # A 409 says that the upload is complete (or being completed), or that
    # the offset sent is not the upload's; the soak tells them apart.
    try:
        detail = r.json().get("detail", "")
    except ValueError:
        return ""
    if "being completed" in detail:
        return " (completing)"
    if "complete" in detail:
        return " (complete)"
    if "Upload-Offset is" in detail:
        return " (offset)"
    return ""


class Client:
    def __init__(self, base, key):
        self.base = base
        self.key = key
        self.files = []
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {key}"

    def call(self, op, method, path, expect_json=False, **kw):
        url = path if path.startswith("http") else self.base + path
        t = time.time()
        try:
            r = self.s.request(method, url, timeout=60, headers={"Connection": "close", **kw.pop("headers", {})}, **kw)
            status = r.status_code
        except requests.RequestException:
            r, status = None, "conn_error"
        with lock:
            latencies.append(time.time() - t)
            answers[f"{op} {status}{conflict_reason(r) if status == 409 else ''}"] += 1
            codes[status] += 1
        if expect_json and r is not None and r.headers.get("content-type", "").startswith("application/json"):
            try:
                return status, r.json(), r
            except ValueError:
                pass
        return status, None, r

    def list(self):
        self.call("list", "GET", "/files?limit=20")

    def stream(self, size, kind="png"):
        ct = "image/png" if kind == "png" else "video/mp4"
        status, body, _ = self.call("stream", "POST", "/upload/stream", expect_json=True,
                                    files={"file": (f"f.{kind}", magic(kind, size), ct)})
        if status == 201 and body:
            self.files.append(body["id"])

    def batch(self):
        files = [("files", (f"b{i}.png", magic("png", rng.randint(1000, 100_000)), "image/png"))
                 for i in range(rng.randint(2, 5))]
        status, body, _ = self.call("batch", "POST", "/upload/stream-batch", expect_json=True, files=files)
        if status == 200 and body:
            self.files += [r["file"]["id"] for r in body["results"] if r["status"] == 201]

    def presigned(self):
        data = magic("png", rng.randint(10_000, 300_000))
        status, issued, _ = self.call("presign", "POST", "/upload/presigned", expect_json=True,
                                      json={"filename": "p.png", "content_type": "image/png", "size": len(data)})
        if status != 201 or not issued:
            return
        headers = {k: v for k, v in issued["headers"].items() if k.lower() != "content-length"}
        t = time.time()
        try:
            put = requests.put(issued["url"], data=data, headers=headers, timeout=30).status_code
        except requests.RequestException:
            put = "conn_error"
        with lock:
            latencies.append(time.time() - t)
            answers[f"presign-put {put}"] += 1
        upload = issued["upload_id"]
        for _ in range(3):
            status, body, _ = self.call("presign-complete", "POST", f"/upload/presigned/{upload}/complete",
                                        expect_json=True, json={})
            if status == 201 and body:
                self.files.append(body["id"])
                return
            if status in (422, 404, 410):
                return
            time.sleep(0.5)
        self.call("presign-abort", "DELETE", f"/upload/presigned/{upload}")

    def tus(self):
        data = magic("mp4", rng.choice([200_000, 6 * MIB]))
        meta = "filename " + base64.b64encode(b"t.mp4").decode()
        h = {"Tus-Resumable": "1.0.0"}
        status, _, r = self.call("tus-create", "POST", "/upload/tus",
                                 headers={**h, "Upload-Length": str(len(data)), "Upload-Metadata": meta})
        if status != 201:
            return
        loc = r.headers["Location"]
        path = loc[loc.index("/upload/tus/"):]
        for _ in range(4):
            status, _, r = self.call("tus-head", "HEAD", path, headers=h)
            if status != 200:
                time.sleep(0.5)
                continue
            offset = int(r.headers["Upload-Offset"])
            status, _, r = self.call("tus-patch", "PATCH", path, data=data[offset:],
                                     headers={**h, "Upload-Offset": str(offset),
                                              "Content-Type": "application/offset+octet-stream"})
            if status == 204:
                if r is not None and r.headers.get("Intake-File-Id"):
                    self.files.append(r.headers["Intake-File-Id"])
                return
            time.sleep(0.5)
        self.call("tus-terminate", "DELETE", path, headers=h)

    def delete(self):
        if self.files:
            fid = self.files.pop(rng.randrange(len(self.files)))
            self.call("delete", "DELETE", f"/files/{fid}")


def worker(client, hammer):
    ops = [(client.list, 25), (lambda: client.stream(rng.randint(1000, 200_000)), 25),
           (lambda: client.stream(rng.randint(6, 12) * MIB, "mp4"), 4), (client.batch, 10),
           (client.presigned, 10), (client.tus, 6), (client.delete, 20)]
    while not stop.is_set():
        if hammer:
            client.call("hammer", "GET", "/me")
            time.sleep(0.5)
            continue
        fns, weights = zip(*ops)
        rng.choices(fns, weights)[0]()


def admin(base, method, path, body=None):
    r = requests.request(method, base + path, json=body, timeout=30,
                         headers={"Authorization": f"Bearer {ADMIN}"})
    r.raise_for_status()
    return r.json() if r.content else None


def account(base, tier, limits=None):
    acct = admin(base, "POST", "/admin/accounts",
                 {"email": f"{uuid.uuid4().hex}@example.com", "password": "chaos password 1", "tier": tier})
    if limits:
        admin(base, "PATCH", f"/admin/accounts/{acct['id']}", {"custom_limits": limits})
    return admin(base, "POST", f"/admin/accounts/{acct['id']}/api-keys", {"name": "chaos"})["key"]


def injector(instances, s3):
    # The first instance is the steady one whose memory is measured; the
    # others are killed and restarted.
    while not stop.wait(rng.uniform(10, 25)):
        fault = rng.choice(["kill9", "kill9", "s3", "postgres"])
        try:
            if fault == "kill9":
                inst = rng.choice(instances[1:])
                inst.kill9()
                faults.append((time.time() - started_at, f"kill -9 instance {inst.index}"))
                log(faults[-1][1])
                time.sleep(rng.uniform(0.5, 3))
                inst.start()
            elif fault == "s3":
                s3.kill()
                faults.append((time.time() - started_at, "S3 server stopped"))
                log(faults[-1][1])
                time.sleep(rng.uniform(1, 4))
                s3.start()
            else:
                faults.append((time.time() - started_at, "Postgres restart"))
                log(faults[-1][1])
                pg_restart()
        except Exception as e:  # a fault that fails to come back ends the run
            log(f"fault {fault} failed: {e}")
            stop.set()
            raise


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    logdir = E["CHAOS_LOG_DIR"]
    s3 = S3()
    s3.start()
    import boto3
    boto3.client("s3", endpoint_url=BASE_ENV["S3_ENDPOINT"], aws_access_key_id="chaos",
                 aws_secret_access_key="chaos-secret", region_name="us-east-1").create_bucket(Bucket="intake-chaos")
    code, _, err = intake_cli("migrate")
    if code != 0:
        raise SystemExit(f"migrate failed: {err}")
    instances = [Instance(i, logdir) for i in range(INSTANCES)]
    for inst in instances:
        inst.start()
    lb = Balancer(instances)
    base = f"http://127.0.0.1:{lb.port}"
    direct = f"http://127.0.0.1:{instances[0].port}"
    roomy = {"requests_per_minute": 100000, "concurrent_uploads": 50}
    clients = [Client(base, account(direct, "professional", roomy)) for _ in range(WORKERS)]
    # One account near its quota (507s), one STARTER at its per-minute limit (429s).
    clients.append(Client(base, account(direct, "starter", dict(roomy, storage_bytes=2 * MIB))))
    hammer = Client(base, account(direct, "starter"))
    threads = [threading.Thread(target=worker, args=(c, False), daemon=True) for c in clients]
    threads += [threading.Thread(target=worker, args=(hammer, True), daemon=True) for _ in range(2)]
    log(f"seed {SEED}: {INSTANCES} instances, {len(threads)} workers, {SECS} s")
    for t in threads:
        t.start()
    time.sleep(min(10, SECS / 10))
    rss_start = instances[0].rss_kib()
    inj = threading.Thread(target=injector, args=(instances, s3), daemon=True)
    inj.start()
    stop.wait(SECS)
    stop.set()
    for t in threads:
        t.join(120)
    rss_end = instances[0].rss_kib()
    # Everything a fault left open expires, then one reaper pass ends it.
    settle = max(LEASE_TTL, PRESIGN_EXPIRY, TUS_EXPIRY) + 2
    log(f"workload stopped; waiting {settle} s for leases and URLs to expire")
    time.sleep(settle)
    reap_code, reaped, reap_err = intake_cli("admin", "reap")
    rec_code, report, rec_err = intake_cli("admin", "reconcile")
    for inst in instances:
        inst.kill9()
    s3.kill()

    served = sum(codes.values())
    errors = {str(k): v for k, v in sorted(codes.items(), key=lambda kv: str(kv[0]))}
    grew = (rss_end - rss_start) / 1024
    print("== chaos run")
    print(f"seed {SEED}, {SECS} s, {INSTANCES} instances behind the balancer, {len(threads)} workers")
    print(f"faults injected: {len(faults)}")
    for at, what in faults:
        print(f"  {at:6.1f}s  {what}")
    print(f"requests served: {served} ({served / SECS:.1f}/s)")
    print("answers by status: " + ", ".join(f"{k}: {v} ({100 * v / served:.2f}%)" for k, v in errors.items()))
    print("answers by operation:")
    for k, v in sorted(answers.items()):
        print(f"  {k}: {v}")
    print(f"latency p50 {1000 * percentile(latencies, 50):.1f} ms, p99 {1000 * percentile(latencies, 99):.1f} ms")
    print(f"steady instance RSS: {rss_start / 1024:.1f} MiB at the start, {rss_end / 1024:.1f} MiB at the end "
          f"({grew:+.1f} MiB; bound {RSS_BOUND_MIB} MiB)")
    print(f"reaper pass: exit {reap_code}, {json.dumps(reaped)}")
    # Every 500 is a bug to find: its log line, whether or not the logs are kept.
    internal = []
    for i in range(INSTANCES):
        with open(os.path.join(logdir, f"intake-{i}.log"), errors="replace") as f:
            internal += [f"  instance {i}: " + ANSI.sub("", line).strip()[:300]
                         for line in f if "internal error" in line]
    print(f"internal errors logged: {len(internal)}")
    for line in internal[:10]:
        print(line)
    print(f"reconcile: exit {rec_code}")
    print(json.dumps(report, indent=2) if not isinstance(report, str) else report)
    if rec_err.strip():
        print(rec_err.strip(), file=sys.stderr)
    failed = rec_code != 0 or reap_code != 0 or grew > RSS_BOUND_MIB
    print("chaos: " + ("FAILED" if failed else "clean"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
