-- wrk script for bench/ingress.py: a signed GitHub push whose body is new on every
-- request, a distinct delivery id per request, and a count of the answers that are not
-- what the variant should give.
--
--   wrk -t2 -c32 -d15s -s bench/wrk_github.lua URL -- BODY_FILE SECRET_FILE RUN_TAG EXPECTED
--
-- palyra dedupes GitHub deliveries on the signed content as well as on X-GitHub-Delivery
-- (the id is not signed), so one body re-sent under new ids would measure the duplicate
-- path. Each request therefore ends the push body with its own `"zz_bench":"<id>"` member
-- and is signed here: HMAC-SHA256 (FIPS 180-4, RFC 2104) resumed from the state after the
-- fixed 64-byte blocks of the body, so a request costs three compressions, not a hundred.
-- The id looks like GitHub's GUIDs: RUN_TAG (8 hex chars, new for every wrk run so that no
-- run replays another's ids or bodies), the thread number, then the thread's counter. The
-- secret is read from a file so that it never shows on a command line.
--
-- Several servers (bench/pg_ingress.py, a cluster's nodes): BENCH_ADDRS in the environment,
-- "host:port host:port ...", gives thread i (from 1) the address i modulo their count, so
-- with as many threads as servers (or a multiple) each server gets the same connections.
-- The URL on the command line still gives the path and the Host header.
--
-- done() prints one line "BENCH_RESULT {json}" that bench/ingress.py parses; latencies are
-- in microseconds, as wrk keeps them.

local bit = require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local ror, rshift, tobit, tohex = bit.ror, bit.rshift, bit.tobit, bit.tohex
local byte, char, sub = string.byte, string.char, string.sub

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
  0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
  0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
  0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
  0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
  0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
  0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
  0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
}
for i = 1, 64 do K[i] = tobit(K[i]) end
local H0 = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
for i = 1, 8 do H0[i] = tobit(H0[i]) end

local w = {}

-- Fold the 64-byte block of `s` starting at `at` into state `h` (a table of 8 words).
local function compress(h, s, at)
  for i = 0, 15 do
    local a, b, c, d = byte(s, at + 4 * i, at + 4 * i + 3)
    w[i] = bor(bit.lshift(a, 24), bit.lshift(b, 16), bit.lshift(c, 8), d)
  end
  for i = 16, 63 do
    local x, y = w[i - 15], w[i - 2]
    local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
    local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
    w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
  end
  local a, b, c, d, e, f, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
  for i = 0, 63 do
    local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
    local ch = bxor(band(e, f), band(bnot(e), g))
    local t1 = tobit(hh + S1 + ch + K[i + 1] + w[i])
    local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
    local maj = bxor(band(a, b), band(a, c), band(b, c))
    local t2 = tobit(S0 + maj)
    hh, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
  end
  h[1], h[2], h[3], h[4] = tobit(h[1] + a), tobit(h[2] + b), tobit(h[3] + c), tobit(h[4] + d)
  h[5], h[6], h[7], h[8] = tobit(h[5] + e), tobit(h[6] + f), tobit(h[7] + g), tobit(h[8] + hh)
end

local function copy(h) return { h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8] } end

-- Finish a hash whose state `h` holds `done` bytes already; `tail` is the rest (any length).
local function finish(h, done, tail)
  local bits = (done + #tail) * 8
  local pad = (55 - (done + #tail)) % 64
  -- The length's upper four bytes stay 0: bodies here are far below 512 MiB.
  local msg = tail .. "\128" .. string.rep("\0", pad) .. "\0\0\0\0"
      .. char(band(rshift(bits, 24), 255), band(rshift(bits, 16), 255),
              band(rshift(bits, 8), 255), band(bits, 255))
  for at = 1, #msg, 64 do compress(h, msg, at) end
  return h
end

local function words_to_bytes(h)
  local out = {}
  for i = 1, 8 do
    local x = h[i]
    out[i] = char(band(rshift(x, 24), 255), band(rshift(x, 16), 255),
                  band(rshift(x, 8), 255), band(x, 255))
  end
  return table.concat(out)
end

local function hex(h)
  local out = {}
  for i = 1, 8 do out[i] = tohex(h[i], 8) end
  return table.concat(out)
end

local function xor_block(key, pad)
  local out = {}
  for i = 1, 64 do out[i] = char(bxor(byte(key, i) or 0, pad)) end
  return table.concat(out)
end

local threads = {}
local addrs = {}
for hostport in string.gmatch(os.getenv("BENCH_ADDRS") or "", "%S+") do
  local host, port = string.match(hostport, "^(.+):(%d+)$")
  assert(host, "BENCH_ADDRS: host:port expected, got " .. hostport)
  table.insert(addrs, wrk.lookup(host, port)[1])
end

function setup(thread)
  if #addrs > 0 then
    thread.addr = addrs[#threads % #addrs + 1]
  end
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
  local key = read_file(args[2])
  assert(#key <= 64, "secrets longer than a block are not supported here")
  assert(sub(body, -1) == "}", "the body must be one JSON object")
  -- Everything before the request's own id: the push, then the opening of one more member.
  head = sub(body, 1, -2) .. ',"zz_bench":"'
  local whole = #head - #head % 64
  inner = copy(H0)
  compress(inner, xor_block(key, 0x36), 1)
  for at = 1, whole, 64 do compress(inner, head, at) end
  inner_done, head_rest = 64 + whole, sub(head, whole + 1)
  outer = copy(H0)
  compress(outer, xor_block(key, 0x5c), 1)
  expected = tonumber(args[4])
  prefix = string.format("%s-%04x-4000-8000-", args[3], tid)
  sent = 0
  non2xx = 0
  unexpected = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
  wrk.headers["X-GitHub-Event"] = "push"
  wrk.headers["X-GitHub-Hook-ID"] = "123456789"
end

function request()
  sent = sent + 1
  local id = prefix .. string.format("%012x", sent)
  local tail = id .. '"}'
  local digest = words_to_bytes(finish(copy(inner), inner_done, head_rest .. tail))
  wrk.headers["X-GitHub-Delivery"] = id
  wrk.headers["X-Hub-Signature-256"] = "sha256=" .. hex(finish(copy(outer), 64, digest))
  return wrk.format(nil, nil, nil, head .. tail)
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
