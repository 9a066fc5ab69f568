-- wrk script: POST a 100-byte body to /publish/<channel>, the channel round-robin
-- over CHANNELS (env, default 1), each connection starting at another channel.
-- Used by bench/publish_bench.py for the gateway and Nchan alike.
local channels = tonumber(os.getenv("CHANNELS") or "1")
local body = string.rep("x", 100)
local counter = 0

function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end

function init(args)
  n = offset or 0
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "text/plain; charset=utf-8"
end

function request()
  n = n + 1
  return wrk.format(nil, "/publish/bench-" .. (n % channels))
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d errors_status=%d errors_connect=%d errors_read=%d errors_write=%d errors_timeout=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
