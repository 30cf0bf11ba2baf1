#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine: it parses, it writes
no secret into the file (every secret is a ${VAR} from the environment),
it publishes only intake and MinIO's S3 API (presigned URLs point there),
and intake uses a key of its own, never MinIO's root credentials."""
import re
import subprocess
import sys

import yaml

SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|ROOT_USER|ACCESS_KEY", re.I)
FROM_ENV = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")
PUBLISHED = {"intake": ["8080:8080"], "minio": ["9000:9000"]}


def main(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    problems = []
    services = doc["services"]
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in env.items():
            value = "" if value is None else str(value)
            if SECRET.search(key) and not FROM_ENV.match(value):
                problems.append(f"{name}: {key} is written in the file ({value!r})")
        url = str(env.get("DATABASE_URL", ""))
        if url and not re.search(r":\$\{[A-Z_]+[^}]*\}@", url):
            problems.append(f"{name}: DATABASE_URL carries a literal password")
        ports = [str(p) for p in svc.get("ports") or []]
        if ports != PUBLISHED.get(name, []):
            problems.append(f"{name}: publishes {ports}, expected {PUBLISHED.get(name, [])}")
    intake = services["intake"]["environment"]
    if "MINIO_ROOT" in str(intake.get("S3_ACCESS_KEY_ID")) + str(intake.get("S3_SECRET_ACCESS_KEY")):
        problems.append("intake: uses MinIO's root credentials")
    init = str((services.get("minio-init") or {}).get("entrypoint"))
    for step in ("mc admin user add", "mc admin policy create", "mc admin policy attach"):
        if step not in init:
            problems.append(f"minio-init: no {step!r}")
    # The init script parses as a shell script (compose turns $$ into $).
    entry = (services.get("minio-init") or {}).get("entrypoint") or []
    if entry[:2] == ["sh", "-ec"]:
        script = entry[2].replace("$$", "$")
        check = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True)
        if check.returncode != 0:
            problems.append(f"minio-init: the script does not parse: {check.stderr.strip()}")
    for p in problems:
        print(f"docker-compose.yml: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"))
