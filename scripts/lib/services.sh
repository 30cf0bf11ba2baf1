# Shared by scripts/run.sh, scripts/test.sh and the benches: start the
# Postgres cluster and the S3 test server that intake needs, installing what
# is missing, and install the tools the benches drive.
# shellcheck shell=bash

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else log "need root for: $*"; return 1
    fi
}

# Rust toolchain: rustup's, since distribution packages are too old for
# edition 2024.
ensure_rust() {
    command -v cargo >/dev/null 2>&1 && return 0
    [ -x "$HOME/.cargo/bin/cargo" ] && { export PATH="$HOME/.cargo/bin:$PATH"; return 0; }
    log "installing the Rust toolchain (rustup)"
    command -v curl >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq curl ca-certificates; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
}

# A C compiler for the crates that build C (the TLS library among them).
ensure_cc() {
    command -v cc >/dev/null 2>&1 && return 0
    log "installing a C toolchain"
    as_root apt-get update -qq && as_root apt-get install -y -qq build-essential
}

pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$dir" ]; then
        log "installing PostgreSQL"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    printf '%s\n' "$dir"
}

# Runs a PostgreSQL program as the owner of the data folder: Postgres refuses
# to run as root, so root runs it as the postgres user.
pg_run() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# pg_start NAME PORT [extra server options]
# Starts (initialising on first use) a private cluster on 127.0.0.1:PORT with
# trust authentication, and creates the database "intake". Prints its URL.
pg_start() {
    local name=$1 port=$2; shift 2
    local bin dir
    bin=$(pg_bindir)
    if [ "$(id -u)" -eq 0 ]; then
        # The postgres user must own the folder and reach it, so not below
        # a home directory that only root can enter.
        dir=${INTAKE_PG_DIR:-/var/lib/postgresql/intake-$name}
        mkdir -p "$dir" && chown postgres:postgres "$dir" && chmod 700 "$dir"
    else
        dir=${INTAKE_PG_DIR:-$PWD/.data/postgres-$name}
        mkdir -p "$dir" && chmod 700 "$dir"
    fi
    if [ ! -f "$dir/PG_VERSION" ]; then
        log "initialising the $name cluster in $dir"
        pg_run "$bin/initdb" -D "$dir" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
    fi
    if ! pg_run "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        log "starting the $name cluster on 127.0.0.1:$port"
        pg_run "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $*" >/dev/null
    fi
    local i
    for i in $(seq 1 60); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        sleep 0.5
    done
    if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'intake'" | grep -q 1; then
        "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE intake" >/dev/null
    fi
    printf 'postgres://postgres@127.0.0.1:%s/intake\n' "$port"
}

pg_stop() {
    local bin=$1 dir=$2
    pg_run "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

S3S_VERSION=0.14.1

# Installs the S3 test server when it is not there yet (about 5 minutes).
ensure_s3s_fs() {
    if command -v s3s-fs >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/s3s-fs" ]; then
        return 0
    fi
    log "installing s3s-fs $S3S_VERSION (the S3 test server; first time only)"
    cargo install "s3s-fs@$S3S_VERSION" --features binary --locked
}

# s3_start ROOT PORT ACCESS_KEY SECRET_KEY: runs s3s-fs in the background,
# waits for its port, sets S3_PID.
s3_start() {
    local root=$1 port=$2 access=$3 secret=$4
    mkdir -p "$root"
    local exe
    exe=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
    "$exe" --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" "$root" \
        >"$root.log" 2>&1 &
    S3_PID=$!
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! kill -0 "$S3_PID" 2>/dev/null; then log "s3s-fs exited:"; cat "$root.log" >&2; return 1; fi
        sleep 0.1
    done
    log "s3s-fs did not open port $port"; return 1
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || shuf -i 20000-60000 -n 1
}

# ---- Garage: a production S3 store, single node or a loopback cluster ----

GARAGE_VERSION=2.5.0

garage_exe() { command -v garage || echo "$HOME/.cargo/bin/garage"; }

# Installs Garage when the right version is not there yet (a long compile,
# once; GARAGE_BUILD_DIR keeps its build apart from the project's).
ensure_garage() {
    local exe
    exe=$(garage_exe)
    # Its version line reads "garage cargo:2.5.0 [features: …]" (or v2.5.0).
    if [ -x "$exe" ] && "$exe" --version 2>/dev/null | grep -Eq "[:v]$GARAGE_VERSION( |$)"; then
        return 0
    fi
    log "installing Garage $GARAGE_VERSION (a production S3 store; first time only, several minutes)"
    CARGO_TARGET_DIR=${GARAGE_BUILD_DIR:-$HOME/.cache/garage-build} \
        cargo install "garage@$GARAGE_VERSION" --locked
}

# N random bytes as hex.
rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# A Garage access key pair in Garage's own format: "GK" and 12 random bytes
# in hex for the id, 32 random bytes in hex for the secret. Prints "ID SECRET".
garage_keypair() { printf 'GK%s %s\n' "$(rand_hex 12)" "$(rand_hex 32)"; }

# garage_config DIR RF S3_PORT RPC_PORT ADMIN_PORT RPC_SECRET: writes
# DIR/garage.toml (sqlite metadata, everything on 127.0.0.1, region
# "garage"), readable by its owner only since it holds the RPC secret.
garage_config() {
    local dir=$1 rf=$2 s3=$3 rpc=$4 admin=$5 rpc_secret=$6
    mkdir -p "$dir/meta" "$dir/data"
    (umask 077; cat >"$dir/garage.toml") <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = $rf
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
}

# garage_wait_health ADMIN_PORT PID LOG: waits until the node answers
# /health with 200 (it sees a quorum for every partition).
garage_wait_health() {
    local admin=$1 pid=$2 logfile=$3 i
    for i in $(seq 1 300); do
        if python3 - "$admin" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
PY
        if ! kill -0 "$pid" 2>/dev/null; then log "garage exited:"; cat "$logfile" >&2; return 1; fi
        sleep 0.2
    done
    log "garage is not healthy on admin port $admin"; tail -n 30 "$logfile" >&2; return 1
}

# garage_start DIR ACCESS_KEY SECRET_KEY BUCKET: one node
# (`garage server --single-node --default-bucket`) with its data under DIR,
# the key and the bucket made at start. Sets GARAGE_PID and GARAGE_S3_PORT.
garage_start() {
    local dir=$1 access=$2 secret=$3 bucket=$4
    local rpc admin
    GARAGE_S3_PORT=$(free_port); rpc=$(free_port); admin=$(free_port)
    garage_config "$dir" 1 "$GARAGE_S3_PORT" "$rpc" "$admin" "$(rand_hex 32)"
    GARAGE_DEFAULT_ACCESS_KEY=$access GARAGE_DEFAULT_SECRET_KEY=$secret \
    GARAGE_DEFAULT_BUCKET=$bucket RUST_LOG=${GARAGE_LOG:-warn} \
        "$(garage_exe)" -c "$dir/garage.toml" server --single-node --default-bucket \
        >"$dir/garage.log" 2>&1 &
    GARAGE_PID=$!
    garage_wait_health "$admin" "$GARAGE_PID" "$dir/garage.log"
}

# garage_stop PID...: stops Garage processes started above.
garage_stop() {
    local pid
    for pid in "$@"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
}

# garage_node_start I: (re)starts node I of the cluster below, on the
# configuration and data it already has; sets GARAGE_CLUSTER_PIDS[I].
garage_node_start() {
    local i=$1 dir="${GARAGE_CLUSTER_DIRS[$1]}"
    RUST_LOG=${GARAGE_LOG:-warn} "$(garage_exe)" -c "$dir/garage.toml" server \
        >>"$dir/garage.log" 2>&1 &
    GARAGE_CLUSTER_PIDS[i]=$!
}

# garage_node_kill I: kills node I at once (SIGKILL, as when the host dies).
garage_node_kill() {
    local pid="${GARAGE_CLUSTER_PIDS[$1]:-}"
    [ -n "$pid" ] || return 0
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    GARAGE_CLUSTER_PIDS[$1]=
}

# garage_cluster_start ROOT ACCESS_KEY SECRET_KEY BUCKET [NODES]: a cluster
# of NODES (default 3) Garage nodes on 127.0.0.1 with replication factor 3,
# data under ROOT/node<i>. The script joins them (`garage node id`, `node
# connect`), assigns the layout (one zone per node, `layout assign`,
# `layout apply`), imports the key and makes the bucket. Sets the arrays
# GARAGE_CLUSTER_DIRS, GARAGE_CLUSTER_PIDS, GARAGE_CLUSTER_S3_PORTS and
# GARAGE_CLUSTER_ADMIN_PORTS, indexed from 0; every node serves the S3 API.
garage_cluster_start() {
    local root=$1 access=$2 secret=$3 bucket=$4 nodes=${5:-3}
    local rpc_secret i rpc ids=()
    rpc_secret=$(rand_hex 32)
    GARAGE_CLUSTER_DIRS=() GARAGE_CLUSTER_PIDS=() GARAGE_CLUSTER_S3_PORTS=() GARAGE_CLUSTER_ADMIN_PORTS=()
    for i in $(seq 0 $((nodes - 1))); do
        GARAGE_CLUSTER_DIRS[i]=$root/node$i
        GARAGE_CLUSTER_S3_PORTS[i]=$(free_port)
        GARAGE_CLUSTER_ADMIN_PORTS[i]=$(free_port)
        rpc=$(free_port)
        garage_config "${GARAGE_CLUSTER_DIRS[i]}" 3 "${GARAGE_CLUSTER_S3_PORTS[i]}" "$rpc" \
            "${GARAGE_CLUSTER_ADMIN_PORTS[i]}" "$rpc_secret" || return 1
        garage_node_start "$i"
    done
    for i in $(seq 0 $((nodes - 1))); do
        local n id=
        for n in $(seq 1 100); do
            id=$("$(garage_exe)" -c "${GARAGE_CLUSTER_DIRS[i]}/garage.toml" node id -q 2>/dev/null) && break
            kill -0 "${GARAGE_CLUSTER_PIDS[i]}" 2>/dev/null \
                || { log "garage node $i exited:"; cat "${GARAGE_CLUSTER_DIRS[i]}/garage.log" >&2; return 1; }
            sleep 0.2
        done
        [ -n "$id" ] || { log "garage node $i did not answer"; return 1; }
        ids[i]=$id
    done
    for i in $(seq 1 $((nodes - 1))); do
        garage_cluster_cli node connect "${ids[i]}" >/dev/null || return 1
    done
    for i in $(seq 0 $((nodes - 1))); do
        garage_cluster_cli layout assign -z "dc$i" -c 1G "${ids[i]%%@*}" >/dev/null || return 1
    done
    garage_cluster_cli layout apply --version 1 >/dev/null || return 1
    for i in $(seq 0 $((nodes - 1))); do
        garage_wait_health "${GARAGE_CLUSTER_ADMIN_PORTS[i]}" "${GARAGE_CLUSTER_PIDS[i]}" \
            "${GARAGE_CLUSTER_DIRS[i]}/garage.log" || return 1
    done
    garage_cluster_cli key import --yes -n intake "$access" "$secret" >/dev/null || return 1
    garage_cluster_cli bucket create "$bucket" >/dev/null || return 1
    garage_cluster_cli bucket allow --read --write "$bucket" --key "$access" >/dev/null || return 1
}

# garage_cluster_cli ARGS...: the garage command line against node 0.
garage_cluster_cli() { "$(garage_exe)" -c "${GARAGE_CLUSTER_DIRS[0]}/garage.toml" "$@"; }

# garage_cluster_stop: stops every node of the cluster.
garage_cluster_stop() {
    garage_stop "${GARAGE_CLUSTER_PIDS[@]}"
    GARAGE_CLUSTER_PIDS=()
}

# bench_database PREFIX: a schema of its own (PREFIX_<time>) on the bench
# cluster, started when needed, for one benchmark run. Exports DATABASE_URL
# and the secrets intake needs; sets DB_URL, PG_BIN and SCHEMA, which
# bench_database_drop (for the run's exit trap) uses.
bench_database() {
    DB_URL=$(pg_start bench "${INTAKE_BENCH_PG_PORT:-54331}")
    PG_BIN=$(pg_bindir)
    SCHEMA=${1}_$(date +%s)
    "$PG_BIN/psql" "$DB_URL" -qc "CREATE SCHEMA $SCHEMA"
    export DATABASE_URL="$DB_URL?options=-c%20search_path%3D$SCHEMA"
    export JWT_SECRET=bench-secret-0123456789abcdefghijklmnopqrstuvwxyz
    export ADMIN_TOKEN=bench-admin-token-0123456789abcdefghij
}

# bench_database_drop: drops the schema bench_database made.
bench_database_drop() {
    if [ -n "${SCHEMA:-}" ]; then
        "$PG_BIN/psql" "$DB_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    fi
}

# bench_build [cargo build arguments]: release builds of the bench tool
# (examples/bench) and, unless INTAKE_BIN names another binary, of intake;
# sets BENCH (the tool) and exports INTAKE_BIN.
bench_build() {
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/intake-target}
    local intake=()
    [ -n "${INTAKE_BIN:-}" ] || intake=(--bin intake)
    cargo build --quiet --release --locked --example bench "${intake[@]}" "$@"
    export INTAKE_BIN=${INTAKE_BIN:-$CARGO_TARGET_DIR/release/intake}
    BENCH=$CARGO_TARGET_DIR/release/examples/bench
}

# ensure_wrk: the HTTP load generator of the request benches.
ensure_wrk() {
    command -v wrk >/dev/null 2>&1 || { as_root apt-get update -qq && as_root apt-get install -y -qq wrk; }
}

# tus_reference_install DIR: the tus reference server (@tus/server and
# @tus/s3-store from npm) in DIR, installed once per folder, with the bench's
# server script beside its node_modules (ES module imports resolve from the
# script's place); exports TUS_NODE_DIR.
tus_reference_install() {
    local dir=$1 pkg
    mkdir -p "$dir"
    if [ ! -f "$dir/node_modules/@tus/s3-store/package.json" ] || [ ! -f "$dir/node_modules/@tus/server/package.json" ]; then
        log "installing @tus/server and @tus/s3-store into $dir"
        ( cd "$dir" && { [ -f package.json ] || echo '{"private":true}' >package.json; } \
            && npm install --no-audit --no-fund --loglevel=error '@tus/server@^2' '@tus/s3-store@^2' ) >&2
    fi
    cp scripts/bench/tus/server.mjs "$dir/"
    for pkg in @tus/server @tus/s3-store @tus/utils @aws-sdk/client-s3; do
        echo "$pkg $(node -p "require('$dir/node_modules/$pkg/package.json').version")" >&2
    done
    export TUS_NODE_DIR=$dir
}
