-- Reserve a worst-case cost in every budget scope, all or none (see redis_budgets.py).
-- ARGV: prefix, cost, n, then per scope: period key, cap, primed spend, ttl seconds.
local prefix, cost, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 0, n - 1 do
  local b = 4 + i * 4
  local key, cap, primed, ttl = prefix..ARGV[b], tonumber(ARGV[b+1]), ARGV[b+2], tonumber(ARGV[b+3])
  -- A period's first use (or a Redis that lost its data) starts from the ledger's spend.
  if redis.call('HSETNX', key, 'spent', primed) == 1 and ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
  if spent + reserved + cost > cap then return {0, i, spent, reserved} end
end
for i = 0, n - 1 do
  redis.call('HINCRBY', prefix..ARGV[4 + i * 4], 'reserved', cost)
end
return {1}
