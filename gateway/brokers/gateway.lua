#!lua name=__LIBRARY__
-- The gateway's Redis Functions, version __VERSION__. Every gateway process
-- loads this library at start (and again after Redis lost it); any Redis
-- client may call its functions. The library's name and its functions'
-- names carry the version, so two gateway versions on one Redis (a rolling
-- deploy) each keep their own. Nothing in it depends on a node's settings:
-- the history cap is an argument of each call, never baked in here.
--
-- A channel C has three keys, all in one cluster slot (the hash tag {C}),
-- and every function declares all three (a cluster routes by them):
--   __PREFIX__:{C}      the pub/sub name live messages are published on; as a
--                       key, the channel's history cap the gateways last used
--   __PREFIX__:{C}:h    the history stream, capped near that many entries
--   __PREFIX__:{C}:e    the history's epoch; a new one whenever the stream is gone
--
-- Publish:  FCALL __FN___publish___VERSION__ 3 __PREFIX__:{C} __PREFIX__:{C}:h __PREFIX__:{C}:e <data> [<event> [<cap>]]
--   -> id. Without <cap> (redis-cli), the cap the gateways recorded for the
--   channel, else __DEFAULT_CAP__. An id is <epoch>:<stream id>. On a cluster
--   the message goes out by SPUBLISH (sharded pub/sub: it stays within the
--   channel's slot's shard); on a single Redis by PUBLISH, which gateways
--   of every version hear (a rolling deploy from one without sharded
--   pub/sub loses nothing live). Its payload is "\0gw\0" id "\0" event
--   "\0" data, so the gateway can tell it from a raw PUBLISH (single Redis)
--   or SPUBLISH (cluster) of plain text, which is delivered live,
--   fire-and-forget, with no id.

local DEFAULT_CAP = __DEFAULT_CAP__
local USAGE = 'usage: FCALL __FN___publish___VERSION__ 3 __PREFIX__:{channel} '
  .. '__PREFIX__:{channel}:h __PREFIX__:{channel}:e data [event [cap]]'

local function check_keys(keys)
  local base = keys[1]
  if #keys ~= 3 or keys[2] ~= base .. ':h' or keys[3] ~= base .. ':e' then
    return nil
  end
  return base
end

local function epoch_of(keys)
  local epoch = redis.call('GET', keys[3])
  if epoch and redis.call('EXISTS', keys[2]) == 1 then
    return epoch
  end
  return nil
end

local function cap_of(keys, given)
  if given ~= nil then
    local cap = tonumber(given)
    if not cap or cap < 1 or cap ~= math.floor(cap) then
      return nil
    end
    if redis.call('GET', keys[1]) ~= given then
      redis.call('SET', keys[1], given)
    end
    return cap
  end
  return tonumber(redis.call('GET', keys[1]) or '') or DEFAULT_CAP
end

local function publish(keys, args)
  local base = check_keys(keys)
  local data = args[1]
  local event = args[2] or 'message'
  if not base or data == nil then
    return redis.error_reply(USAGE)
  end
  if not string.match(event, '^[A-Za-z0-9_.:-]+$') or #event > 64 then
    return redis.error_reply('invalid event name')
  end
  local cap = cap_of(keys, args[3])
  if not cap then
    return redis.error_reply('invalid history cap: a whole number of at least 1')
  end
  local epoch = epoch_of(keys)
  if not epoch then
    local now = redis.call('TIME')
    epoch = string.format('%x%05x', tonumber(now[1]), tonumber(now[2]))
    redis.call('SET', keys[3], epoch)
  end
  local position = redis.call('XADD', keys[2], 'MAXLEN', '~', cap, '*', 'e', event, 'd', data)
  local id = epoch .. ':' .. position
  local clustered = type(redis.pcall('CLUSTER', 'MYID')) == 'string'
  redis.call(clustered and 'SPUBLISH' or 'PUBLISH', base, '\0gw\0' .. id .. '\0' .. event .. '\0' .. data)
  return id
end

-- Read: FCALL_RO __FN___read___VERSION__ 3 <the three keys> <mode> <arg> [<count>]
--   mode "after": entries after stream id <arg> ("0-0" for all), at most <count>
--   mode "tail":  the last <arg> entries, oldest first
-- -> {epoch or false, max deleted id, first kept id or "0-0", entries}
-- A cursor lost messages when an entry after it was deleted: XDEL moves
-- max-deleted-entry-id; trimming (which Redis 7.0 does not record there)
-- drops the oldest, so any cursor before the first kept entry, once
-- entries were trimmed, may have lost some.
local function read(keys, args)
  if not check_keys(keys) then
    return redis.error_reply('usage: FCALL_RO __FN___read___VERSION__ 3 <the channel keys> mode arg [count]')
  end
  local mode, arg, count = args[1], args[2], tonumber(args[3] or '1000')
  local epoch = epoch_of(keys)
  if not epoch then
    return {false, '0-0', '0-0', {}}
  end
  local info = redis.call('XINFO', 'STREAM', keys[2])
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  local first_kept = '0-0'
  if fields['entries-added'] > fields['length'] and fields['first-entry'] then
    first_kept = fields['first-entry'][1]
  end
  local entries
  if mode == 'tail' then
    entries = redis.call('XREVRANGE', keys[2], '+', '-', 'COUNT', tonumber(arg))
    local n = #entries
    for i = 1, math.floor(n / 2) do
      entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
    end
  else
    entries = redis.call('XRANGE', keys[2], '(' .. arg, '+', 'COUNT', count)
  end
  return {epoch, fields['max-deleted-entry-id'], first_kept, entries}
end

redis.register_function('__FN___publish___VERSION__', publish)
redis.register_function{function_name = '__FN___read___VERSION__', callback = read, flags = {'no-writes'}}
