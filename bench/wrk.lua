-- wrk script for the authmount benchmark.
-- Usage: wrk ... -s bench/wrk.lua URL -- METHOD BODY_FILE [TOKEN_FILE [HEADERS_FILE]]
--   BODY_FILE: request body ("-" for none); TOKEN_FILE: sent as X-Vault-Token ("-" for none);
--   HEADERS_FILE: more headers, one "Name: value" per line (inline authentication's).
-- done() prints one JSON line prefixed with "BENCH_JSON " for bench/run.py to parse.

local function slurp(path)
  if path == nil or path == "-" then return nil end
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return (data:gsub("%s+$", ""))
end

function init(args)
  local method = args[1] or "GET"
  local body = slurp(args[2])
  local token = slurp(args[3])
  local headers = {}
  if body ~= nil then headers["Content-Type"] = "application/json" end
  if token ~= nil then headers["X-Vault-Token"] = token end
  local more = slurp(args[4])
  if more ~= nil then
    for line in more:gmatch("[^\n]+") do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      headers[name] = value
    end
  end
  -- Pre-format the request once: every request is byte-identical, so the client side is cheap.
  req = wrk.format(method, nil, headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
