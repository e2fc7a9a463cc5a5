-- The doorbells of one queue in Redis: taken, acknowledged, given back, buried, swept.
-- KEYS: queue (ZSET id -> score), msgs (HASH id -> body), held (HASH id -> score: taken by this
-- consumer, not yet acknowledged), consumers (ZSET consumer -> last beat, ms), bell (LIST of
-- wake-ups), xq (ZSET id -> died at, ms), xq_msgs (HASH id -> body).
-- ARGV: command, now (ms), consumer, then the command's own arguments.
local queue, msgs, held, consumers, bell, xq, xq_msgs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local command, now, consumer = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local function ring()
  redis.call("rpush", bell, 1)
  redis.call("ltrim", bell, 0, 63)
end

if command == "take" then  -- ARGV[4]: how many at most
  redis.call("zadd", consumers, now, consumer)
  local popped = redis.call("zpopmin", queue, tonumber(ARGV[4]))
  local out = {}
  for i = 1, #popped, 2 do
    local body = redis.call("hget", msgs, popped[i])
    if body then
      redis.call("hset", held, popped[i], popped[i + 1])
      out[#out + 1] = popped[i]
      out[#out + 1] = body
    end
  end
  if redis.call("zcard", queue) > 0 then ring() end  -- more wait: the next taker wakes
  return out
elseif command == "ack" then  -- ARGV[4..]: ids claimed (or refused) by the ledger
  for i = 4, #ARGV do
    redis.call("hdel", held, ARGV[i])
    redis.call("hdel", msgs, ARGV[i])
  end
  return #ARGV - 3
elseif command == "give_back" then  -- ARGV[4..]: ids; none given means every one held
  local ids = {}
  if #ARGV < 4 then
    ids = redis.call("hkeys", held)
  else
    for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
  end
  local back = 0
  for _, id in ipairs(ids) do
    local score = redis.call("hget", held, id)
    if score then
      redis.call("hdel", held, id)
      if redis.call("hexists", msgs, id) == 1 then
        redis.call("zadd", queue, score, id)
        back = back + 1
      end
    end
  end
  if back > 0 then ring() end
  return back
elseif command == "dead" then  -- ARGV[4..]: ids no worker can run: to the dead-letter set
  for i = 4, #ARGV do
    local body = redis.call("hget", msgs, ARGV[i])
    redis.call("hdel", held, ARGV[i])
    redis.call("hdel", msgs, ARGV[i])
    if body then
      redis.call("zadd", xq, now, ARGV[i])
      redis.call("hset", xq_msgs, ARGV[i], body)
    end
  end
  return #ARGV - 3
elseif command == "beat" then
  redis.call("zadd", consumers, now, consumer)
  return 1
elseif command == "orphans" then  -- ARGV[4]: consumer timeout (ms), ARGV[5]: held key prefix,
  -- ARGV[6]: dead-letter TTL (ms). Gives back what silent consumers held; expires old copies.
  local back = 0
  local silent = redis.call("zrangebyscore", consumers, "-inf", now - tonumber(ARGV[4]))
  for _, gone in ipairs(silent) do
    local key = ARGV[5] .. gone
    local pairs_ = redis.call("hgetall", key)
    for i = 1, #pairs_, 2 do
      if redis.call("hexists", msgs, pairs_[i]) == 1 then
        redis.call("zadd", queue, pairs_[i + 1], pairs_[i])
        back = back + 1
      end
    end
    redis.call("del", key)
    redis.call("zrem", consumers, gone)
  end
  if back > 0 then ring() end
  local expired = redis.call("zrangebyscore", xq, "-inf", now - tonumber(ARGV[6]))
  for _, id in ipairs(expired) do
    redis.call("zrem", xq, id)
    redis.call("hdel", xq_msgs, id)
  end
  return back
end
return redis.error_reply("unknown command " .. tostring(command))
