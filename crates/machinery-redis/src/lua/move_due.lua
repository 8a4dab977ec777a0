local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
local queues = {}
local order = {}
for _, m in ipairs(due) do
  local q = nil
  if string.sub(m, 1, 9) == '{"UUID":"' then
    q = string.match(m, '"RoutingKey":"([^"\\]*)"')
  end
  if q == nil then
    local ok, sig = pcall(cjson.decode, m)
    if ok and type(sig) == 'table' then
      for k, v in pairs(sig) do
        if type(k) == 'string' and string.lower(k) == 'routingkey' and type(v) == 'string' then
          q = v
        end
      end
    end
  end
  if q == nil or q == '' then q = ARGV[3] end
  local list = queues[q]
  if list == nil then
    list = {}
    queues[q] = list
    order[#order + 1] = q
  end
  list[#list + 1] = m
end
for _, q in ipairs(order) do
  redis.call('RPUSH', q, unpack(queues[q]))
end
redis.call('ZREM', KEYS[1], unpack(due))
return #due
