#!lua name=__LIBRARY__
-- The gateway's presence functions, version __VERSION__ (a library of its own,
-- beside the publish library: either may change without the other).
--
-- A channel C keeps its presence in five keys of one cluster slot ({C}):
--   __PREFIX__:{C}      the channel's pub/sub name: joins and leaves are
--                       published there as "\0gwp\0" .. JSON, a payload the
--                       gateway tells from a message by that marker
--   __PREFIX__:{C}:pm   hash  node|user -> connections that node holds
--   __PREFIX__:{C}:pu   hash  user -> how many nodes hold the user
--   __PREFIX__:{C}:pi   hash  user -> the user's info (JSON text)
--   __PREFIX__:{C}:pn   hash  node -> its lease on this channel (ms, Redis clock)
--
-- Each call is atomic, so a join or a leave is decided, and published, by
-- exactly one call: several nodes sweeping one dead node at once announce
-- each of its users' leaves once (the first sweep removes them; the others
-- find nothing). Every key expires KEEP_MS after the last call that touched
-- it, so a channel everyone left costs nothing for long.

local MARKER = '\0gwp\0'
local KEEP_MS = 60000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function keep(keys)
  for i = 2, 5 do
    redis.call('PEXPIRE', keys[i], KEEP_MS)
  end
end

local function owner_of(field)
  return string.match(field, '^([^|]*)|')
end

local function drop(keys, field, user, leaves)
  redis.call('HDEL', keys[2], field)
  if redis.call('HINCRBY', keys[3], user, -1) <= 0 then
    local info = redis.call('HGET', keys[4], user) or 'null'
    redis.call('HDEL', keys[3], user)
    redis.call('HDEL', keys[4], user)
    table.insert(leaves, {user, info})
  end
end

local function announce(keys, joins, leaves)
  if #joins == 0 and #leaves == 0 then
    return ''
  end
  local said = {u = redis.call('HLEN', keys[3]), j = joins, l = leaves}
  local payload = cjson.encode(said)
  redis.call('SPUBLISH', keys[1], MARKER .. payload)
  return payload
end

-- FCALL __FN___presence_update___VERSION__ 5 <keys> node lease_ms [user count info]...
-- Sets node's connection count of each user (0: gone); renews node's lease.
-- -> the JSON published (joins and leaves this call produced), or ''.
local function update(keys, args)
  local node, lease = args[1], tonumber(args[2])
  redis.call('HSET', keys[5], node, now_ms() + lease)
  local joins, leaves = {}, {}
  for i = 3, #args, 3 do
    local user, count, info = args[i], tonumber(args[i + 1]), args[i + 2]
    local field = node .. '|' .. user
    local old = tonumber(redis.call('HGET', keys[2], field) or '0')
    if count > 0 then
      redis.call('HSET', keys[2], field, count)
      redis.call('HSET', keys[4], user, info)
      if old == 0 and redis.call('HINCRBY', keys[3], user, 1) == 1 then
        table.insert(joins, {user, info})
      end
    elseif old > 0 then
      drop(keys, field, user, leaves)
    end
  end
  keep(keys)
  return announce(keys, joins, leaves)
end

-- FCALL __FN___presence_sweep___VERSION__ 5 <keys> node lease_ms mine
-- Drops the members of every node whose lease ran out; renews node's lease
-- when mine is 1. -> {1 if node's lease was there (or not asked), payload}.
local function sweep(keys, args)
  local node, lease, mine = args[1], tonumber(args[2]), args[3] == '1'
  local now = now_ms()
  local had = 1
  if mine then
    had = 1 - redis.call('HSET', keys[5], node, now + lease)
  end
  local dead, any = {}, false
  local leases = redis.call('HGETALL', keys[5])
  for i = 1, #leases, 2 do
    if tonumber(leases[i + 1]) < now then
      dead[leases[i]] = true
      any = true
      redis.call('HDEL', keys[5], leases[i])
    end
  end
  local leaves = {}
  if any then
    local members = redis.call('HGETALL', keys[2])
    for i = 1, #members, 2 do
      local owner = owner_of(members[i])
      if owner and dead[owner] then
        drop(keys, members[i], string.sub(members[i], #owner + 2), leaves)
      end
    end
  end
  if mine then
    keep(keys)
  end
  return {had, announce(keys, {}, leaves)}
end

-- FCALL_RO __FN___presence_read___VERSION__ 5 <keys> most
-- -> JSON {users, connections, members: [[user, info, connections]...]},
-- members left out past most; members of nodes whose lease ran out are not counted.
local function read(keys, args)
  local most = tonumber(args[1])
  local now = now_ms()
  local live = {}
  local leases = redis.call('HGETALL', keys[5])
  for i = 1, #leases, 2 do
    if tonumber(leases[i + 1]) >= now then
      live[leases[i]] = true
    end
  end
  local counts, order, connections = {}, {}, 0
  local members = redis.call('HGETALL', keys[2])
  for i = 1, #members, 2 do
    local owner = owner_of(members[i])
    if owner and live[owner] then
      local user = string.sub(members[i], #owner + 2)
      local n = tonumber(members[i + 1])
      if not counts[user] then
        counts[user] = 0
        table.insert(order, user)
      end
      counts[user] = counts[user] + n
      connections = connections + n
    end
  end
  local result = {users = #order, connections = connections}
  if #order <= most then
    local list = {}
    for _, user in ipairs(order) do
      table.insert(list, {user, redis.call('HGET', keys[4], user) or 'null', counts[user]})
    end
    result.members = list
  end
  return cjson.encode(result)
end

redis.register_function('__FN___presence_update___VERSION__', update)
redis.register_function('__FN___presence_sweep___VERSION__', sweep)
redis.register_function{
  function_name = '__FN___presence_read___VERSION__',
  callback = read,
  flags = {'no-writes'},
}
