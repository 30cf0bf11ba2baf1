-- wrk request script of the replay bench: the same POST /upload/stream with
-- the same Idempotency-Key on every request ($BENCH_KEY, $BENCH_IDEMPOTENCY_KEY,
-- $BENCH_CONTENT_TYPE, the body from $BENCH_BODY_FILE), so that every answer
-- is the replay of the first upload's.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.headers["Idempotency-Key"] = os.getenv("BENCH_IDEMPOTENCY_KEY")
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
