-- Replace a reservation with the tokens used; free the concurrency lease.
local prefix, rid, actual, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 0, n - 1 do
  local name = ARGV[5 + i]
  local ta, tt = prefix..'ta:'..name, prefix..'tt:'..name
  local old = redis.call('HGET', ta, rid)
  if old then
    redis.call('HSET', ta, rid, actual)
    redis.call('INCRBY', tt, actual - tonumber(old))
  end
  redis.call('ZREM', prefix..'fl:'..name, rid)
end
return 1
