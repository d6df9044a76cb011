"""The Lua scripts of :class:`~genesis_trio.stores.ClusterStore` (run atomically by Redis).

Every script takes the key prefix, this node's incarnation token
(``node/random``), its node id and the time-to-live of a node's own keys
(milliseconds) first. The layout is in the store's docstring; ``cmsgpack``
is Redis's built-in MessagePack. Every write is idempotent, so a batch
retried after an unclear failure (applied, but the reply lost) changes
nothing twice: inbox heads are absolute positions, forwards carry this
incarnation's increasing numbers.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = """
local p, me, node, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local owner = p .. ':owner'
local sessions = p .. ':sessions'
local ids = p .. ':ids'
local function node_of(token) return string.match(token, '^(.*)/[^/]*$') end
local function alive(token)
  return redis.call('GET', p .. ':node:' .. node_of(token)) == token
end
local function mark_dirty(n, cid)
  local key = p .. ':dirty:' .. n
  redis.call('SADD', key, cid)
  redis.call('PEXPIRE', key, ttl)
end
if not alive(me) then return redis.error_reply('FENCED node ' .. node .. ' (its lease lapsed)') end
"""

CLAIM: Final = (
    _COMMON
    + """
-- ARGV[5]: component id ('' = find it by the session id ARGV[6])
local cid, sid = ARGV[5], ARGV[6]
if cid == '' then  -- by session id alone: anonymous sessions only
  local row = redis.call('HGET', sessions, sid)
  if not row then return {'none'} end
  cid = cmsgpack.unpack(row)[2]
  if string.sub(cid, 1, 5) ~= 'anon-' then return {'none'} end
end
local cur = redis.call('HGET', owner, cid)
if cur and cur ~= me and alive(cur) then return {'busy', cid, cur} end
redis.call('HSET', owner, cid, me)
if cur and cur ~= me then redis.call('SREM', p .. ':dirty:' .. node_of(cur), cid) end
local gap = redis.call('HEXISTS', p .. ':gaps', cid) == 1
if gap or redis.call('LLEN', p .. ':inbox:' .. cid) > 0 then
  mark_dirty(node, cid)  -- what its old node left undrained
end
local s = redis.call('HGET', ids, cid)
if not s then return {'new', cid} end
local row = redis.call('HGET', sessions, s)
if not row then return {'new', cid} end
return {'ok', cid, row, redis.call('ZRANGE', p .. ':log:' .. s, 0, -1)}
"""
)
"""Take a component's session for this node: ``none`` (no such session id),
``busy`` (a live node holds it: ask it to let go), ``new`` (no session:
make one) or ``ok`` with its header and log."""

ORPHANS: Final = (
    _COMMON
    + """
-- ARGV[5]: HSCAN cursor over the components. Those nobody alive holds (never this node).
local r = redis.call('HSCAN', ids, ARGV[5], 'COUNT', 200)
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
local cid = ARGV[5]
if redis.call('HGET', owner, cid) == me then redis.call('HDEL', owner, cid) end
redis.call('SREM', p .. ':dirty:' .. node, cid)
return 1
"""
)
"""Let go of a component (after its last change was committed)."""

RENEW: Final = (
    _COMMON
    + """
-- ARGV[5]: lease in milliseconds (the check above fenced a lapsed lease)
redis.call('PEXPIRE', p .. ':node:' .. node, ARGV[5])
for _, key in ipairs({p .. ':dirty:' .. node, p .. ':wake:' .. node}) do
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end
end
return 1
"""
)
"""Keep this node alive. A lapsed lease (others may have taken its components) fences it."""

WRITE: Final = (
    _COMMON
    + """
-- ARGV[5]: the batch (MessagePack), ARGV[6]: an inbox's capacity
local b = cmsgpack.unpack(ARGV[5])
local cap = tonumber(ARGV[6])
local fence, deletes, messages, rewrites = b[1], b[2], b[3], b[4]
local appends, trims, rows, consumed, forwards, gaps = b[5], b[6], b[7], b[8], b[9], b[10]
for i = 1, #fence do
  if redis.call('HGET', owner, fence[i]) ~= me then
    return redis.error_reply('FENCED ' .. fence[i])
  end
end
local function topics_of(sid)
  local row = redis.call('HGET', sessions, sid)
  if not row then return {} end
  return cmsgpack.unpack(row)[8]
end
local upserted = {}
for i = 1, #rows do upserted[rows[i][2]] = true end
for i = 1, #deletes do
  local sid, cid = deletes[i][1], deletes[i][2]
  for _, t in ipairs(topics_of(sid)) do redis.call('SREM', p .. ':subs:' .. t, cid) end
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
for i = 1, #rows do
  local sid, cid, row = rows[i][1], rows[i][2], rows[i][3]
  local old, new = {}, {}
  for _, t in ipairs(topics_of(sid)) do old[t] = true end
  for _, t in ipairs(cmsgpack.unpack(row)[8]) do new[t] = true end
  for t in pairs(old) do
    if not new[t] then redis.call('SREM', p .. ':subs:' .. t, cid) end
  end
  for t in pairs(new) do
    if not old[t] then redis.call('SADD', p .. ':subs:' .. t, cid) end
  end
  redis.call('HSET', sessions, sid, row)
  redis.call('HSET', ids, cid, sid)
end
for i = 1, #consumed do  -- an absolute position: applying it twice is applying it once
  local cid, upto = consumed[i][1], consumed[i][2]
  local key = p .. ':inbox:' .. cid
  local head = tonumber(redis.call('HGET', p .. ':ihead', cid) or '0')
  if upto > head then
    redis.call('LTRIM', key, upto - head, -1)
    redis.call('HSET', p .. ':ihead', cid, upto)
  end
  if redis.call('LLEN', key) == 0 then redis.call('SREM', p .. ':dirty:' .. node, cid) end
end
for i = 1, #gaps do  -- a gap the owner saw (and marked its session truncated)
  if redis.call('HGET', p .. ':gaps', gaps[i][1]) == gaps[i][2] then
    redis.call('HDEL', p .. ':gaps', gaps[i][1])
  end
end
local refused, woken = {}, {}
local function push(cid, body)  -- three calls per target: this is fan-out's cost
  local key = p .. ':inbox:' .. cid
  local length = redis.call('RPUSH', key, body)
  local full = length > cap
  if full then  -- take it back, remember the gap: the owner marks the session truncated
    redis.call('RPOP', key)
    local head = tonumber(redis.call('HGET', p .. ':ihead', cid) or '0')
    redis.call('HSET', p .. ':gaps', cid, tostring(head + length - 1))
  end
  local o = redis.call('HGET', owner, cid)
  if o then
    local n = node_of(o)
    redis.call('SADD', p .. ':dirty:' .. n, cid)
    woken[n] = true
  end
  return not full
end
local hwkey = p .. ':fwdhw:' .. me
local hw = tonumber(redis.call('GET', hwkey) or '0')
local top = hw
for i = 1, #forwards do
  local to, topic, body, number = forwards[i][1], forwards[i][2], forwards[i][3], forwards[i][5]
  if number > hw then  -- not applied by an earlier attempt of this batch
    if number > top then top = number end
    if to ~= '' then
      if redis.call('HEXISTS', ids, to) == 0 then
        refused[#refused + 1] = {i, 'unknown'}
      elseif not push(to, body) then
        refused[#refused + 1] = {i, 'full'}
      end
    else
      local skip = {}
      for _, c in ipairs(forwards[i][4]) do skip[c] = true end
      for _, c in ipairs(redis.call('SMEMBERS', p .. ':subs:' .. topic)) do
        if not skip[c] then push(c, body) end
      end
    end
  end
end
if top > hw then redis.call('SET', hwkey, tostring(top), 'PX', 86400000) end
for n in pairs(woken) do
  local key = p .. ':wake:' .. n
  if redis.call('LLEN', key) < 16 then redis.call('RPUSH', key, 'd') end
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', p .. ':dirty:' .. n, ttl)
end
return refused
"""
)
"""Apply a journal batch, fenced: every component it touches must be this node's."""
