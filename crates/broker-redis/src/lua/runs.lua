-- The cluster's runs in progress (core's RunRegistry). KEYS[1] the
-- thread's claim (JSON), KEYS[2] the owner's sorted set thread -> expiry
-- (ms, Redis's clock; expired entries go first), KEYS[3] the run id's
-- thread. ARGV[1] 'claim' | 'write' | 'release', ARGV[2] the claim token,
-- ARGV[3] the claim JSON, ARGV[4] the thread, ARGV[5] the run id ('' until
-- known), ARGV[6] ttl ms, ARGV[7] max runs per owner, ARGV[8] the claim's
-- version (each update of a claim has a higher one).
-- 'write' is both an update and the keep-alive: it puts the claim back if
-- Redis lost it (restarted empty) and never replaces a newer version of
-- it with an older one.
-- Returns 0 done, 1 thread busy, 2 owner at max, 3 held by another claim.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = redis.call('GET', KEYS[1])
local mine = false
local newer = false
if held then
  local ok, c = pcall(cjson.decode, held)
  mine = ok and type(c) == 'table' and c.claim == ARGV[2]
  newer = mine and (tonumber(c.version) or 0) > tonumber(ARGV[8])
end
if ARGV[1] == 'claim' then
  if held then
    return 1
  end
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[7]) then
    return 2
  end
elseif ARGV[1] == 'release' then
  if not mine then
    return 3
  end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  if ARGV[5] ~= '' then
    redis.call('DEL', KEYS[3])
  end
  return 0
elseif held and not mine then
  return 3
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
if newer then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ttl)
end
return 0
