-- wrk script for benchmarks/proxy_overhead.py --layout isolated: the same requests as the
-- Python load generator (a unique user turn each, every 4th `stream: true`), and one JSON
-- line of results that the benchmark parses.
local counter = 0
local tag = os.getenv("BENCH_TAG") or "wrk"
local headers = {
  ["content-type"] = "application/json",
  ["authorization"] = "Bearer sk-bench",
}

request = function()
  counter = counter + 1
  local stream = ""
  if counter % 4 == 0 then stream = ',"stream":true' end
  local body = '{"model":"gpt-4o-mini","max_tokens":8,"messages":[{"role":"user","content":"'
    .. tag .. ' request ' .. counter .. '"}]' .. stream .. '}'
  -- the teacher draws this request's delay from its number: every arm waits the same delays
  headers["x-bench-seq"] = tostring(counter)
  return wrk.format("POST", nil, headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
