-- ctxgate-rls: one request's counting, as one atomic step.
--
-- KEYS: the report's chunk of marks (only when ARGV[1] is not empty), then
--       one counter per limited descriptor of the request.
-- ARGV: [1] the report id's bit in its chunk, or '' for a request without
--       a report id; [2] how long a chunk of marks lives after its last
--       mark (seconds); then, per counter, the cost to add (0: only read)
--       and how long the counter lives after its first hit (seconds).
-- Returns {duplicate (1 or 0), the value of each counter}.
--
-- An id whose bit was already set is a duplicate: nothing is added and the
-- counters are only read. The mark and the increments are one script, so
-- there is no state in which an id is marked but its hits are not added,
-- or the reverse: a call that Redis runs late (queued in its socket while
-- it hung) and the retries of the same id count once, whatever the order.
local first_counter = 1
local duplicate = 0
if ARGV[1] ~= '' then
  first_counter = 2
  duplicate = redis.call('SETBIT', KEYS[1], ARGV[1], 1)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local values = {duplicate}
for i = first_counter, #KEYS do
  local n = i - first_counter
  local key = KEYS[i]
  local cost = ARGV[3 + 2 * n]
  local value
  if duplicate == 1 or cost == '0' then
    value = tonumber(redis.call('GET', key) or '0')
  else
    value = redis.call('INCRBY', key, cost)
    if value == tonumber(cost) then
      -- The first hit created the counter.
      redis.call('EXPIRE', key, ARGV[4 + 2 * n])
    end
  end
  values[#values + 1] = value
end
return values
