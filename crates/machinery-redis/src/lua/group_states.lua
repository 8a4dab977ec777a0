local meta = redis.call('GET', KEYS[1])
if not meta then return false end
local out = {meta}
local ok, m = pcall(cjson.decode, meta)
if not ok or type(m) ~= 'table' then return out end
local ids = nil
for k, v in pairs(m) do
  if type(k) == 'string' and string.lower(k) == 'taskuuids' and type(v) == 'table' then ids = v end
end
if ids == nil then return out end
local n = #ids
local i = 1
while i <= n do
  local j = math.min(i + 499, n)
  local vals = redis.call('MGET', unpack(ids, i, j))
  for k = 1, #vals do out[#out + 1] = vals[k] end
  i = j + 1
end
return out
