local name = ARGV[3]
local created = ARGV[5]
local old = redis.call('GET', KEYS[1])
if old then
  local n = #old
  local function last_created(from)
    local pos = nil
    while true do
      local _, e = string.find(old, ',"CreatedAt":"', from, true)
      if not e then return pos end
      pos = e
      from = e + 1
    end
  end
  local e = last_created(math.max(1, n - 96))
  if e == nil then e = last_created(1) end
  if e then
    local q = string.find(old, '"', e + 1, true)
    if q then created = string.sub(old, e, q) end
  end
  if name == '""' then
    local _, t = string.find(old, '"TaskName":"', 1, true)
    if t then
      local i = t + 1
      while i <= n do
        local b = string.byte(old, i)
        if b == 92 then
          i = i + 2
        elseif b == 34 then
          break
        else
          i = i + 1
        end
      end
      if i <= n then name = string.sub(old, t, i) end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2] .. name .. ARGV[4] .. created .. ARGV[6], 'EX', ARGV[1])
if ARGV[7] then
  -- A final state: wake the result waiters (an ACL without the channel only loses the push).
  redis.pcall('PUBLISH', ARGV[7], ARGV[8])
end
return {name, created}
