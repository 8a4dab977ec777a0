local h = tonumber(ARGV[1])
local removed = 0
for i = h + 2, #ARGV do
  removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
local keep = {}
for i = 2, h + 1 do keep[ARGV[i]] = (keep[ARGV[i]] or 0) + 1 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local kept = {}
local back = {}
for _, m in ipairs(items) do
  local k = keep[m]
  if k and k > 0 then
    keep[m] = k - 1
    kept[#kept + 1] = m
  else
    back[#back + 1] = m
  end
end
if #back > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #kept, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(kept, i, math.min(i + 999, #kept)))
  end
  for i = #back, 1, -1 do
    redis.call('LPUSH', KEYS[2], back[i])
  end
end
return {#back, removed}
