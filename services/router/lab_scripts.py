"""The Lua scripts of the lab's shared books (:mod:`services.router.lab`): each runs on Redis in one
round trip, atomically, with Redis's own clock (``TIME``) for every lease."""

# The takes of one batch (every request that asked while the previous call was on the wire), in order.
# KEYS: (slots, trial) per take. ARGV: lease ms, then (lease id, cap, limit — the cap less slots reserved
# for others —, want the trial 1/0) per take. Returns a verdict per take: 1 taken, 2 taken as the trial,
# 0 saturated, -1 reserved, -2 another replica's trial is in flight.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local slots, trial, a = KEYS[2 * i - 1], KEYS[2 * i], 4 * i - 2
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local n = redis.call('ZCARD', slots)
  local verdict = 1
  if n >= tonumber(ARGV[a + 1]) then verdict = 0
  elseif n >= tonumber(ARGV[a + 2]) then verdict = -1
  elseif ARGV[a + 3] == '1' then
    if redis.call('SET', trial, ARGV[a], 'NX', 'PX', lease) then verdict = 2 else verdict = -2 end
  end
  if verdict > 0 then redis.call('ZADD', slots, now + lease, ARGV[a]) end
  out[i] = verdict
end
return out
"""

# The gives of one batch. KEYS: (slots, trial) per lease. ARGV: the lease ids.
GIVE = """
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[2 * i - 1], ARGV[i])
  if redis.call('GET', KEYS[2 * i]) == ARGV[i] then redis.call('DEL', KEYS[2 * i]) end
end
return #ARGV
"""

# KEYS: replicas, leader, then (slots, trial) per held lease. ARGV: lease ms, replica id, leader wanted
# (1/0), then (lease id, trial 1/0) per held lease. Renews every held lease (writing back those Redis
# lost), the replica's heartbeat and the leadership. Returns {replicas alive, leader (1/0)}.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
local leader = 0
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[2] then
  redis.call('PEXPIRE', KEYS[2], lease)
  leader = 1
elseif not holder and ARGV[3] == '1' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', lease)
  leader = 1
end
local k = 3
for i = 4, #ARGV, 2 do
  redis.call('ZADD', KEYS[k], now + lease, ARGV[i])
  if ARGV[i + 1] == '1' then redis.call('SET', KEYS[k + 1], ARGV[i], 'PX', lease) end
  k = k + 2
end
return {redis.call('ZCARD', KEYS[1]), leader}
"""

# KEYS: route. ARGV: error, threshold, cooldown ms, wall time (s). Counts one failure lab-wide; opens
# the circuit at the threshold or on a failed half-open trial. Returns {failures, circuit, ms open}.
FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local circuit = redis.call('HGET', KEYS[1], 'circuit') or 'closed'
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
redis.call('HSET', KEYS[1], 'last_error', ARGV[1], 'last_error_at', ARGV[4])
if f >= tonumber(ARGV[2]) or (circuit == 'open' and now - opened >= tonumber(ARGV[3])) then
  circuit = 'open'
  opened = now
  redis.call('HSET', KEYS[1], 'circuit', 'open', 'opened_at', now)
end
return {f, circuit, now - opened}
"""

# KEYS: slots per route. Returns the unexpired leases of each.
COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf') end
return out
"""
