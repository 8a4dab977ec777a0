local missing = 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[2], 1, ARGV[i]) == 0 then missing = missing + 1 end
end
local n = tonumber(ARGV[1])
if n > 0 then
  local msgs = redis.call('LPOP', KEYS[1], n)
  if msgs then
    redis.call('RPUSH', KEYS[2], unpack(msgs))
    return {missing, msgs}
  end
end
return {missing, {}}
