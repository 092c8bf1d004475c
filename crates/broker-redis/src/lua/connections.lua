-- One user's connections on every node. KEYS[1] sorted set connection id
-- -> expiry (ms, Redis's clock); expired entries (a crashed node's) go
-- first. ARGV[1] 'admit' (ARGV[2] connection, ARGV[3] max, ARGV[4] ttl
-- ms: 1 when counted, 0 when the user is at max; an entry already there
-- is kept alive) or 'release' (ARGV[2] connection).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
local ttl = tonumber(ARGV[4])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
