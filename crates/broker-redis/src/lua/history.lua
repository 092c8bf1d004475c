-- A channel's position and the kept history a reader needs, on Redis's
-- clock. KEYS[1] meta hash, KEYS[2] history list (newest first).
-- ARGV[1] meta ttl (s); ARGV[2] an epoch to fix when the channel has none,
-- so the position read before the first publication holds; ARGV[3] the
-- reader's offset ('' for none: then the newest ARGV[4] entries).
-- Returns {top offset, epoch, now millis, entries newest first...}.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {top, epoch, now}
local count
if ARGV[3] == '' then
  count = tonumber(ARGV[4])
else
  -- Offsets in the list are consecutive: the ones after the reader's are
  -- the newest (top - since).
  local since = tonumber(ARGV[3])
  if since >= top then return out end
  count = top - since
end
if count > 0 then
  for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, count - 1)) do
    out[#out + 1] = entry
  end
end
return out
