-- wrk request script of the limiter bench: GET /me with each API key of the
-- file $BENCH_KEYS_FILE (one a line) in turn, so that every request is
-- another account's.
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS_FILE")) do keys[#keys + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/me", { ["Authorization"] = "Bearer " .. keys[(i % #keys) + 1] })
end
