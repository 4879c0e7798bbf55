-- wrk script: POST distinct payment events to the hub's webhook intake with an API key.
-- Usage: wrk -t2 -c64 -d15s --latency -s scripts/load/ingest.lua http://127.0.0.1:8080/v1/ingest/payments
-- Env: LOAD_API_KEY (default "load-test-key-0123456789").
local counter = 0
local tag = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
local key = os.getenv("LOAD_API_KEY") or "load-test-key-0123456789"

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1000000000)))
end

function request()
  counter = counter + 1
  local id = "evt_load_" .. tag .. "_" .. tid .. "_" .. counter
  local body = '{"id":"' .. id .. '","object":"event","type":"payment.succeeded","created":"2026-11-20T13:05:42Z",'
    .. '"livemode":false,"data":{"payment":{"id":"pay_' .. id .. '","amount":"123.45","currency":"eur",'
    .. '"customer":"cus_load","description":null,"captured_at":"2026-11-20T14:05:41.873+01:00","metadata":{}}}}'
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json", ["X-Api-Key"] = key }, body)
end

function done(summary, latency, requests)
  local ok = summary.requests - summary.errors.status - summary.errors.connect - summary.errors.read
    - summary.errors.write - summary.errors.timeout
  io.write(string.format("accepted (2xx): %d of %d in %.2f s = %.0f req/s; latency p50 %.2f ms p99 %.2f ms\n",
    ok, summary.requests, summary.duration / 1e6, ok / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
