-- Load script for bench.webhooks: every request is one of a pool of pre-built raw HTTP
-- requests (signed Twilio webhooks, each a new CallSid), written by bench/webhooks.py into
-- one file per wrk thread (records separated by "\0"). Nothing is computed per request.
-- Usage: wrk -t N -c C -d S -s bench/webhooks_wrk.lua URL -- POOL_PREFIX
local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(args[1] .. "." .. id, "rb"))
   local data = f:read("*a")
   f:close()
   pool = {}
   local pos = 1
   while true do
      local s, e = string.find(data, "\0", pos, true)
      if not s then break end
      pool[#pool + 1] = string.sub(data, pos, s - 1)
      pos = e + 1
   end
   n = #pool
   i = 0
   wraps = 0
end

function request()
   i = i + 1
   if i > n then
      i = 1
      wraps = wraps + 1
   end
   return pool[i]
end

function done(summary, latency, requests)
   local sent, wrapped = 0, 0
   for _, t in ipairs(threads) do
      sent = sent + t:get("n") * t:get("wraps") + t:get("i")
      wrapped = wrapped + t:get("wraps")
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, ' ..
      '"timeouts": %d, "sent": %d, "pool_wraps": %d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout, sent, wrapped))
end
