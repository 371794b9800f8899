-- Admit a request across its scopes, all or none (see redis_limiter.py).
-- ARGV: prefix, request id, tokens (-1: none yet), count (1: count the request and take a
-- concurrency slot; 0: only add tokens to a request counted before), lease ms, n, then per
-- scope: name, rpm, tpm, max_parallel (0: no limit). A log is kept only where a limit is.
-- Returns {1, now, then per scope: requests, tokens in the window after committing}, or
-- {0, scope index, kind, wait ms, used, requests in the window}.
local prefix, rid, tokens, count = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local lease, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local horizon = now - window
-- Without its tokens yet, a request still needs one to fit.
local need = tokens >= 0 and tokens or 1
local out = {1, now}
for i = 0, n - 1 do
  local b = 7 + i * 4
  local name, rpm, tpm, par = ARGV[b], tonumber(ARGV[b+1]), tonumber(ARGV[b+2]), tonumber(ARGV[b+3])
  local rq, tk, ta, tt, fl = prefix..'rq:'..name, prefix..'tk:'..name, prefix..'ta:'..name, prefix..'tt:'..name, prefix..'fl:'..name
  local requests, total = 0, 0
  if count and rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', rq, '-inf', horizon)
    requests = redis.call('ZCARD', rq)
  end
  if count and par > 0 then
    redis.call('ZREMRANGEBYSCORE', fl, '-inf', now)
    local inflight = redis.call('ZCARD', fl)
    if inflight >= par then return {0, i, 'concurrency', 1000, inflight, requests} end
  end
  if count and rpm > 0 then
    if requests >= rpm then
      local oldest = redis.call('ZRANGE', rq, 0, 0, 'WITHSCORES')
      return {0, i, 'requests', tonumber(oldest[2]) + window - now, requests, requests}
    end
  end
  if tpm > 0 then
    local old = redis.call('ZRANGEBYSCORE', tk, '-inf', horizon)
    if #old > 0 then
      local amounts = redis.call('HMGET', ta, unpack(old))
      local sum = 0
      for _, a in ipairs(amounts) do sum = sum + (tonumber(a) or 0) end
      redis.call('DECRBY', tt, sum)
      redis.call('HDEL', ta, unpack(old))
      redis.call('ZREMRANGEBYSCORE', tk, '-inf', horizon)
    end
    total = tonumber(redis.call('GET', tt) or '0')
    if total + need > tpm then
      if need > tpm then return {0, i, 'too_large', window, total, requests} end
      local excess = total + need - tpm
      local wait = window
      local entries = redis.call('ZRANGE', tk, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        excess = excess - (tonumber(redis.call('HGET', ta, entries[j])) or 0)
        if excess <= 0 then wait = tonumber(entries[j+1]) + window - now break end
      end
      return {0, i, 'tokens', wait, total, requests}
    end
  end
  table.insert(out, requests + ((count and rpm > 0) and 1 or 0))
  table.insert(out, total + ((tokens >= 0 and tpm > 0) and tokens or 0))
end
for i = 0, n - 1 do
  local b = 7 + i * 4
  local name, rpm, tpm, par = ARGV[b], tonumber(ARGV[b+1]), tonumber(ARGV[b+2]), tonumber(ARGV[b+3])
  if count and rpm > 0 then
    local rq = prefix..'rq:'..name
    redis.call('ZADD', rq, now, rid)
    redis.call('PEXPIRE', rq, window * 2)
  end
  if count and par > 0 then
    local fl = prefix..'fl:'..name
    redis.call('ZADD', fl, now + lease, rid)
    redis.call('PEXPIRE', fl, lease * 2)
  end
  if tokens >= 0 and tpm > 0 then
    local tk, ta, tt = prefix..'tk:'..name, prefix..'ta:'..name, prefix..'tt:'..name
    redis.call('ZADD', tk, now, rid)
    redis.call('HSET', ta, rid, tokens)
    redis.call('INCRBY', tt, tokens)
    for _, k in ipairs({tk, ta, tt}) do redis.call('PEXPIRE', k, window * 2) end
  end
end
return out
