-- A channel's presence, expired entries removed first (a crashed node's
-- clients go once their expiry passes). KEYS[1] hash connection -> info,
-- KEYS[2] sorted set connection -> expiry (ms, Redis's clock).
-- ARGV[1] 'add' (ARGV[2] connection, ARGV[3] info, ARGV[4] ttl ms),
-- 'remove' (ARGV[2] connection) or 'list'.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local op = ARGV[1]
if op == 'add' then
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  return {}
elseif op == 'remove' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return {}
end
return redis.call('HVALS', KEYS[1])
