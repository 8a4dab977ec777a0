local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do moved = moved + 1 end
redis.call('ZREM', KEYS[3], ARGV[1])
return moved
