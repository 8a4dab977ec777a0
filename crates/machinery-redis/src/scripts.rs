//! The Lua scripts. Each runs atomically on the server; `redis::Script` sends `EVALSHA` and
//! loads the script again after a server restart (`NOSCRIPT`).

use std::sync::LazyLock;

use redis::Script;

/// Settle acked messages and refill, in one step: remove each acked message (`ARGV[2..]`)
/// from the consumer's processing list, then move up to `ARGV[1]` messages from the head of
/// the queue to the tail of that list. Returns how many acked messages were no longer there
/// and the messages taken (oldest first).
///
/// KEYS: queue, processing list.
pub(crate) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
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
",
    )
});

/// Heartbeat of one consumer (when `ARGV[1]` is not empty) and recovery of dead consumers:
/// every registered consumer whose lease ended has its processing list moved back to the
/// HEAD of the queue, in its original order, and is removed from the registry. Leases use
/// the server's clock so that clock skew between workers does not matter. Returns how many
/// messages were moved back.
///
/// KEYS: registry, queue. ARGV: consumer id, lease in ms, processing key prefix.
pub(crate) static TICK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
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
",
    )
});

/// A consumer that stopped gracefully gives back what it still holds: its processing list
/// goes back to the head of the queue, and it leaves the registry.
///
/// KEYS: processing list, queue, registry. ARGV: consumer id.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
redis.call('ZREM', KEYS[3], ARGV[1])
return moved
",
    )
});

/// Make a consumer's processing list hold exactly what the consumer holds, after a lost reply:
/// remove one occurrence of each failed ack, keep one entry per held message (`ARGV[2..h+1]`,
/// counted as a multiset), and move every other entry back to the HEAD of the queue, in list
/// order. Returns how many were moved back and how many failed acks were removed.
///
/// KEYS: processing list, queue. ARGV: h (how many held messages follow), the held messages,
/// then the failed acks.
pub(crate) static RECONCILE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
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
",
    )
});

/// Move up to `ARGV[2]` due delayed tasks (score <= `ARGV[1]`, Unix ns) to the tail of the
/// queue named by their `RoutingKey` (`ARGV[3]` when empty or unreadable), as Go's `RPUSH`
/// does. Members stay Go's signature JSON byte for byte. Returns how many were moved.
///
/// The routing key is read with a pattern when the member has Go's field order (the first
/// `"RoutingKey":` is then the top-level one, since earlier fields are strings) and with
/// cjson otherwise. Queue keys are computed inside the script: not for Redis Cluster.
///
/// KEYS: delayed set. ARGV: now ns, batch size, default queue.
pub(crate) static MOVE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
"#,
    )
});

/// Write a task state, keeping the stored `CreatedAt` and (when the new one is empty)
/// `TaskName`, as Go's GET-then-SET does, in one atomic step. The new JSON arrives cut in
/// five pieces around the task name and the creation time so that the stored bytes stay
/// exactly Go's encoding. Returns the task name and creation time JSON that were stored.
///
/// `CreatedAt` is the last occurrence of its key (the key is the last-but-one field; a map
/// result may hold an earlier `CreatedAt`), searched from near the end first; `TaskName` is
/// the first occurrence (only the task UUID, a string, precedes it).
///
/// KEYS: task UUID. ARGV: ttl seconds, head (through `"TaskName":`), task name JSON, middle
/// (through `"CreatedAt":`), created-at JSON, tail.
pub(crate) static SET_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
return {name, created}
"#,
    )
});

/// Flip `ChordTriggered` to true in a stored GroupMeta, once. Returns 1 to the caller that
/// flipped it, 0 when it was already set, -1 when the group is unknown. The flip edits the
/// bytes in place (a JSON key cannot occur inside a string value, whose quotes are escaped),
/// so the stored meta stays Go's encoding and keeps its expiry.
///
/// KEYS: group UUID.
pub(crate) static TRIGGER_CHORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
"#,
    )
});

/// Release a redsync mutex: delete it only when it still holds our token (Go's script, byte
/// for byte).
///
/// KEYS: mutex. ARGV: token.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#,
    )
});

/// The group meta followed by the stored state of every member, in `TaskUUIDs` order (nil
/// for members with nothing stored), in one round trip. Nil when the group is unknown.
/// Member keys come from the meta: not for Redis Cluster.
///
/// KEYS: group UUID.
pub(crate) static GROUP_STATES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
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
",
    )
});

/// Go's periodic-task lock: `SET key <deadline ns> NX PX <ms>`; when the key exists and the
/// deadline stored in it has passed, take it over. Atomic, so it needs no GETSET race.
/// Returns 1 when the caller holds the lock.
///
/// KEYS: lock key. ARGV: deadline ns, ttl ms, now ns.
pub(crate) static LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
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
",
    )
});

/// Record that a group member is done and count the distinct members done, in amortised
/// O(1): a set of done members, and the list of members not yet seen done, in group order
/// (copied once from the meta). The head of that list is popped while it is in the set or its
/// stored state is SUCCESS / FAILURE (written by a Go worker, which does not use the set);
/// each member is popped once, so all calls together walk the group once. When the list is
/// empty every member is done and the count is exact. Returns -1 when the group is unknown.
/// Member keys are computed: not for Redis Cluster.
///
/// KEYS: group meta, done set, waiting list. ARGV: member UUID, ttl seconds.
pub(crate) static MARK_DONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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
"#,
    )
});
