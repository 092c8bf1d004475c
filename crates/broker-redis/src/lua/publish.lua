-- Publish one publication, atomically: next offset, history, fan-out.
-- KEYS[1] meta hash {s = top offset, e = epoch}
-- KEYS[2] history list, newest first: "offset millis data"
-- ARGV[1] data, ARGV[2] history size, ARGV[3] history ttl (ms, 0: none),
-- ARGV[4] meta ttl (s), ARGV[5] pub/sub channel, ARGV[6] an epoch to
-- start with when the channel has none (new, or its meta was lost: then
-- any history left is of another epoch and goes).
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
local size = tonumber(ARGV[2])
if size > 0 then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('LPUSH', KEYS[2], offset .. ' ' .. now .. ' ' .. ARGV[1])
  redis.call('LTRIM', KEYS[2], 0, size - 1)
  local ttl = tonumber(ARGV[3])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  else
    redis.call('EXPIRE', KEYS[2], ARGV[4])
  end
end
redis.call('PUBLISH', ARGV[5], 'p' .. offset .. ' ' .. epoch .. ' ' .. ARGV[1])
return {offset, epoch}
