#!lua name=__LIBRARY__
-- The gateway's Redis Functions. Loaded (FUNCTION LOAD REPLACE) by every
-- gateway process at start; any Redis client may call them.
--
-- A channel C lives under the base key  __PREFIX__:{C}  (the hash tag keeps
-- all of a channel's keys, and its pub/sub name, in one cluster slot):
--   __PREFIX__:{C}      the pub/sub name live messages are published on
--   __PREFIX__:{C}:h    the history stream, capped near __MAXLEN__ entries
--   __PREFIX__:{C}:e    the history's epoch; a new one whenever the stream is gone
--
-- Publish:  FCALL __FN___publish 1 __PREFIX__:{C} <data> [<event>]  -> id
-- An id is <epoch>:<stream id>. The pub/sub payload is
-- "\0gw\0" id "\0" event "\0" data, so the gateway can tell it from a raw
-- PUBLISH of plain text (delivered live, fire-and-forget, with no id).

local MAXLEN = __MAXLEN__

local function epoch_of(base)
  local epoch = redis.call('GET', base .. ':e')
  if epoch and redis.call('EXISTS', base .. ':h') == 1 then
    return epoch
  end
  return nil
end

local function publish(keys, args)
  local base = keys[1]
  local data = args[1]
  local event = args[2] or 'message'
  if data == nil then
    return redis.error_reply('usage: FCALL __FN___publish 1 __PREFIX__:{channel} data [event]')
  end
  if not string.match(event, '^[A-Za-z0-9_.:-]+$') or #event > 64 then
    return redis.error_reply('invalid event name')
  end
  local epoch = epoch_of(base)
  if not epoch then
    local now = redis.call('TIME')
    epoch = string.format('%x%05x', tonumber(now[1]), tonumber(now[2]))
    redis.call('SET', base .. ':e', epoch)
  end
  local position = redis.call('XADD', base .. ':h', 'MAXLEN', '~', MAXLEN, '*', 'e', event, 'd', data)
  local id = epoch .. ':' .. position
  redis.call('PUBLISH', base, '\0gw\0' .. id .. '\0' .. event .. '\0' .. data)
  return id
end

-- Read: FCALL_RO __FN___read 1 __PREFIX__:{C} <mode> <arg> [<count>]
--   mode "after": entries after stream id <arg> ("0-0" for all), at most <count>
--   mode "tail":  the last <arg> entries, oldest first
-- -> {epoch or false, max deleted id, first kept id or "0-0", entries}
-- A cursor lost messages when an entry after it was deleted: XDEL moves
-- max-deleted-entry-id; trimming (which Redis 7.0 does not record there)
-- drops the oldest, so any cursor before the first kept entry, once
-- entries were trimmed, may have lost some.
local function read(keys, args)
  local base = keys[1]
  local mode, arg, count = args[1], args[2], tonumber(args[3] or '1000')
  local epoch = epoch_of(base)
  if not epoch then
    return {false, '0-0', '0-0', {}}
  end
  local info = redis.call('XINFO', 'STREAM', base .. ':h')
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  local first_kept = '0-0'
  if fields['entries-added'] > fields['length'] and fields['first-entry'] then
    first_kept = fields['first-entry'][1]
  end
  local entries
  if mode == 'tail' then
    entries = redis.call('XREVRANGE', base .. ':h', '+', '-', 'COUNT', tonumber(arg))
    local n = #entries
    for i = 1, math.floor(n / 2) do
      entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
    end
  else
    entries = redis.call('XRANGE', base .. ':h', '(' .. arg, '+', 'COUNT', count)
  end
  return {epoch, fields['max-deleted-entry-id'], first_kept, entries}
end

redis.register_function('__FN___publish', publish)
redis.register_function{function_name = '__FN___read', callback = read, flags = {'no-writes'}}
