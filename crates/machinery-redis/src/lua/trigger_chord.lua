local meta = redis.call('GET', KEYS[1])
if not meta then return -1 end
if string.find(meta, '"ChordTriggered":true', 1, true) then return 0 end
local s, e = string.find(meta, '"ChordTriggered":false', 1, true)
if s then
  redis.call('SET', KEYS[1], string.sub(meta, 1, s - 1) .. '"ChordTriggered":true' .. string.sub(meta, e + 1), 'KEEPTTL')
  return 1
end
local ok, m = pcall(cjson.decode, meta)
if not ok or type(m) ~= 'table' then
  return redis.error_reply('group meta of ' .. KEYS[1] .. ' is not a json object')
end
for k, v in pairs(m) do
  if type(k) == 'string' and string.lower(k) == 'chordtriggered' then
    if v == true then return 0 end
    m[k] = nil
  end
end
m['ChordTriggered'] = true
redis.call('SET', KEYS[1], cjson.encode(m), 'KEEPTTL')
return 1
