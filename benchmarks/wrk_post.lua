-- wrk script: POST the body in $WRK_BODY_FILE (JSON unless $WRK_CONTENT_TYPE says otherwise), then print one machine-readable
-- line with throughput, errors and latency percentiles (wrk measures latency in microseconds).
local path = os.getenv("WRK_BODY_FILE")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
-- One more header, "Name: value" (the V2 binary extension's Inference-Header-Content-Length).
local extra = os.getenv("WRK_HEADER")
if extra then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

-- 503s (the service shedding load, or batching refusing a request) counted apart.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) refused = 0 end
function response(status, headers, body) if status == 503 then refused = refused + 1 end end

function done(summary, latency, requests)
  local e = summary.errors
  local n503 = 0
  for _, t in ipairs(threads) do n503 = n503 + (t:get("refused") or 0) end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, '
      .. '"status_503": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, n503))
end
