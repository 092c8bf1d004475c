-- The cluster's runs in progress (core's RunRegistry). KEYS[1] the
-- thread's claim (JSON), KEYS[2] the owner's sorted set thread -> expiry
-- (ms, Redis's clock; expired entries go first), KEYS[3] the run id's
-- thread. ARGV[1] 'claim' | 'write' | 'keep' (the expiries only: a
-- keep-alive must never put back an older claim) | 'release', ARGV[2] the claim token,
-- ARGV[3] the claim JSON, ARGV[4] the thread, ARGV[5] the run id ('' until
-- known), ARGV[6] ttl ms, ARGV[7] max runs per owner.
-- Returns 0 done, 1 thread busy, 2 owner at max, 3 not this claim's.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if ARGV[1] == 'claim' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return 1
  end
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then
    return 2
  end
else
  local held = redis.call('GET', KEYS[1])
  if not held or cjson.decode(held).claim ~= ARGV[2] then
    return 3
  end
  if ARGV[1] == 'release' then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[4])
    if ARGV[5] ~= '' then
      redis.call('DEL', KEYS[3])
    end
    return 0
  end
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
if ARGV[1] == 'keep' then
  redis.call('PEXPIRE', KEYS[1], ttl)
  if ARGV[5] ~= '' then
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ttl)
end
return 0
