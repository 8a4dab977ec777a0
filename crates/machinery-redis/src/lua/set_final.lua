redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
-- Wake the result waiters (an ACL without the channel only loses the push).
redis.pcall('PUBLISH', ARGV[3], ARGV[4])
return 1
