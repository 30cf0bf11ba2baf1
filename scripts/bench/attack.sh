#!/usr/bin/env bash
# What one account's attacks cost the server, for one intake build: each
# case starts an intake of its own and reports what it holds (its sockets,
# from /proc), its memory, provider calls billed against units counted,
# bytes left in the bucket, accounts created, storage traffic, and whether
# another account is still served meanwhile.
#
#   trickle    1,000 POST /chat of one session, a byte every 5 s, 30 s
#              (MAX_CONNECTIONS=1000)
#   downloads  200 downloads of a 16 MiB file never read, 30 s
#              (RESPONSE_WRITE_TIMEOUT_SECS=5)
#   ai         20 describes hung up once the provider has them
#   presign    20 rounds of presign, abort, PUT 16 MiB to the URL (S3)
#   signup     4 sign-ups a second from one address for 60 s
#   buffers    40 chunked uploads on S3 sending 6 MiB, then a byte every 5 s
#              (UPLOAD_BUFFER_BUDGET_BYTES of 64 MiB)
#   tus        20 one-byte PATCHes of a resumable upload with a 6 MiB tail,
#              the storage traffic counted by a relay (S3)
#
#   scripts/bench/attack.sh                      every case, this tree's build
#   INTAKE_BIN=path scripts/bench/attack.sh      another build, to compare
#   ATTACKS=trickle,ai scripts/bench/attack.sh   some of the cases
#
# The sizes, counts and durations are settings of `bench attack --help`
# (TRICKLE_CONNECTIONS, ATTACK_SECS, DOWNLOADS, AI_ROUNDS, ...). This script
# installs s3s-fs, starts Postgres and s3s-fs, and raises the open-file
# limit; the stand-in AI provider (scripts/lib/ai-standin.py, slow and
# counting the calls it receives), the intakes, accounts, attacks and
# figures are `bench attack` (examples/bench/attack/). KEEP_WORK=1 keeps the
# servers' logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/services.sh

ensure_rust
ensure_s3s_fs
bench_build

# A socket per connection on both sides: the attack and the server each
# need more than the usual 1,024 descriptors.
ulimit -n "$(ulimit -Hn)"

bench_database bench_attack
export BENCH_WORK=$(mktemp -d)
S3_PORT=$(free_port)
S3_PID=
cleanup() {
    [ -n "$S3_PID" ] && kill "$S3_PID" 2>/dev/null || true
    bench_database_drop
    [ -n "${KEEP_WORK:-}" ] && log "kept $BENCH_WORK" || rm -rf "$BENCH_WORK"
}
trap cleanup EXIT
s3_start "$BENCH_WORK/s3" "$S3_PORT" bench-key bench-secret

export LOG_FORMAT=json RUST_LOG=warn S3_REGION=us-east-1
export S3_ENDPOINT=http://127.0.0.1:$S3_PORT S3_BUCKET=bench S3_ACCESS_KEY_ID=bench-key S3_SECRET_ACCESS_KEY=bench-secret
"$BENCH" attack
