"""The Lua scripts of :class:`~genesis_trio.stores.ClusterStore` (run atomically by Redis).

Every script takes the key prefix, this node's incarnation token
(``node/random``) and its node id first. The layout is in the store's
docstring; ``cmsgpack`` is Redis's built-in MessagePack.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = """
local p, me, node = ARGV[1], ARGV[2], ARGV[3]
local owner = p .. ':owner'
local sessions = p .. ':sessions'
local ids = p .. ':ids'
local function node_of(token) return string.match(token, '^(.*)/[^/]*$') end
local function alive(token)
  return redis.call('GET', p .. ':node:' .. node_of(token)) == token
end
"""

CLAIM: Final = (
    _COMMON
    + """
-- ARGV[4]: component id ('' = find it by the session id ARGV[5])
local cid, sid = ARGV[4], ARGV[5]
if cid == '' then
  local row = redis.call('HGET', sessions, sid)
  if not row then return {'none'} end
  cid = cmsgpack.unpack(row)[2]
end
local cur = redis.call('HGET', owner, cid)
if cur and cur ~= me and alive(cur) then return {'busy', cid, cur} end
redis.call('HSET', owner, cid, me)
if cur and cur ~= me then redis.call('SREM', p .. ':dirty:' .. node_of(cur), cid) end
if redis.call('LLEN', p .. ':inbox:' .. cid) > 0 then
  redis.call('SADD', p .. ':dirty:' .. node, cid)  -- what its old node left undrained
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
-- ARGV[4]: HSCAN cursor. Components held by dead nodes (never this one).
local r = redis.call('HSCAN', owner, ARGV[4], 'COUNT', 200)
local found, seen = {}, {}
for i = 1, #r[2], 2 do
  local cid, token = r[2][i], r[2][i + 1]
  if seen[token] == nil then seen[token] = token == me or alive(token) end
  if not seen[token] then found[#found + 1] = cid end
end
return {r[1], found}
"""
)
"""One step over the owners: the components whose node died (to adopt)."""

RELEASE: Final = (
    _COMMON
    + """
local cid = ARGV[4]
if redis.call('HGET', owner, cid) == me then redis.call('HDEL', owner, cid) end
redis.call('SREM', p .. ':dirty:' .. node, cid)
return 1
"""
)
"""Let go of a component (after its last change was committed)."""

RENEW: Final = (
    _COMMON
    + """
-- ARGV[4]: lease in milliseconds
local cur = redis.call('GET', p .. ':node:' .. node)
if cur == me then return redis.call('PEXPIRE', p .. ':node:' .. node, ARGV[4]) end
if cur then return redis.error_reply('FENCED node ' .. node .. ' (it is ' .. cur .. ' now)') end
return redis.error_reply('FENCED node ' .. node .. ' (its lease lapsed)')
"""
)
"""Keep this node alive. A lapsed lease (others may have taken its components) fences it."""

WRITE: Final = (
    _COMMON
    + """
-- ARGV[4]: the batch (MessagePack), ARGV[5]: an inbox's capacity
local b = cmsgpack.unpack(ARGV[4])
local cap = tonumber(ARGV[5])
local fence, deletes, messages, rewrites = b[1], b[2], b[3], b[4]
local appends, trims, rows, consumed, forwards = b[5], b[6], b[7], b[8], b[9]
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
for i = 1, #consumed do
  local cid, n = consumed[i][1], consumed[i][2]
  local key = p .. ':inbox:' .. cid
  redis.call('LTRIM', key, n, -1)
  if redis.call('LLEN', key) == 0 then redis.call('SREM', p .. ':dirty:' .. node, cid) end
end
local refused, woken = {}, {}
local function push(cid, body)
  local key = p .. ':inbox:' .. cid
  if redis.call('LLEN', key) >= cap then return false end
  redis.call('RPUSH', key, body)
  local o = redis.call('HGET', owner, cid)
  if o then
    local n = node_of(o)
    redis.call('SADD', p .. ':dirty:' .. n, cid)
    woken[n] = true
  end
  return true
end
for i = 1, #forwards do
  local to, topic, body = forwards[i][1], forwards[i][2], forwards[i][3]
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
for n in pairs(woken) do
  local key = p .. ':wake:' .. n
  if redis.call('LLEN', key) < 16 then redis.call('RPUSH', key, 'd') end
end
return refused
"""
)
"""Apply a journal batch, fenced: every component it touches must be this node's."""
