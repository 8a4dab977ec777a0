if redis.call('EXISTS', KEYS[2]) == 0 then
  local meta = redis.call('GET', KEYS[1])
  if not meta then return -1 end
  local ok, m = pcall(cjson.decode, meta)
  if not ok or type(m) ~= 'table' then
    return redis.error_reply('group meta of ' .. KEYS[1] .. ' is not a json object')
  end
  local ids = {}
  for k, v in pairs(m) do
    if type(k) == 'string' and string.lower(k) == 'taskuuids' and type(v) == 'table' then ids = v end
  end
  redis.call('DEL', KEYS[3])
  local n = #ids
  local i = 1
  while i <= n do
    local j = math.min(i + 999, n)
    redis.call('RPUSH', KEYS[3], unpack(ids, i, j))
    i = j + 1
  end
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  if n > 0 then redis.call('EXPIRE', KEYS[3], ARGV[2]) end
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
while true do
  local id = redis.call('LINDEX', KEYS[3], 0)
  if not id then break end
  if redis.call('SISMEMBER', KEYS[2], id) == 0 then
    local st = redis.call('GET', id)
    if st and (string.find(st, '"State":"SUCCESS"', 1, true) or string.find(st, '"State":"FAILURE"', 1, true)) then
      redis.call('SADD', KEYS[2], id)
    else
      break
    end
  end
  redis.call('LPOP', KEYS[3])
end
return redis.call('SCARD', KEYS[2])
