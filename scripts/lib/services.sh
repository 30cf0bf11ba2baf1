# Shared by scripts/run.sh and scripts/test.sh: start the Postgres cluster
# and the S3 test server that intake needs, installing what is missing.
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
