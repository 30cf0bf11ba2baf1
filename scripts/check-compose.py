#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine: it parses, it writes
no secret into the file (every secret is a ${VAR} from the environment),
it publishes only intake and the object store's S3 API (presigned URLs
point there), intake uses a key of its own, never MinIO's root
credentials, and its session cookie is Secure unless the environment says
otherwise. MinIO is the default; Garage comes with the "garage" profile,
its configuration holding no secret and its key in Garage's own format."""
import re
import subprocess
import sys
import tomllib

import yaml

SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|ROOT_USER|ACCESS_KEY", re.I)
FROM_ENV = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")
PUBLISHED = {
    "intake": ["8080:8080"],
    "minio": ["9000:9000"],
    "intake-garage": ["8080:8080"],
    "garage": ["3900:3900"],
}
# Which profile each service belongs to (None: the default stack).
PROFILES = {
    "postgres": None,
    "minio": None,
    "minio-init": None,
    "intake": None,
    "garage": ["garage"],
    "intake-garage": ["garage"],
}
GARAGE_SECRET_KEYS = ("rpc_secret", "admin_token", "metrics_token")


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
    for name, profiles in PROFILES.items():
        if name not in services:
            problems.append(f"{name}: missing")
        elif services[name].get("profiles") != profiles:
            problems.append(f"{name}: profiles {services[name].get('profiles')}, expected {profiles}")
    for name in ("intake", "intake-garage"):
        intake = (services.get(name) or {}).get("environment") or {}
        if "MINIO_ROOT" in str(intake.get("S3_ACCESS_KEY_ID")) + str(intake.get("S3_SECRET_ACCESS_KEY")):
            problems.append(f"{name}: uses MinIO's root credentials")
        cookie = str(intake.get("COOKIE_SECURE"))
        if cookie != "${COOKIE_SECURE:-true}":
            problems.append(f"{name}: COOKIE_SECURE is {cookie!r}, not ${{COOKIE_SECURE:-true}}")
    problems += check_garage(doc)
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


def check_garage(doc):
    """Garage reads its secrets from the environment, intake uses the key
    Garage makes, and the inline garage.toml parses and holds no secret."""
    problems = []
    garage = (doc["services"].get("garage") or {}).get("environment") or {}
    intake = (doc["services"].get("intake-garage") or {}).get("environment") or {}
    for var in ("GARAGE_RPC_SECRET", "GARAGE_DEFAULT_ACCESS_KEY", "GARAGE_DEFAULT_SECRET_KEY"):
        if not FROM_ENV.match(str(garage.get(var, ""))):
            problems.append(f"garage: {var} is not taken from the environment")

    def env_var(value):
        """The variable a ${VAR...} value reads."""
        return re.sub(r"^\$\{([A-Z0-9_]+).*$", r"\1", str(value))

    if env_var(intake.get("S3_ACCESS_KEY_ID")) != env_var(garage.get("GARAGE_DEFAULT_ACCESS_KEY")):
        problems.append("intake-garage: S3_ACCESS_KEY_ID is not Garage's default key")
    if env_var(intake.get("S3_SECRET_ACCESS_KEY")) != env_var(garage.get("GARAGE_DEFAULT_SECRET_KEY")):
        problems.append("intake-garage: S3_SECRET_ACCESS_KEY is not Garage's default secret")
    if intake.get("S3_BUCKET") != garage.get("GARAGE_DEFAULT_BUCKET"):
        problems.append("intake-garage: S3_BUCKET is not Garage's default bucket")
    content = ((doc.get("configs") or {}).get("garage-toml") or {}).get("content", "")
    try:
        toml = tomllib.loads(content)
    except tomllib.TOMLDecodeError as e:
        return problems + [f"configs.garage-toml: does not parse: {e}"]
    leaked = [k for k in GARAGE_SECRET_KEYS if k in toml or k in (toml.get("admin") or {})]
    if leaked:
        problems.append(f"configs.garage-toml: holds {leaked}")
    if toml.get("replication_factor") != 1:
        problems.append("configs.garage-toml: --single-node needs replication_factor = 1")
    if intake.get("S3_REGION") != (toml.get("s3_api") or {}).get("s3_region"):
        problems.append("intake-garage: S3_REGION is not Garage's s3_region")
    return problems


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"))
