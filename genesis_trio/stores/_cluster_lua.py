"""The Lua scripts of :class:`~genesis_trio.stores.ClusterStore` (run atomically by Redis).

Every script takes the key prefix, this node's incarnation token
(``node/random``), its node id, the time-to-live of a node's own keys
(milliseconds) and the capacities of a component's inbox and of a node's
inbox first. The layout is in the store's docstring; ``cmsgpack`` is
Redis's built-in MessagePack. Every write is idempotent, so a batch retried
after an unclear failure (applied, but the reply lost) changes nothing
twice: inbox heads are absolute positions, forwards carry this
incarnation's increasing numbers.

Subscriptions are kept per holder: ``tsubs`` sets hold, for a topic and a
node's token (``-``: held by nobody), the components subscribed, and
``stok:{topic}`` the tokens with any. A publish puts one entry in each other
node's inbox (``ninbox:{token}``), not one per subscriber. Whoever takes a
component from a node that can no longer deliver (it let go, or died)
copies that node's undelivered entries for it into the component's own
inbox (``inbox:{component}``), in order.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = """
local p, me, node, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local cap, ncap = tonumber(ARGV[5]), tonumber(ARGV[6])
local owner = p .. ':owner'
local sessions = p .. ':sessions'
local ids = p .. ':ids'
local DAY = 86400000
local function node_of(token) return string.match(token, '^(.*)/[^/]*$') end
local function alive(token)
  return redis.call('GET', p .. ':node:' .. node_of(token)) == token
end
local function topics_of(sid)
  local row = redis.call('HGET', sessions, sid)
  if not row then return {} end
  return cmsgpack.unpack(row)[8]
end
local function tsubs(t, tok) return p .. ':tsubs:' .. #tok .. ':' .. tok .. ':' .. t end
local function sub_add(t, tok, cid)
  redis.call('SADD', tsubs(t, tok), cid)
  redis.call('SADD', p .. ':stok:' .. t, tok)
end
local function sub_del(t, tok, cid)
  local key = tsubs(t, tok)
  redis.call('SREM', key, cid)
  if redis.call('SCARD', key) == 0 then redis.call('SREM', p .. ':stok:' .. t, tok) end
end
local function move_subs(cid, from, to)  -- the current session's topics, from one holder to another
  local sid = redis.call('HGET', ids, cid)
  if not sid then return {} end
  local ts = topics_of(sid)
  for _, t in ipairs(ts) do
    sub_del(t, from, cid)
    sub_add(t, to, cid)
  end
  return ts
end
local woken = {}
local function push(cid, body, refuse)  -- a component's own inbox
  local key = p .. ':inbox:' .. cid
  local length = redis.call('RPUSH', key, body)
  if length > cap then  -- take it back: refused, or a gap the owner marks as truncation
    redis.call('RPOP', key)
    if refuse then return false end
    local head = tonumber(redis.call('HGET', p .. ':ihead', cid) or '0')
    redis.call('HSET', p .. ':gaps', cid, tostring(head + length - 1))
  end
  local o = redis.call('HGET', owner, cid)
  if o then
    local n = node_of(o)
    redis.call('SADD', p .. ':dirty:' .. n, cid)
    woken[n] = true
  end
  return true
end
local function npush(tok, kind, name, body)  -- a node's inbox: 'd' to a component, 't' a topic
  local key = p .. ':ninbox:' .. tok
  local length = redis.call('LLEN', key)
  if length >= ncap then
    if kind == 't' then
      local head = tonumber(redis.call('GET', p .. ':nihead:' .. tok) or '0')
      redis.call('HSET', p .. ':ngaps:' .. tok, name, tostring(head + length))
      redis.call('PEXPIRE', p .. ':ngaps:' .. tok, DAY)
    end
    return false
  end
  redis.call('RPUSH', key, kind .. #name .. ':' .. name .. body)
  redis.call('HINCRBY', p .. ':ncount:' .. tok, kind .. name, 1)  -- what it may hold, for copies
  if length == 0 then
    redis.call('PEXPIRE', key, DAY)
    redis.call('PEXPIRE', p .. ':ncount:' .. tok, DAY)
  end
  woken[node_of(tok)] = true
  return true
end
local function copy_node(tok, cid, ts)  -- tok's undelivered entries for cid, into cid's inbox
  local want, names = {}, {'d' .. cid}
  for _, t in ipairs(ts) do
    want[t] = true
    names[#names + 1] = 't' .. t
  end
  local any = false  -- entries for it may be there (counts since the inbox was last empty)
  for _, c in ipairs(redis.call('HMGET', p .. ':ncount:' .. tok, unpack(names))) do
    if c then any = true end
  end
  local room = cap - redis.call('LLEN', p .. ':inbox:' .. cid)
  local entries = any and redis.call('LRANGE', p .. ':ninbox:' .. tok, 0, -1) or {}
  for _, e in ipairs(entries) do
    local c = string.find(e, ':', 2, true)
    local n = tonumber(string.sub(e, 2, c - 1))
    local kind, name = string.sub(e, 1, 1), string.sub(e, c + 1, c + n)
    if (kind == 'd' and name == cid) or (kind == 't' and want[name]) then
      if room <= 0 then  -- full: the rest is a gap (marked as truncation), not copied
        redis.call('HSET', p .. ':gaps', cid, tok .. '>' .. cap)
        break
      end
      push(cid, string.sub(e, c + n + 1), false)
      room = room - 1
    end
  end
  local gaps = redis.call('HGETALL', p .. ':ngaps:' .. tok)
  for i = 1, #gaps, 2 do
    if want[gaps[i]] then redis.call('HSET', p .. ':gaps', cid, tok .. '#' .. gaps[i + 1]) end
  end
end
local function wake_all()
  for n in pairs(woken) do
    local key = p .. ':wake:' .. n
    if redis.call('LLEN', key) < 16 then redis.call('RPUSH', key, 'd') end
    redis.call('PEXPIRE', key, ttl)
    if redis.call('EXISTS', p .. ':dirty:' .. n) == 1 then
      redis.call('PEXPIRE', p .. ':dirty:' .. n, ttl)
    end
  end
end
local function tail(tok)  -- the absolute position after a node inbox's last entry
  local head = tonumber(redis.call('GET', p .. ':nihead:' .. tok) or '0')
  return head + redis.call('LLEN', p .. ':ninbox:' .. tok)
end
if not alive(me) then return redis.error_reply('FENCED node ' .. node .. ' (its lease lapsed)') end
"""

CLAIM: Final = (
    _COMMON
    + """
-- ARGV[7]: component id ('' = find it by the session id ARGV[8])
local cid, sid = ARGV[7], ARGV[8]
if cid == '' then  -- by session id alone: anonymous sessions only
  local row = redis.call('HGET', sessions, sid)
  if not row then return {'none'} end
  cid = cmsgpack.unpack(row)[2]
  if string.sub(cid, 1, 5) ~= 'anon-' then return {'none'} end
end
local cur = redis.call('HGET', owner, cid)
if cur and cur ~= me and alive(cur) then return {'busy', cid, cur} end
redis.call('HSET', owner, cid, me)
local ts = move_subs(cid, cur or '-', me)
if cur and cur ~= me then  -- a dead node's: what it did not deliver comes with it
  redis.call('SREM', p .. ':dirty:' .. node_of(cur), cid)
  copy_node(cur, cid, ts)
end
local gap = redis.call('HEXISTS', p .. ':gaps', cid) == 1
if gap or redis.call('LLEN', p .. ':inbox:' .. cid) > 0 then
  redis.call('SADD', p .. ':dirty:' .. node, cid)
  redis.call('PEXPIRE', p .. ':dirty:' .. node, ttl)
end
local upto = tail(me)
local s = redis.call('HGET', ids, cid)
if not s then return {'new', cid, upto} end
local row = redis.call('HGET', sessions, s)
if not row then return {'new', cid, upto} end
return {'ok', cid, upto, row, redis.call('ZRANGE', p .. ':log:' .. s, 0, -1)}
"""
)
"""Take a component's session for this node: ``none`` (no such session id),
``busy`` (a live node holds it: ask it to let go), ``new`` (no session:
make one) or ``ok`` with its header and log. ``new`` and ``ok`` also give
the end of this node's inbox (its entries up to there were sent before)."""

ORPHANS: Final = (
    _COMMON
    + """
-- ARGV[7]: HSCAN cursor over the components. Those nobody alive holds (never this node).
local r = redis.call('HSCAN', ids, ARGV[7], 'COUNT', 200)
local found, seen = {}, {}
for i = 1, #r[2], 2 do
  local cid = r[2][i]
  local token = redis.call('HGET', owner, cid)
  if not token then
    found[#found + 1] = cid
  else
    if seen[token] == nil then seen[token] = token == me or alive(token) end
    if not seen[token] then found[#found + 1] = cid end
  end
end
return {r[1], found}
"""
)
"""One step over the components: those with no live holder (to adopt)."""

RELEASE: Final = (
    _COMMON
    + """
local cid = ARGV[7]
if redis.call('HGET', owner, cid) == me then
  redis.call('HDEL', owner, cid)
  copy_node(me, cid, move_subs(cid, me, '-'))  -- what this node has not delivered to it
end
redis.call('SREM', p .. ':dirty:' .. node, cid)
wake_all()
return 1
"""
)
"""Let go of a component (after its last change was committed)."""

RENEW: Final = (
    _COMMON
    + """
-- ARGV[7]: lease in milliseconds (the check above fenced a lapsed lease)
redis.call('PEXPIRE', p .. ':node:' .. node, ARGV[7])
for _, key in ipairs({p .. ':dirty:' .. node, p .. ':wake:' .. node}) do
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end
end
local mine = {'ninbox', 'nihead', 'ngaps', 'ncount'}
for i = 1, #mine do mine[i] = p .. ':' .. mine[i] .. ':' .. me end
for _, key in ipairs(mine) do
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, DAY) end
end
return 1
"""
)
"""Keep this node alive. A lapsed lease (others may have taken its components) fences it.
A node's inbox outlives it by a day: the next holders of its components copy from it."""

READ: Final = (
    _COMMON
    + """
-- ARGV[7]: bodies per component, ARGV[8]: node entries (0: the components' alone, not
-- those marked dirty), ARGV[9...]: components wanted. One snapshot of both kinds of inbox.
local count, ncount = tonumber(ARGV[7]), tonumber(ARGV[8])
local want, seen = {}, {}
local function add(cid)
  if not seen[cid] then
    seen[cid] = true
    want[#want + 1] = cid
  end
end
if ncount > 0 then
  for _, cid in ipairs(redis.call('SMEMBERS', p .. ':dirty:' .. node)) do add(cid) end
end
for i = 9, #ARGV do add(ARGV[i]) end
local out = {}
for _, cid in ipairs(want) do
  out[#out + 1] = {
    cid,
    redis.call('HGET', p .. ':ihead', cid) or '0',
    redis.call('HGET', p .. ':gaps', cid) or '',
    redis.call('LRANGE', p .. ':inbox:' .. cid, 0, count - 1),
  }
end
local mine = {}
if ncount > 0 then
  mine = {
    redis.call('GET', p .. ':nihead:' .. me) or '0',
    redis.call('HGETALL', p .. ':ngaps:' .. me),
    redis.call('LRANGE', p .. ':ninbox:' .. me, 0, ncount - 1),
  }
end
return {out, mine}
"""
)
"""The heads of this node's inboxes: the components' (dirty or asked for) and its own."""

WRITE: Final = (
    _COMMON
    + """
-- ARGV[7]: the batch (MessagePack)
local b = cmsgpack.unpack(ARGV[7])
local fence, deletes, messages, rewrites = b[1], b[2], b[3], b[4]
local appends, trims, rows, consumed, forwards, gaps = b[5], b[6], b[7], b[8], b[9], b[10]
for i = 1, #fence do
  if redis.call('HGET', owner, fence[i]) ~= me then
    return redis.error_reply('FENCED ' .. fence[i])
  end
end
local upserted = {}
for i = 1, #rows do upserted[rows[i][2]] = true end
for i = 1, #deletes do
  local sid, cid = deletes[i][1], deletes[i][2]
  if redis.call('HGET', ids, cid) == sid then  -- its current session: its subscriptions go
    local tok = redis.call('HGET', owner, cid) or '-'
    for _, t in ipairs(topics_of(sid)) do sub_del(t, tok, cid) end
  end
  redis.call('HDEL', sessions, sid)
  redis.call('DEL', p .. ':log:' .. sid)
  if redis.call('HGET', ids, cid) == sid and not upserted[cid] then
    redis.call('HDEL', ids, cid)
    redis.call('HDEL', owner, cid)
    redis.call('DEL', p .. ':inbox:' .. cid)
    redis.call('HDEL', p .. ':ihead', cid)
    redis.call('HDEL', p .. ':gaps', cid)
    redis.call('SREM', p .. ':dirty:' .. node, cid)
  end
end
for i = 1, #messages do
  redis.call('HSET', p .. ':messages', messages[i][1], messages[i][2])
end
for i = 1, #rewrites do
  local key = p .. ':log:' .. rewrites[i][1]
  redis.call('DEL', key)
  local e = rewrites[i][2]
  for j = 1, #e, 2 do redis.call('ZADD', key, e[j], e[j + 1]) end
end
for i = 1, #appends do
  local key, e = p .. ':log:' .. appends[i][1], appends[i][2]
  redis.call('ZREMRANGEBYSCORE', key, e[1], e[#e - 1])
  for j = 1, #e, 2 do redis.call('ZADD', key, e[j], e[j + 1]) end
end
for i = 1, #trims do
  redis.call('ZREMRANGEBYSCORE', p .. ':log:' .. trims[i][1], '-inf', trims[i][2])
end
for i = 1, #rows do  -- subscriptions follow the component's current session
  local sid, cid, row = rows[i][1], rows[i][2], rows[i][3]
  local tok = redis.call('HGET', owner, cid) or '-'
  local cur = redis.call('HGET', ids, cid)
  local old, new = {}, {}
  if cur then
    for _, t in ipairs(topics_of(cur)) do old[t] = true end
  end
  for _, t in ipairs(cmsgpack.unpack(row)[8]) do new[t] = true end
  for t in pairs(old) do
    if not new[t] then sub_del(t, tok, cid) end
  end
  for t in pairs(new) do
    if not old[t] then sub_add(t, tok, cid) end
  end
  redis.call('HSET', sessions, sid, row)
  redis.call('HSET', ids, cid, sid)
end
for i = 1, #consumed do  -- an absolute position: applying it twice is applying it once
  local cid, upto = consumed[i][1], consumed[i][2]
  local key, headkey = p .. ':inbox:' .. cid, nil
  local head
  if cid == '' then  -- this node's own inbox
    key, headkey = p .. ':ninbox:' .. me, p .. ':nihead:' .. me
    head = tonumber(redis.call('GET', headkey) or '0')
  else
    head = tonumber(redis.call('HGET', p .. ':ihead', cid) or '0')
  end
  if upto > head then
    redis.call('LTRIM', key, upto - head, -1)
    if headkey then
      redis.call('SET', headkey, upto, 'PX', DAY)
    else
      redis.call('HSET', p .. ':ihead', cid, upto)
    end
  end
  if redis.call('LLEN', key) == 0 then
    if cid == '' then
      redis.call('DEL', p .. ':ncount:' .. me)  -- empty: nothing for anyone to copy
    else
      redis.call('SREM', p .. ':dirty:' .. node, cid)
    end
  end
end
for i = 1, #gaps do  -- a gap the owner saw (and marked as truncation); '#topic': its own inbox's
  local cid, gap = gaps[i][1], gaps[i][2]
  if string.sub(cid, 1, 1) == '#' then
    local key = p .. ':ngaps:' .. me
    if redis.call('HGET', key, string.sub(cid, 2)) == gap then
      redis.call('HDEL', key, string.sub(cid, 2))
    end
  elseif redis.call('HGET', p .. ':gaps', cid) == gap then
    redis.call('HDEL', p .. ':gaps', cid)
  end
end
local refused, fresh = {}, {}
local hwkey, refkey = p .. ':fwdhw:' .. me, p .. ':fwdref:' .. me
local hw = tonumber(redis.call('GET', hwkey) or '0')
local top = hw
local earlier = nil  -- the refusals of the last batch applied (its reply may have been lost)
local function refuse(i, number, why)
  refused[#refused + 1] = {i, why}
  fresh[#fresh + 1] = {number, why}
end
for i = 1, #forwards do
  local f = forwards[i]
  local to, topic, body, number, spill = f[1], f[2], f[3], f[4], f[5]
  if number <= hw then  -- applied by an earlier attempt of this batch: its refusal again
    if earlier == nil then
      earlier = {}
      local r = redis.call('HGETALL', refkey)
      for j = 1, #r, 2 do earlier[tonumber(r[j])] = r[j + 1] end
    end
    if earlier[number] then refuse(i, number, earlier[number]) end
  else
    if number > top then top = number end
    if spill == 1 then  -- this node's component, behind what its own inbox holds
      if redis.call('HGET', owner, to) == me and redis.call('HEXISTS', ids, to) == 1 then
        push(to, body, false)
      end
    elseif string.sub(to, 1, 5) == '$hub@' then  -- a reply to another node's own request
      local tok = redis.call('GET', p .. ':node:' .. string.sub(to, 6))
      if tok then npush(tok, 'h', to, body) end
    elseif to ~= '' then
      local o = redis.call('HGET', owner, to)
      local ok
      if redis.call('HEXISTS', ids, to) == 0 then
        refuse(i, number, 'unknown')
      else
        if not (o and o ~= me) then
          ok = push(to, body, true)
        elseif redis.call('LLEN', p .. ':inbox:' .. to) < cap then  -- its node would spill it
          ok = npush(o, 'd', to, body)
        end
        if not ok then refuse(i, number, 'full') end
      end
    else  -- once per node with subscribers (this one delivered its own)
      for _, tok in ipairs(redis.call('SMEMBERS', p .. ':stok:' .. topic)) do
        if tok == '-' then  -- between nodes: straight into their own inboxes
          for _, c in ipairs(redis.call('SMEMBERS', tsubs(topic, '-'))) do push(c, body, false) end
        elseif tok ~= me then
          npush(tok, 't', topic, body)
        end
      end
    end
  end
end
if top > hw then
  redis.call('SET', hwkey, tostring(top), 'PX', DAY)
  redis.call('DEL', refkey)  -- what this batch refused, for a retry of it
  for _, r in ipairs(fresh) do redis.call('HSET', refkey, r[1], r[2]) end
  if #fresh > 0 then redis.call('PEXPIRE', refkey, DAY) end
end
wake_all()
return refused
"""
)
"""Apply a journal batch, fenced: every component it touches must be this node's."""
