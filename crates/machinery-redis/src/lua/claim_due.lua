local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch = tonumber(ARGV[2])
local until_ms = now + tonumber(ARGV[3])
local out = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, batch)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, batch)
for _, m in ipairs(due) do out[#out + 1] = m end
for _, m in ipairs(out) do redis.call('ZADD', KEYS[2], until_ms, m) end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return out
