if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local stored = tonumber(redis.call('GET', KEYS[1]))
if stored == nil then
  return redis.error_reply('lock ' .. KEYS[1] .. ' does not hold a number')
end
if stored ~= 0 and tonumber(ARGV[3]) > stored then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
