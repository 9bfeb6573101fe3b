-- The ACD's atomic operations. Everything above the first "--@ name" line is shared by
-- every script; each "--@ name" section is one script, run with EVALSHA in one round trip.
--
-- ARGV[1] is one tab-separated string (one argument is much cheaper for clients to send than
-- twenty): key prefix, ring timeout (s), callback ring timeout (s), queue-log max length, now
-- (s, the ACD's clock), then the script's own arguments from position A = 6.
-- Reply: one tab-separated string "status, info, offers..." with 5 fields per offer (call,
-- agent, kind, n, skill) — likewise cheaper to read than a list.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function split_tabs(s)
  local out, i = {}, 1
  while true do
    local j = string.find(s, '\t', i, true)
    if not j then
      out[#out + 1] = string.sub(s, i)
      return out
    end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local ARGV = split_tabs(ARGV[1])
local P, LOGMAX, NOW_S = ARGV[1], ARGV[4], ARGV[5]
local RING_S, CB_RING_S = tonumber(ARGV[2]), tonumber(ARGV[3])
local NOW = tonumber(NOW_S)
local A = 6
--KEYS--

-- an ended call's hash is kept this long (late surveys and status callbacks, the agent's last
-- call), then Redis drops it: KPIs come from the queue log, the call's story from its ticket
local ENDED_KEEP_S = 2 * 86400
local function fmt(n) return string.format('%.0f', n) end
local function secs(n) return string.format('%.3f', n) end
local function now_ms() return math.floor(NOW * 1000) end
local function hget(key, f)
  local v = redis.call('HGET', key, f)
  if v == false then return nil end
  return v
end
local function split(s)
  local out = {}
  if s then for item in string.gmatch(s, '[^,]+') do out[#out + 1] = item end end
  return out
end
local function log(ev, ...)
  redis.call('XADD', k_log(), 'MAXLEN', '~', LOGMAX, '*', 'e', ev, 't', NOW_S, ...)
end
local function reply(status, info, offers)
  local out = {status, info or ''}
  for _, o in ipairs(offers or {}) do
    for _, v in ipairs(o) do out[#out + 1] = v end
  end
  return table.concat(out, '\t')
end
local function add(list, offer) if offer then list[#list + 1] = offer end end

-- agents ------------------------------------------------------------------------------------
local function agent_skills(a) return redis.call('HGETALL', k_agent_skills(a)) end

local function agent_enter_ready(a, idle_ms)
  local sk = agent_skills(a)
  for i = 1, #sk, 2 do
    redis.call('ZADD', k_ready(sk[i]), fmt((100 - tonumber(sk[i + 1])) * 1e13 + tonumber(idle_ms)), a)
  end
end
local function agent_leave_ready(a)
  local sk = agent_skills(a)
  for i = 1, #sk, 2 do redis.call('ZREM', k_ready(sk[i]), a) end
end
local function agent_state(a, state, reason, call)
  redis.call('HSET', k_agent(a), 'state', state, 'reason', reason or '', 'since', NOW_S, 'call', call or '')
end
local function agent_log(a, state, reason)
  log('agent', 'agent', a, 'state', state, 'reason', reason or '')
end
local function end_wrapup(a)
  local f = redis.call('HMGET', k_agent(a), 'since', 'last_talk', 'last_skill', 'call', 'last_line')
  local wrap = NOW - tonumber(f[1] or NOW_S)
  local skill = f[3] or ''
  redis.call('ZREM', k_wrapping(), a)
  if skill ~= '' then
    redis.call('LPUSH', k_handle(skill), secs(tonumber(f[2] or '0') + wrap))
    redis.call('LTRIM', k_handle(skill), 0, 49)
  end
  log('wrapup', 'agent', a, 'call', f[4] or '', 'skill', skill, 'line', f[5] or '', 'wrap', secs(wrap))
end
local function agent_offline(a, reason)
  local sk = agent_skills(a)
  for i = 1, #sk, 2 do
    redis.call('ZREM', k_ready(sk[i]), a)
    redis.call('SREM', k_staffed(sk[i]), a)
  end
  redis.call('ZREM', k_beats(), a)
  redis.call('ZREM', k_wrapping(), a)
  redis.call('HSET', k_agent(a), 'logout_after', '')
  agent_state(a, 'offline', reason, '')
  agent_log(a, 'offline', reason)
end

-- calls -------------------------------------------------------------------------------------
local function call_join(c, skill, score)
  redis.call('ZADD', k_queue(skill), score, c)
  redis.call('ZADD', k_age(skill), NOW_S, c)
end
-- a live caller (new) in line: the clock of their front-end's sign of life starts (see lost)
local function call_seen(c)
  if hget(k_call(c), 'kind') == 'live' then redis.call('ZADD', k_seen(), NOW_S, c) end
end
-- back to its own place (same score) in every queue it belongs to. Not a sign of life: a ring
-- nobody answered says nothing of the caller (a ghost whose front-end died is offered, not rung,
-- and returned again and again), so the clock of acd:seen runs on
local function call_rejoin(c)
  local ck = k_call(c)
  local score = hget(ck, 'score')
  for _, s in ipairs(split(hget(ck, 'queues'))) do redis.call('ZADD', k_queue(s), score, c) end
end
local function call_leave_queues(c)
  for _, s in ipairs(split(hget(k_call(c), 'queues'))) do redis.call('ZREM', k_queue(s), c) end
end
-- out of every queue and index for good (connected, abandoned, failed)
local function call_forget(c)
  for _, s in ipairs(split(hget(k_call(c), 'queues'))) do
    redis.call('ZREM', k_queue(s), c)
    redis.call('ZREM', k_age(s), c)
  end
  redis.call('ZREM', k_ringing(), c)
  redis.call('ZREM', k_retry(), c)
  redis.call('ZREM', k_seen(), c)
end
local function clear_pending_callback(c)
  local key = hget(k_call(c), 'caller_key') or ''
  if key ~= '' and redis.call('GET', k_cb_by_caller(key)) == c then redis.call('DEL', k_cb_by_caller(key)) end
end
local function mark_pending_callback(c)
  local key = hget(k_call(c), 'caller_key') or ''
  if key ~= '' then redis.call('SET', k_cb_by_caller(key), c, 'EX', 7 * 86400) end
end
-- the caller of a waiting call is to be called back (漏接回拨 / 预约回拨): its place is kept
local function make_callback(c, reason)
  local ck = k_call(c)
  redis.call('HSET', ck, 'kind', 'callback')
  log('callback', 'call', c, 'skill', hget(ck, 'skill') or '', 'line', hget(ck, 'line') or '', 'reason', reason)
  mark_pending_callback(c)
end
-- a caller gone for good before reaching a seat
local function end_abandoned(c)
  local ck = k_call(c)
  call_forget(c)
  redis.call('HSET', ck, 'state', 'abandoned', 'ended', NOW_S, 'agent', '')
  redis.call('EXPIRE', ck, ENDED_KEEP_S)  -- an ended call's record is kept 2 days
end

-- assignment: a call to exactly one agent, an agent to exactly one call --------------------
-- ``sk``: the agent's skills when already read; ``unready``: the agent is in no ready set;
-- ``new``: {kind, line} of a call being enqueued right now, in no queue yet and never offered
local function offer(c, a, skill, sk, unready, new)
  local ck = k_call(c)
  local f
  if new then
    f = {new[1], new[2], nil, '0'}
  else
    f = redis.call('HMGET', ck, 'kind', 'line', 'queues', 'offers')
    for _, s in ipairs(split(f[3])) do redis.call('ZREM', k_queue(s), c) end
  end
  local kind, line = f[1], f[2] or ''
  if not unready then
    sk = sk or agent_skills(a)
    for i = 1, #sk, 2 do redis.call('ZREM', k_ready(sk[i]), a) end
  end
  local n = tostring((tonumber(f[4]) or 0) + 1)
  if not new then
    redis.call('HSET', ck, 'state', 'ringing', 'agent', a, 'offered', NOW_S, 'oskill', skill, 'offers', n)
  end
  agent_state(a, 'ringing', '', c)
  local timeout = RING_S
  if kind == 'callback' then timeout = CB_RING_S end
  redis.call('ZADD', k_ringing(), secs(NOW + timeout), c)
  log('offer', 'call', c, 'agent', a, 'skill', skill, 'line', line, 'kind', kind, 'n', n)
  redis.call('PUBLISH', k_offers(), c .. ' ' .. a .. ' ' .. kind .. ' ' .. n .. ' ' .. skill)
  return {c, a, kind, n, skill}
end

-- the head of one skill's queue with that skill's best ready agent
local function try_assign_skill(skill)
  for _ = 1, 100 do
    local c = redis.call('ZRANGE', k_queue(skill), 0, 0)[1]
    if not c then return nil end
    local a = redis.call('ZRANGE', k_ready(skill), 0, 0)[1]
    if not a then return nil end
    if hget(k_call(c), 'state') ~= 'waiting' then
      redis.call('ZREM', k_queue(skill), c)
    elseif hget(k_agent(a), 'state') ~= 'ready' then
      redis.call('ZREM', k_ready(skill), a)
    else
      return offer(c, a, skill)
    end
  end
end

-- a newly ready agent takes the best head (priority, then longest wait) among its skills
-- ``fresh``: the caller just made the agent ready and has not put it in the ready sets
local function try_assign_agent(a, fresh, sk)
  if not fresh and hget(k_agent(a), 'state') ~= 'ready' then return nil end
  sk = sk or agent_skills(a)
  for _ = 1, 100 do
    local best, best_score, best_skill
    for i = 1, #sk, 2 do
      local h = redis.call('ZRANGE', k_queue(sk[i]), 0, 0, 'WITHSCORES')
      if h[1] and (best == nil or tonumber(h[2]) < best_score) then
        best, best_score, best_skill = h[1], tonumber(h[2]), sk[i]
      end
    end
    if not best then return nil end
    if hget(k_call(best), 'state') ~= 'waiting' then
      redis.call('ZREM', k_queue(best_skill), best)
    else
      return offer(best, a, best_skill, sk, fresh)
    end
  end
end

local function try_assign_call(c)
  for _, s in ipairs(split(hget(k_call(c), 'queues'))) do
    local r = try_assign_skill(s)
    if r then return r end
  end
end

-- the first group of the chain with a seat logged in; warn the supervisor about the others
local function warn_unstaffed(s, c)
  log('warn', 'skill', s, 'call', c, 'reason', 'unstaffed')
  if redis.call('SET', k_alert_lock(s), '1', 'NX', 'EX', 60) then
    redis.call('XADD', k_alerts(), 'MAXLEN', '~', 10000, '*', 't', NOW_S, 'alert', 'unstaffed', 'skill', s, 'call', c)
  end
end
local function choose(chain, unstaffed, c)
  if unstaffed == 'park' then return chain[1], false, true end  -- closed group: callback at once
  for i, s in ipairs(chain) do
    if redis.call('SCARD', k_staffed(s)) > 0 then return s, i > 1, false end
    warn_unstaffed(s, c)
  end
  if unstaffed == 'callback' then return chain[1], false, true end
  return chain[#chain], #chain > 1, false
end

-- a ringing call goes back to its own place (the head, for the call that was first) ---------
local function return_call(c, a, reason)
  local ck = k_call(c)
  redis.call('HSET', ck, 'state', 'waiting', 'agent', '')
  redis.call('ZREM', k_ringing(), c)
  call_rejoin(c)
  -- its sign-of-life clock runs on; only a live call missing from the index (dropped while
  -- ringing by the sweep of an older version) starts one, so that it cannot haunt the queue
  if hget(ck, 'kind') == 'live' then redis.call('ZADD', k_seen(), 'NX', NOW_S, c) end
  log('noanswer', 'call', c, 'agent', a, 'reason', reason, 'skill', hget(ck, 'oskill') or '',
      'line', hget(ck, 'line') or '', 'kind', hget(ck, 'kind') or '')
  return try_assign_call(c)
end

--@ enqueue
-- call, score, entered, line, caller, masked, prio, ticket, kind, unstaffed, caller_key, asked, chain...
local c, score = ARGV[A], ARGV[A + 1]
local line, caller, masked, prio = ARGV[A + 3], ARGV[A + 4], ARGV[A + 5], ARGV[A + 6]
local ticket, kind, unstaffed, caller_key, asked = ARGV[A + 7], ARGV[A + 8], ARGV[A + 9], ARGV[A + 10], ARGV[A + 11]
local chain = {}
for i = A + 12, #ARGV do chain[#chain + 1] = ARGV[i] end
local ck = k_call(c)
if redis.call('EXISTS', ck) == 1 then
  -- a call that left the queue on purpose comes back (an emergency transfer that failed):
  -- it enters again as new; anything else is already known
  if hget(ck, 'state') ~= 'left' then return reply('exists', hget(ck, 'state')) end
  redis.call('DEL', ck)
end
local resumed = ''
if kind == 'live' and caller_key ~= '' then
  -- a caller with a pending callback rings again: the new call takes the callback's place
  local prev = redis.call('GET', k_cb_by_caller(caller_key))
  if prev and hget(k_call(prev), 'state') == 'waiting' then
    local prev_score = hget(k_call(prev), 'score')
    if tonumber(prev_score) < tonumber(score) then score = prev_score end
    call_forget(prev)
    redis.call('HSET', k_call(prev), 'state', 'resumed', 'ended', NOW_S, 'by', c)
    redis.call('EXPIRE', k_call(prev), ENDED_KEEP_S)  -- an ended call's record is kept 2 days
    redis.call('DEL', k_cb_by_caller(caller_key))
    log('resume', 'call', c, 'prev', prev, 'line', line)
    resumed = prev
  end
end
-- a ready seat in the asked-for group also proves it is staffed (no need to count seats)
local seat = redis.call('ZRANGE', k_ready(chain[1]), 0, 0)[1]
local skill, overflowed, parked = chain[1], false, unstaffed == 'park'
if not seat and not parked then
  skill, overflowed, parked = choose(chain, unstaffed, c)
  if skill ~= chain[1] then seat = redis.call('ZRANGE', k_ready(skill), 0, 0)[1] end
end
if parked then kind = 'callback' end
-- fast path: a seat is ready and nobody waits ahead: offer without passing through the queue
local nobody_ready = not seat
if seat then
  local head = redis.call('ZRANGE', k_queue(skill), 0, 0, 'WITHSCORES')
  if (head[1] and tonumber(head[2]) <= tonumber(score)) or hget(k_agent(seat), 'state') ~= 'ready' then
    seat = nil
  end
end
if seat then  -- written once, already offered (offer() below skips its own write)
  redis.call('HSET', ck, 'id', c, 'line', line, 'caller', caller, 'masked', masked, 'prio', prio, 'ticket', ticket,
             'kind', kind, 'skill', skill, 'queues', skill, 'score', score, 'entered', ARGV[A + 2],
             'state', 'ringing', 'agent', seat, 'offered', NOW_S, 'oskill', skill, 'offers', 1, 'attempts', 0,
             'asked', asked, 'caller_key', caller_key, 'resumed', resumed)
else
  redis.call('HSET', ck, 'id', c, 'line', line, 'caller', caller, 'masked', masked, 'prio', prio, 'ticket', ticket,
             'kind', kind, 'skill', skill, 'queues', skill, 'score', score, 'entered', ARGV[A + 2],
             'state', 'waiting', 'offers', 0, 'attempts', 0, 'asked', asked, 'caller_key', caller_key,
             'resumed', resumed)
end
redis.call('ZADD', k_age(skill), NOW_S, c)
if overflowed then
  -- sent on because nobody was logged in where it asked: it waits there too (as after an
  -- overflow on time), so a seat of that group logging in later is offered it
  local queues = {}
  for _, s in ipairs(chain) do
    queues[#queues + 1] = s
    if s == skill then break end
  end
  redis.call('HSET', ck, 'queues', table.concat(queues, ','))
  if not seat then
    for _, s in ipairs(queues) do redis.call('ZADD', k_queue(s), score, c) end
  end
elseif not seat then
  redis.call('ZADD', k_queue(skill), score, c)
end
if kind == 'live' then redis.call('ZADD', k_seen(), NOW_S, c) end
log('enter', 'call', c, 'skill', skill, 'line', line, 'kind', kind, 'prio', prio, 'caller', masked, 'asked', asked)
if overflowed then
  log('overflow', 'call', c, 'from', chain[1], 'to', skill, 'reason', 'unstaffed', 'line', line)
end
if kind == 'callback' then
  local why = 'unstaffed'
  if unstaffed == 'park' then why = 'closed' end
  log('callback', 'call', c, 'skill', skill, 'line', line, 'reason', why)
  mark_pending_callback(c)
end
local offers = {}
if seat then
  add(offers, offer(c, seat, skill, nil, false, {kind, line}))
elseif not nobody_ready then
  add(offers, try_assign_skill(skill))
end
return reply('queued', skill .. ' ' .. kind, offers)

--@ login
-- agent, state (ready|paused), reason
local a, st, reason = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local ak = k_agent(a)
local cur = hget(ak, 'state')
if not cur then return reply('unknown') end  -- every provisioned agent has a state
if cur ~= 'offline' then return reply('already', cur) end
local phone = redis.call('GET', k_phone(a))  -- the PBX says the seat's phone cannot ring
if st == 'ready' and phone then st, reason = 'paused', phone end
local sk = agent_skills(a)
for i = 1, #sk, 2 do redis.call('SADD', k_staffed(sk[i]), a) end
redis.call('ZADD', k_beats(), NOW_S, a)
redis.call('HSET', ak, 'state', st, 'reason', reason, 'since', NOW_S, 'call', '', 'logout_after', '',
           'idle_ms', now_ms())
agent_log(a, st, reason)
local offers = {}
if st == 'ready' then
  -- a waiting call is taken at once; only a seat with nothing to take joins the ready sets
  local r = try_assign_agent(a, true, sk)
  if r then add(offers, r) else agent_enter_ready(a, now_ms()) end
end
return reply('ok', st, offers)

--@ ready
-- agent, allowed current states (comma list), reason
local a, allowed, reason = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local ak = k_agent(a)
local cur = hget(ak, 'state') or 'offline'
if cur == 'ready' then return reply('already', cur) end
local ok = false
for _, s in ipairs(split(allowed)) do if s == cur then ok = true end end
if not ok then return reply('bad_state', cur) end
if cur == 'wrapup' then end_wrapup(a) end
local phone = redis.call('GET', k_phone(a))
if phone then  -- the PBX says the seat's phone cannot ring: paused until it can
  agent_state(a, 'paused', phone, '')
  agent_log(a, 'paused', phone)
  return reply('phone', phone)
end
redis.call('HSET', ak, 'state', 'ready', 'reason', reason, 'since', NOW_S, 'call', '', 'idle_ms', now_ms())
agent_log(a, 'ready', reason)
local offers = {}
local r = try_assign_agent(a, true)
if r then add(offers, r) else agent_enter_ready(a, now_ms()) end
return reply('ok', cur, offers)

--@ pause
-- agent, reason
local a, reason = ARGV[A], ARGV[A + 1]
local cur = hget(k_agent(a), 'state') or 'offline'
if cur ~= 'ready' and cur ~= 'wrapup' and cur ~= 'paused' then return reply('bad_state', cur) end
if cur == 'wrapup' then end_wrapup(a) end
agent_leave_ready(a)
agent_state(a, 'paused', reason, '')
agent_log(a, 'paused', reason)
return reply('ok', cur)

--@ logout
-- agent, reason, stale_before ('' = unconditional; else only if the last beat is older)
local a, reason, stale_before = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local ak = k_agent(a)
local cur = hget(ak, 'state') or 'offline'
if cur == 'offline' then return reply('already', cur) end
if stale_before ~= '' then
  local beat = redis.call('ZSCORE', k_beats(), a)
  if beat and tonumber(beat) >= tonumber(stale_before) then return reply('alive', cur) end
end
if cur == 'busy' then
  -- the call itself is in the telephony: the seat leaves rotation when it ends
  redis.call('HSET', ak, 'logout_after', reason)
  redis.call('ZREM', k_beats(), a)
  return reply('after_call', cur)
end
local ringing = nil
if cur == 'ringing' then ringing = hget(ak, 'call') end
if cur == 'wrapup' then end_wrapup(a) end
agent_offline(a, reason)
local offers = {}
if ringing and ringing ~= '' then add(offers, return_call(ringing, a, reason)) end
return reply('ok', cur, offers)

--@ answer
-- call, agent ('' = whoever it was offered to)
local c, who = ARGV[A], ARGV[A + 1]
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if st ~= 'ringing' then return reply('not_ringing', st) end
local a = hget(ck, 'agent')
if who ~= '' and who ~= a then return reply('wrong_agent', a) end
call_forget(c)
redis.call('HSET', ck, 'state', 'connected', 'connected', NOW_S)
agent_state(a, 'busy', '', c)
local kind = hget(ck, 'kind')
local wait = NOW - tonumber(hget(ck, 'entered'))
log('connect', 'call', c, 'agent', a, 'skill', hget(ck, 'oskill') or '', 'line', hget(ck, 'line') or '',
    'kind', kind, 'wait', secs(wait))
if kind == 'callback' then clear_pending_callback(c) end
return reply('ok', a)

--@ no_answer
-- call, reason, due_only ('1': only when its ring deadline has passed)
local c, reason, due_only = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if st ~= 'ringing' then return reply('not_ringing', st) end
if due_only == '1' then
  local due = redis.call('ZSCORE', k_ringing(), c)
  if due and tonumber(due) > NOW then return reply('not_due', st) end
end
local a = hget(ck, 'agent')
local offers = {}
if due_only == '1' and hget(ck, 'kind') == 'live' and hget(ck, 'polled') == '1'
    and hget(ck, 'offer_seen') ~= hget(ck, 'offers') then
  -- the caller's front-end asks about its caller all the time, but never saw this offer: it
  -- is gone (an AGI server died), so nobody rang the seat. Not the agent's fault: back to
  -- ready, keeping the place earned by idling (the caller is taken as lost by the ticker).
  agent_state(a, 'ready', '', '')
  agent_enter_ready(a, hget(k_agent(a), 'idle_ms') or now_ms())
  add(offers, return_call(c, a, 'not-rung'))
  add(offers, try_assign_agent(a))
  return reply('not_rung', a, offers)
end
agent_state(a, 'paused', 'no-answer', '')
agent_log(a, 'paused', 'no-answer')
add(offers, return_call(c, a, reason))
return reply('ok', a, offers)

--@ hangup
-- call, callback_after ('' = never make a callback), ended_by (caller|agent)
local c, cb_after, ended_by = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
local kind = hget(ck, 'kind') or ''
local line = hget(ck, 'line') or ''
local offers = {}
if st == 'waiting' or st == 'ringing' then
  if kind == 'callback' then return reply('no_caller', st) end
  local a = nil
  if st == 'ringing' then a = hget(ck, 'agent') end
  local wait = NOW - tonumber(hget(ck, 'entered'))
  log('abandon', 'call', c, 'skill', hget(ck, 'skill') or '', 'line', line, 'kind', kind, 'wait', secs(wait),
      'agent', a or '')
  redis.call('ZREM', k_ringing(), c)
  if a then
    -- the agent never got the call: back to ready, keeping the place earned by idling
    agent_state(a, 'ready', '', '')
    agent_enter_ready(a, hget(k_agent(a), 'idle_ms') or now_ms())
  end
  local status = 'abandoned'
  if cb_after ~= '' and kind == 'live' and (hget(ck, 'caller') or '') ~= '' and wait >= tonumber(cb_after) then
    -- missed-call callback (漏接回拨) keeping the caller's place in line
    make_callback(c, 'abandoned')
    redis.call('HSET', ck, 'state', 'waiting', 'agent', '')
    call_rejoin(c)
    status = 'callback'
    add(offers, try_assign_call(c))
  else
    end_abandoned(c)
  end
  if a then add(offers, try_assign_agent(a)) end
  return reply(status, secs(wait), offers)
elseif st == 'connected' then
  local a = hget(ck, 'agent')
  local talk = NOW - tonumber(hget(ck, 'connected'))
  local skill = hget(ck, 'oskill') or ''
  redis.call('HSET', ck, 'state', 'completed', 'ended', NOW_S)
  redis.call('EXPIRE', ck, ENDED_KEEP_S)  -- an ended call's record is kept 2 days
  log('complete', 'call', c, 'agent', a, 'skill', skill, 'line', line, 'kind', kind, 'talk', secs(talk), 'by', ended_by)
  local ak = k_agent(a)
  redis.call('HSET', ak, 'last_call', c, 'last_talk', secs(talk), 'last_skill', skill, 'last_line', line)
  local after = hget(ak, 'logout_after') or ''
  if after ~= '' then
    agent_state(a, 'wrapup', '', c)
    end_wrapup(a)
    agent_offline(a, after)
  else
    agent_state(a, 'wrapup', '', c)
    redis.call('ZADD', k_wrapping(), NOW_S, a)
    agent_log(a, 'wrapup', '')
  end
  return reply('completed', secs(talk))
end
return reply('gone', st)

--@ request_callback
-- call
local c = ARGV[A]
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if st ~= 'waiting' then return reply('bad_state', st) end
if hget(ck, 'kind') == 'callback' then return reply('already', st) end
if (hget(ck, 'caller') or '') == '' then return reply('no_number', st) end
make_callback(c, 'requested')
return reply('ok', st)

--@ callback_failed
-- call, max_attempts, retry_after_s
local c, max_attempts, retry_after = ARGV[A], tonumber(ARGV[A + 1]), tonumber(ARGV[A + 2])
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if st ~= 'ringing' or hget(ck, 'kind') ~= 'callback' then return reply('bad_state', st) end
local a = hget(ck, 'agent')
local attempts = redis.call('HINCRBY', ck, 'attempts', 1)
redis.call('ZREM', k_ringing(), c)
agent_state(a, 'ready', '', '')
agent_enter_ready(a, hget(k_agent(a), 'idle_ms') or now_ms())
local offers = {}
local status = 'retry'
if attempts >= max_attempts then
  call_forget(c)
  clear_pending_callback(c)
  redis.call('HSET', ck, 'state', 'failed', 'ended', NOW_S, 'agent', '')
  redis.call('EXPIRE', ck, ENDED_KEEP_S)  -- an ended call's record is kept 2 days
  status = 'failed'
else
  redis.call('HSET', ck, 'state', 'retry', 'agent', '')
  redis.call('ZADD', k_retry(), secs(NOW + retry_after), c)
end
log('cbfail', 'call', c, 'agent', a, 'line', hget(ck, 'line') or '', 'attempt', attempts, 'final', status == 'failed' and '1' or '0')
add(offers, try_assign_agent(a))
return reply(status, tostring(attempts), offers)

--@ callback_retry
-- call: a callback whose retry time came goes back to its original place
local c = ARGV[A]
local ck = k_call(c)
if hget(ck, 'state') ~= 'retry' then redis.call('ZREM', k_retry(), c) return reply('gone') end
redis.call('ZREM', k_retry(), c)
redis.call('HSET', ck, 'state', 'waiting')
call_rejoin(c)
local offers = {}
add(offers, try_assign_call(c))
return reply('ok', '', offers)

--@ move
-- call, mode (requeue|transfer|overflow), from_skill (overflow), unstaffed, chain...
-- requeue: a waiting call changes skill, keeping its place by arrival time.
-- transfer: a connected call goes to another group (experts too); the agent wraps up.
-- overflow: a waiting call also joins the overflow group (and stays in its own).
-- consult: a three-way transfer (三方转接) — like transfer, but only when a seat of the chain is
-- ready now (else nothing changes: 'no_seat'), and the agent, still in the conference, stays
-- out of rotation (paused, reason three-way) until end_three_way or take_back.
local c, mode, from, unstaffed = ARGV[A], ARGV[A + 1], ARGV[A + 2], ARGV[A + 3]
local chain = {}
for i = A + 4, #ARGV do chain[#chain + 1] = ARGV[i] end
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
local line = hget(ck, 'line') or ''
if mode == 'overflow' then
  if not redis.call('ZSCORE', k_age(from), c) then return reply('gone', st) end
  if st ~= 'waiting' and st ~= 'ringing' then redis.call('ZREM', k_age(from), c) return reply('gone', st) end
  if st == 'ringing' then return reply('ringing', st) end
  redis.call('ZREM', k_age(from), c)
elseif mode == 'requeue' then
  if st ~= 'waiting' then return reply('bad_state', st) end
elseif mode == 'transfer' or mode == 'consult' then
  if st ~= 'connected' then return reply('bad_state', st) end
end
local skill, parked
if mode == 'consult' then
  for _, s in ipairs(chain) do
    if not skill then
      for _ = 1, 100 do
        local a = redis.call('ZRANGE', k_ready(s), 0, 0)[1]
        if not a then break end
        if hget(k_agent(a), 'state') == 'ready' then skill = s break end
        redis.call('ZREM', k_ready(s), a)
      end
    end
  end
  if not skill then return reply('no_seat', st) end
  parked = false
else
  local _
  skill, _, parked = choose(chain, unstaffed, c)
end
if mode == 'overflow' then
  for _, s in ipairs(split(hget(ck, 'queues'))) do
    if s == skill then return reply('already', skill) end
  end
  redis.call('HSET', ck, 'queues', hget(ck, 'queues') .. ',' .. skill)
  call_join(c, skill, hget(ck, 'score'))
  log('overflow', 'call', c, 'from', from, 'to', skill, 'reason', 'timeout', 'line', line)
else
  local old = hget(ck, 'skill') or ''
  if mode == 'transfer' or mode == 'consult' then
    local a = hget(ck, 'agent')
    local talk = NOW - tonumber(hget(ck, 'connected'))
    local oskill = hget(ck, 'oskill') or ''
    log('complete', 'call', c, 'agent', a, 'skill', oskill, 'line', line, 'kind', hget(ck, 'kind'), 'talk', secs(talk),
        'by', 'transfer')
    local ak = k_agent(a)
    redis.call('HSET', ak, 'last_call', c, 'last_talk', secs(talk), 'last_skill', oskill, 'last_line', line)
    if mode == 'consult' then
      agent_state(a, 'paused', 'three-way', c)
      agent_log(a, 'paused', 'three-way')
    else
      agent_state(a, 'wrapup', '', c)
      redis.call('ZADD', k_wrapping(), NOW_S, a)
      agent_log(a, 'wrapup', 'transfer')
    end
    redis.call('HSET', ck, 'kind', 'transfer', 'agent', '', 'transferred_by', a, 'tb_skill', oskill, 'tb_from', old)
    if parked then redis.call('HSET', ck, 'kind', 'callback') end
  else
    call_forget(c)
    if parked then redis.call('HSET', ck, 'kind', 'callback') end
  end
  redis.call('HSET', ck, 'state', 'waiting', 'skill', skill, 'queues', skill)
  call_join(c, skill, hget(ck, 'score'))
  call_seen(c)
  if mode == 'consult' then
    log('transfer', 'call', c, 'from', old, 'to', skill, 'line', line, 'three_way', '1')
  else
    log(mode, 'call', c, 'from', old, 'to', skill, 'line', line)
  end
  if parked then
    local why = 'unstaffed'
    if unstaffed == 'park' then why = 'closed' end
    log('callback', 'call', c, 'skill', skill, 'line', line, 'reason', why)
    mark_pending_callback(c)
  end
end
local offers = {}
add(offers, try_assign_skill(skill))
return reply('ok', skill, offers)

--@ regroup
-- call, from, chain...: a call left in a seat group the rules no longer have (an admin's edit
-- removed or renamed it) moves to the first staffed group of ``chain`` (the general group's
-- plan), keeping its place (score), its kind (live, callback, transfer) and the clock of its
-- front-end's sign of life; it leaves the removed group's queue. A ringing call is left alone:
-- back in line it rejoins the removed group and the next tick moves it.
local c, from = ARGV[A], ARGV[A + 1]
local chain = {}
for i = A + 2, #ARGV do chain[#chain + 1] = ARGV[i] end
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if st ~= 'waiting' then
  redis.call('ZREM', k_queue(from), c)  -- not waiting: no business in a queue (ringing calls are in none)
  return reply('gone', st)
end
local skill = choose(chain, 'queue', c)
local keep, joined = {}, false
for _, s in ipairs(split(hget(ck, 'queues'))) do
  if s ~= from then
    keep[#keep + 1] = s
    if s == skill then joined = true end
  end
end
if not joined then keep[#keep + 1] = skill end
redis.call('ZREM', k_queue(from), c)
redis.call('ZREM', k_age(from), c)
redis.call('HSET', ck, 'queues', table.concat(keep, ','), 'regrouped_from', from)
if hget(ck, 'skill') == from then redis.call('HSET', ck, 'skill', skill) end
if not joined then call_join(c, skill, hget(ck, 'score')) end
log('overflow', 'call', c, 'from', from, 'to', skill, 'reason', 'removed', 'line', hget(ck, 'line') or '',
    'kind', hget(ck, 'kind') or '')
local offers = {}
add(offers, try_assign_skill(skill))
return reply('ok', skill, offers)

--@ prioritise
-- call, priority, rank (MAX_PRIORITY - priority, as enqueue's score), emergency: a call that may be an emergency (可能紧急) goes ahead of everyone
-- of a lower priority (still by arrival among equals) and is offered to the next free seat; the
-- supervisor is alerted. A ringing call keeps its ring; only waiting or ringing calls qualify.
local c, prio, rank, number = ARGV[A], ARGV[A + 1], tonumber(ARGV[A + 2]), ARGV[A + 3]
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if st ~= 'waiting' and st ~= 'ringing' then return reply('bad_state', st) end
local skill, line = hget(ck, 'skill') or '', hget(ck, 'line') or ''
local score = rank * 1e13 + math.floor(tonumber(hget(ck, 'entered')) * 1000)
if score < tonumber(hget(ck, 'score')) then
  redis.call('HSET', ck, 'score', fmt(score), 'prio', prio)
  if st == 'waiting' then
    for _, s in ipairs(split(hget(ck, 'queues'))) do redis.call('ZADD', k_queue(s), fmt(score), c) end
  end
end
redis.call('HSET', ck, 'urgent', number)
log('urgent', 'call', c, 'skill', skill, 'line', line, 'emergency', number)
redis.call('XADD', k_alerts(), 'MAXLEN', '~', 10000, '*', 't', NOW_S, 'alert', 'possible_emergency', 'skill', skill,
           'call', c, 'line', line, 'emergency', number)
local offers = {}
if st == 'waiting' then add(offers, try_assign_call(c)) end
return reply('ok', skill, offers)

--@ lost
-- call, stale_before (s): a live caller still waiting, or offered to a seat, whose front-end has
-- not asked about them since stale_before (an AGI server or web process that died with the
-- call, a lost status callback or hang-up message) is lost to us: counted as abandoned, and
-- called back (漏接回拨, keeping the place in line) when the number is known, so that no agent
-- is offered a caller who is not there. A seat it was ringing goes back to ready, keeping its
-- place (its phone was not rung: the caller's front-end never saw the offer). Entries of calls
-- no longer waiting or ringing live are dropped here (the index cleans itself).
local c, stale_before = ARGV[A], tonumber(ARGV[A + 1])
local seen = redis.call('ZSCORE', k_seen(), c)
if not seen then return reply('gone') end
if tonumber(seen) >= stale_before then return reply('alive', seen) end
redis.call('ZREM', k_seen(), c)
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if (st ~= 'waiting' and st ~= 'ringing') or hget(ck, 'kind') ~= 'live' then return reply('not_waiting', st) end
local skill, line = hget(ck, 'skill') or '', hget(ck, 'line') or ''
local wait = NOW - tonumber(hget(ck, 'entered'))
local a = nil
if st == 'ringing' then
  a = hget(ck, 'agent')
  redis.call('ZREM', k_ringing(), c)
  redis.call('HSET', ck, 'state', 'waiting', 'agent', '')
  call_rejoin(c)  -- an offered call is in no queue: back to its place
  agent_state(a, 'ready', '', '')
  agent_enter_ready(a, hget(k_agent(a), 'idle_ms') or now_ms())
end
log('abandon', 'call', c, 'skill', skill, 'line', line, 'kind', 'live', 'wait', secs(wait), 'agent', a or '',
    'reason', 'lost')
redis.call('XADD', k_alerts(), 'MAXLEN', '~', 10000, '*', 't', NOW_S, 'alert', 'lost', 'skill', skill, 'call', c,
           'line', line, 'silent', secs(NOW - tonumber(seen)))
local offers = {}
local status = 'abandoned'
if (hget(ck, 'caller') or '') ~= '' then
  make_callback(c, 'lost')  -- in its queues, at its place
  status = 'callback'
  if a then add(offers, try_assign_call(c)) end
else
  end_abandoned(c)
end
if a then add(offers, try_assign_agent(a)) end
return reply(status, secs(wait), offers)

--@ offer_seen
-- call, offer n: the caller's front-end saw this offer (see no_answer)
local c, n = ARGV[A], ARGV[A + 1]
local ck = k_call(c)
if hget(ck, 'state') ~= 'ringing' or hget(ck, 'offers') ~= n then return reply('stale') end
redis.call('HSET', ck, 'polled', '1', 'offer_seen', n)
redis.call('ZADD', k_seen(), 'XX', NOW_S, c)  -- a sign of life: the caller's front-end is there to ring
return reply('ok')

--@ leave
-- call, reason: the caller leaves the queue on purpose (an emergency transfer, the front-end's
-- fallback seats): not abandoned, no missed-call callback, not in 呼损率
local c, reason = ARGV[A], ARGV[A + 1]
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
if st ~= 'waiting' and st ~= 'ringing' and st ~= 'retry' then return reply('bad_state', st) end
local kind = hget(ck, 'kind') or ''
local a = nil
if st == 'ringing' then a = hget(ck, 'agent') end
local wait = NOW - tonumber(hget(ck, 'entered'))
call_forget(c)
if kind == 'callback' then clear_pending_callback(c) end
redis.call('HSET', ck, 'state', 'left', 'ended', NOW_S, 'agent', '', 'left_reason', reason)
redis.call('EXPIRE', ck, ENDED_KEEP_S)  -- an ended call's record is kept 2 days
log('leave', 'call', c, 'skill', hget(ck, 'skill') or '', 'line', hget(ck, 'line') or '', 'kind', kind,
    'wait', secs(wait), 'reason', reason, 'agent', a or '')
local offers = {}
if a then
  -- the agent never got the call: back to ready, keeping the place earned by idling
  agent_state(a, 'ready', '', '')
  agent_enter_ready(a, hget(k_agent(a), 'idle_ms') or now_ms())
  add(offers, try_assign_agent(a))
end
return reply('ok', secs(wait), offers)

--@ survey
-- call, score (1|2|3), line (when the ACD never saw the call)
local c, score, line = ARGV[A], ARGV[A + 1], ARGV[A + 2]
local ck = k_call(c)
local known = redis.call('EXISTS', ck) == 1
if known then
  if redis.call('HSETNX', ck, 'survey', score) == 0 then return reply('already', hget(ck, 'survey')) end
  line = hget(ck, 'line') or line
  log('survey', 'call', c, 'line', line, 'score', score, 'agent', hget(ck, 'agent') or '',
      'skill', hget(ck, 'oskill') or hget(ck, 'skill') or '', 'kind', hget(ck, 'kind') or '')
else
  -- a call that never queued (sub-center, emergency): once per call id too
  if not redis.call('SET', k_surveyed(c), score, 'NX', 'EX', 7 * 86400) then return reply('already', score) end
  log('survey', 'call', c, 'line', line, 'score', score, 'agent', '', 'skill', '', 'kind', '')
end
return reply('ok', score)

--@ take_back
-- call, reason: a three-way transfer is cancelled (or the target did not answer): the call goes
-- back to the agent who transferred it; a ringing target is released (paused after a no-answer)
local c, reason = ARGV[A], ARGV[A + 1]
local ck = k_call(c)
local st = hget(ck, 'state') or 'unknown'
local a = hget(ck, 'transferred_by') or ''
if hget(ck, 'kind') ~= 'transfer' or a == '' then return reply('bad_state', st) end
if st ~= 'waiting' and st ~= 'ringing' and st ~= 'connected' then return reply('bad_state', st) end
local ast = hget(k_agent(a), 'state') or 'offline'
if ast ~= 'paused' or (hget(k_agent(a), 'reason') or '') ~= 'three-way' then return reply('agent_gone', ast) end
local e = hget(ck, 'agent') or ''
local line = hget(ck, 'line') or ''
local offers = {}
call_forget(c)
if st == 'ringing' and e ~= '' then
  if reason == 'no-answer' then
    agent_state(e, 'paused', 'no-answer', '')
    agent_log(e, 'paused', 'no-answer')
  else
    agent_state(e, 'ready', '', '')
    agent_enter_ready(e, hget(k_agent(e), 'idle_ms') or now_ms())
  end
elseif st == 'connected' and e ~= '' then
  local talk = NOW - tonumber(hget(ck, 'connected'))
  local skill = hget(ck, 'oskill') or ''
  log('complete', 'call', c, 'agent', e, 'skill', skill, 'line', line, 'kind', 'transfer', 'talk', secs(talk),
      'by', 'takeback')
  redis.call('HSET', k_agent(e), 'last_call', c, 'last_talk', secs(talk), 'last_skill', skill, 'last_line', line)
  agent_state(e, 'wrapup', '', c)
  redis.call('ZADD', k_wrapping(), NOW_S, e)
  agent_log(e, 'wrapup', 'takeback')
end
local back = hget(ck, 'tb_from') or hget(ck, 'skill') or ''
redis.call('HSET', ck, 'state', 'connected', 'agent', a, 'connected', NOW_S, 'oskill', hget(ck, 'tb_skill') or back,
           'skill', back, 'queues', back, 'transferred_by', '')
agent_state(a, 'busy', '', c)
log('takeback', 'call', c, 'agent', a, 'from', e, 'line', line, 'reason', reason)
if st == 'ringing' and e ~= '' and reason ~= 'no-answer' then add(offers, try_assign_agent(e)) end
return reply('ok', a, offers)

--@ end_three_way
-- agent: the agent who started a three-way transfer left the conference: wrap-up
local a = ARGV[A]
local ak = k_agent(a)
local cur = hget(ak, 'state') or 'offline'
if cur ~= 'paused' or (hget(ak, 'reason') or '') ~= 'three-way' then return reply('bad_state', cur) end
local after = hget(ak, 'logout_after') or ''
agent_state(a, 'wrapup', '', hget(ak, 'last_call') or '')
if after ~= '' then
  end_wrapup(a)
  agent_offline(a, after)
  return reply('ok', 'offline')
end
redis.call('ZADD', k_wrapping(), NOW_S, a)
agent_log(a, 'wrapup', 'three-way')
return reply('ok', 'wrapup')
