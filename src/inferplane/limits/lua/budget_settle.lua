-- Swap a reservation for the actual cost; report scopes newly past their soft threshold.
-- ARGV: prefix, reserved, actual, n, then per scope: period key, soft threshold.
local prefix, reserved, actual, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local crossed = {}
for i = 0, n - 1 do
  local key, soft = prefix..ARGV[5 + i * 2], tonumber(ARGV[6 + i * 2])
  local left = redis.call('HINCRBY', key, 'reserved', -reserved)
  if left < 0 then redis.call('HSET', key, 'reserved', 0) end
  local spent = redis.call('HINCRBY', key, 'spent', actual)
  if spent >= soft and redis.call('HSETNX', key, 'alerted', 1) == 1 then
    table.insert(crossed, i)
    table.insert(crossed, spent)
  end
end
return crossed
