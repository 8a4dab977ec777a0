local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 100)
local moved = 0
for _, id in ipairs(dead) do
  local p = ARGV[3] .. id
  while redis.call('LMOVE', p, KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
  redis.call('ZREM', KEYS[1], id)
end
return moved
