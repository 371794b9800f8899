-- Admit a request across its scopes, all or none (see redis_limiter.py).
local prefix, rid, tokens, n, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local horizon = now - window
local out = {1, now}
for i = 0, n - 1 do
  local b = 6 + i * 4
  local name, rpm, tpm, par = ARGV[b], tonumber(ARGV[b+1]), tonumber(ARGV[b+2]), tonumber(ARGV[b+3])
  local rq, tk, ta, tt, fl = prefix..'rq:'..name, prefix..'tk:'..name, prefix..'ta:'..name, prefix..'tt:'..name, prefix..'fl:'..name
  redis.call('ZREMRANGEBYSCORE', rq, '-inf', horizon)
  local old = redis.call('ZRANGEBYSCORE', tk, '-inf', horizon)
  if #old > 0 then
    local amounts = redis.call('HMGET', ta, unpack(old))
    local sum = 0
    for _, a in ipairs(amounts) do sum = sum + (tonumber(a) or 0) end
    redis.call('DECRBY', tt, sum)
    redis.call('HDEL', ta, unpack(old))
    redis.call('ZREMRANGEBYSCORE', tk, '-inf', horizon)
  end
  redis.call('ZREMRANGEBYSCORE', fl, '-inf', now)
  local inflight = redis.call('ZCARD', fl)
  if par > 0 and inflight >= par then return {0, i, 'concurrency', 1000, inflight} end
  local count = redis.call('ZCARD', rq)
  if rpm > 0 and count >= rpm then
    local oldest = redis.call('ZRANGE', rq, 0, 0, 'WITHSCORES')
    return {0, i, 'requests', tonumber(oldest[2]) + window - now, count}
  end
  local total = tonumber(redis.call('GET', tt) or '0')
  if tpm > 0 and total + tokens > tpm then
    if tokens > tpm then return {0, i, 'too_large', window, total} end
    local excess = total + tokens - tpm
    local wait = window
    local entries = redis.call('ZRANGE', tk, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      excess = excess - (tonumber(redis.call('HGET', ta, entries[j])) or 0)
      if excess <= 0 then wait = tonumber(entries[j+1]) + window - now break end
    end
    return {0, i, 'tokens', wait, total}
  end
  table.insert(out, count)
  table.insert(out, total)
end
for i = 0, n - 1 do
  local b = 6 + i * 4
  local name, par = ARGV[b], tonumber(ARGV[b+3])
  local rq, tk, ta, tt, fl = prefix..'rq:'..name, prefix..'tk:'..name, prefix..'ta:'..name, prefix..'tt:'..name, prefix..'fl:'..name
  redis.call('ZADD', rq, now, rid)
  redis.call('ZADD', tk, now, rid)
  redis.call('HSET', ta, rid, tokens)
  redis.call('INCRBY', tt, tokens)
  if par > 0 then redis.call('ZADD', fl, now + lease, rid) end
  for _, k in ipairs({rq, tk, ta, tt}) do redis.call('PEXPIRE', k, window * 2) end
  redis.call('PEXPIRE', fl, lease * 2)
end
return out
