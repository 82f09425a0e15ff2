-- wrk script for bench/ingress.py: one signed GitHub push body, a distinct delivery id per
-- request, and a count of the answers that are not what the variant should give.
--
--   wrk -t2 -c32 -d15s -s bench/wrk_github.lua URL -- BODY_FILE SIG_FILE RUN_TAG EXPECTED
--
-- GitHub's HMAC (X-Hub-Signature-256) covers only the body, so one body and one signature
-- serve every request; only X-GitHub-Delivery changes. The id looks like GitHub's GUIDs:
-- RUN_TAG (8 hex chars, new for every wrk run so that no run replays another's ids), the
-- thread number, then the thread's own counter. The signature is read from a file so that
-- it never shows on a command line.
--
-- done() prints one line "BENCH_RESULT {json}" that bench/ingress.py parses; latencies are
-- in microseconds, as wrk keeps them.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  local body = read_file(args[1])
  local signature = read_file(args[2]):gsub("%s+$", "")
  expected = tonumber(args[4])
  prefix = string.format("%s-%04x-4000-8000-", args[3], tid)
  sent = 0
  non2xx = 0
  unexpected = 0
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
  wrk.headers["X-GitHub-Event"] = "push"
  wrk.headers["X-GitHub-Hook-ID"] = "123456789"
  wrk.headers["X-Hub-Signature-256"] = signature
end

function request()
  sent = sent + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. string.format("%012x", sent)
  return wrk.format()
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  if status ~= expected then
    unexpected = unexpected + 1
  end
end

function done(summary, latency, requests)
  local total_non2xx, total_unexpected, total_sent = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + thread:get("non2xx")
    total_unexpected = total_unexpected + thread:get("unexpected")
    total_sent = total_sent + thread:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"sent":%d,' ..
    '"non2xx":%d,"unexpected":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,' ..
    '"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, total_sent,
    total_non2xx, total_unexpected, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
