"""The store's Lua scripts: each change that must be atomic, with every key it touches passed in KEYS.

No script builds a key name (workers.keys names them all), so each is Redis Cluster safe once the prefix carries a
hash tag. Arguments that are not keys travel as one JSON object in ARGV[1] (cjson), bulk values (attempts, specs)
as further ARGV entries. Every write a worker makes for a job is fenced: it carries the worker's lease token and the
script checks it against the job's lease key first, so a worker that lost its lease cannot write anything.
"""

from __future__ import annotations

# Accounting, prepended to every script that stores or removes a tenant's bytes. Each value written for a job (record
# fields, attempts, events) is counted on the job (`stored_bytes`) and on its tenant (the quota) in the same script,
# and each value removed is taken off both, so forgetting a job gives back exactly what it added. Fields of fixed
# size that only count things (stored_bytes, quota_bytes, tries, lease_generation, attempts_stored,
# events_not_stored) are not counted. The quota a job obeys is the one in force at its submission (`quota_bytes`).
ACCOUNTING = """
local function count(job, tenant_bytes, size)
  if size == 0 then return end
  redis.call('HINCRBY', job, 'stored_bytes', size)
  if redis.call('INCRBY', tenant_bytes, size) < 0 then redis.call('SET', tenant_bytes, 0) end
end
local function fits(job, tenant_bytes, size)
  local quota = tonumber(redis.call('HGET', job, 'quota_bytes') or '0')
  return quota <= 0 or tonumber(redis.call('GET', tenant_bytes) or '0') + size <= quota
end
local function set_field(job, tenant_bytes, field, value)
  local delta = #value - redis.call('HSTRLEN', job, field)
  redis.call('HSET', job, field, value)
  count(job, tenant_bytes, delta)
end
local function add_event(job, events, tenant_bytes, maxlen, kind, data)
  redis.call('XADD', events, '*', 'type', kind, 'data', data)
  local size = #kind + #data
  local over = redis.call('XLEN', events) - maxlen
  if over > 0 then
    for _, entry in ipairs(redis.call('XRANGE', events, '-', '+', 'COUNT', over)) do
      for i = 2, #entry[2], 2 do size = size - #entry[2][i] end
    end
    redis.call('XTRIM', events, 'MAXLEN', maxlen)
  end
  count(job, tenant_bytes, size)
end
"""

# KEYS: 1 idempotency, 2 tenant status:queued, 3 tenant status:running, 4 tenant jobs, 5 tenant batches,
#       6 tenant bytes, 7 batch, 8 batch jobs, 9 batch waiting, 10 queue, 11 jobs_by_status; per job: job, events.
# ARGV[1]: {tenant, idempotent, fingerprint, idem_ttl, max_active, max_bytes, now, result_id, enqueue, batch_id,
#           batch_fields, maxlen}; then per job: id, spec JSON, metadata JSON, summary JSON.
# Returns {outcome, id or count}.
SUBMIT = ACCOUNTING + """
local a = cjson.decode(ARGV[1])
if a.idempotent then
  local seen = redis.call('GET', KEYS[1])
  if seen then
    local sep = string.find(seen, '\\n', 1, true)
    local seen_id = string.sub(seen, sep + 1)
    if string.sub(seen, 1, sep - 1) == a.fingerprint then return {'existing', seen_id} end
    return {'mismatch', seen_id}
  end
end
local n = (#ARGV - 1) / 4
local active = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
if active + n > a.max_active then return {'cap', tostring(active)} end
local size = 0
for i = 0, n - 1 do size = size + #ARGV[3 + 4 * i] + #ARGV[4 + 4 * i] + #ARGV[5 + 4 * i] end
local used = tonumber(redis.call('GET', KEYS[6]) or '0')
if a.max_bytes > 0 and used + size > a.max_bytes then return {'quota', tostring(used)} end
if a.batch_id ~= '' then
  for k, v in pairs(a.batch_fields) do redis.call('HSET', KEYS[7], k, v) end
  redis.call('ZADD', KEYS[5], 0, a.batch_id)
end
for i = 0, n - 1 do
  local id, spec, meta, summary = ARGV[2 + 4 * i], ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i]
  local job, events = KEYS[12 + 2 * i], KEYS[13 + 2 * i]
  redis.call('HSET', job, 'tries', 0, 'stored_bytes', 0, 'quota_bytes', a.max_bytes)
  for _, f in ipairs({{'id', id}, {'tenant', a.tenant}, {'status', 'queued'}, {'created_at', a.now}, {'spec', spec},
                      {'metadata', meta}, {'summary', summary}, {'batch_id', a.batch_id}, {'attempts', '0'}}) do
    set_field(job, KEYS[6], f[1], f[2])
  end
  redis.call('ZADD', KEYS[4], 0, id)
  redis.call('ZADD', KEYS[2], 0, id)
  add_event(job, events, KEYS[6], a.maxlen, 'status', cjson.encode({status = 'queued', at = tonumber(a.now)}))
  if a.batch_id ~= '' then redis.call('RPUSH', KEYS[8], id) end
  redis.call('HINCRBY', KEYS[11], 'queued', 1)
  if i < a.enqueue then redis.call('XADD', KEYS[10], '*', 'job_id', id) else redis.call('RPUSH', KEYS[9], id) end
end
if a.idempotent then redis.call('SET', KEYS[1], a.fingerprint .. '\\n' .. a.result_id, 'EX', a.idem_ttl) end
return {'created', a.result_id}
"""

# A status change, with the tenant's per-status indexes, the status event and the counters moving together; for a
# worker also the queue entry (ack, requeue, the batch's next job) and the lease, all behind its fence.
# The status, its fields and its event are stored whatever the tenant's quota (a job has few status changes, and
# its outcome must never be lost); they are counted all the same.
# KEYS: 1 job, 2 events, 3 attempts, 4 lease, 5 queue, 6 batch waiting, 7 jobs_by_status, 8 counters, 9 retiring,
#       10 tenant bytes, 11.. the tenant's status indexes in the order of a.statuses.
# ARGV[1]: {id, tenant, allowed, to, finished, finished_counter, event, maxlen, token, group, ack, requeue,
#           release_slot, drop_lease, retire_at, expire_s, statuses, fields, incr}.
# Returns {ok|refused|missing|fenced, previous status}.
TRANSITION = ACCOUNTING + """
local a = cjson.decode(ARGV[1])
if a.token ~= '' and redis.call('GET', KEYS[4]) ~= a.token then return {'fenced', ''} end
local status = redis.call('HGET', KEYS[1], 'status')
local outcome = 'ok'
local allowed = {}
for _, s in ipairs(a.allowed) do allowed[s] = true end
if not status or redis.call('HGET', KEYS[1], 'tenant') ~= a.tenant then
  outcome, status = 'missing', ''
elseif not allowed[status] then
  outcome = 'refused'
end
if outcome == 'ok' then
  set_field(KEYS[1], KEYS[10], 'status', a.to)
  for k, v in pairs(a.fields) do set_field(KEYS[1], KEYS[10], k, v) end
  for k, v in pairs(a.incr) do redis.call('HINCRBY', KEYS[1], k, v) end
  local index = {}
  for i, s in ipairs(a.statuses) do index[s] = KEYS[10 + i] end
  redis.call('ZREM', index[status], a.id)
  redis.call('ZADD', index[a.to], 0, a.id)
  add_event(KEYS[1], KEYS[2], KEYS[10], a.maxlen, 'status', a.event)
  if status ~= a.to then
    redis.call('HINCRBY', KEYS[7], status, -1)
    redis.call('HINCRBY', KEYS[7], a.to, 1)
    if a.finished then redis.call('HINCRBY', KEYS[8], a.finished_counter, 1) end
  end
  if a.finished then
    redis.call('ZADD', KEYS[9], a.retire_at, a.id)
    for i = 1, 3 do redis.call('EXPIRE', KEYS[i], a.expire_s) end
  end
  if a.requeue then redis.call('XADD', KEYS[5], '*', 'job_id', a.id) end
end
if a.ack ~= '' then
  redis.call('XACK', KEYS[5], a.group, a.ack)
  redis.call('XDEL', KEYS[5], a.ack)
end
if a.release_slot and (outcome == 'ok' or a.ack ~= '') then
  local next_id = redis.call('LPOP', KEYS[6])
  if next_id then redis.call('XADD', KEYS[5], '*', 'job_id', next_id) end
end
if a.drop_lease then redis.call('DEL', KEYS[4]) end
return {outcome, status}
"""

# Acknowledge a queue entry whose job needs no lease (finished or gone), and queue its batch's next job.
# KEYS: 1 queue, 2 batch waiting.  ARGV: group, entry id, release ('1' or '').
ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[3] == '1' then
  local next_id = redis.call('LPOP', KEYS[2])
  if next_id then redis.call('XADD', KEYS[1], '*', 'job_id', next_id) end
end
return 1
"""

# Put a queue entry back at the tail, not leased: a worker that will not take its job now (its tenant holds its
# share of the slots) lets it wait behind the others, for any worker. KEYS: 1 queue.  ARGV: group, entry id, job id.
DEFER = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[3])
return 1
"""

# Ask a running job's worker to stop: the request's time and its event, once (counted; stored whatever the quota).
# KEYS: 1 job, 2 events, 3 tenant bytes.  ARGV[1]: {at, event, maxlen}.  Returns 1, or 0 if it was asked before.
REQUEST_CANCEL = ACCOUNTING + """
local a = cjson.decode(ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'cancel_requested_at') == 1 then return 0 end
set_field(KEYS[1], KEYS[3], 'cancel_requested_at', a.at)
add_event(KEYS[1], KEYS[2], KEYS[3], a.maxlen, 'cancel_requested', a.event)
return 1
"""

# Take a job's lease: a new generation, one more try. KEYS: 1 lease, 2 job.  ARGV: worker id, ttl ms.
# Returns {token, tries}, or false while another worker holds the lease (or the job is gone).
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 0 then return false end
local generation = redis.call('HINCRBY', KEYS[2], 'lease_generation', 1)
local tries = redis.call('HINCRBY', KEYS[2], 'tries', 1)
local token = ARGV[1] .. '/' .. generation
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {token, tries}
"""

# Renew a lease and keep its queue entry fresh (not reclaimable), only for the holder.
# KEYS: 1 lease, 2 queue.  ARGV: token, ttl ms, group, consumer, entry id.  Returns 1, or 0 when the lease is lost.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[5], 'JUSTID')
return 1
"""

# A step's results: attempts past the list's length, progress fields, events and metrics, behind the fence.
# Attempts and events are stored while the tenant's quota has room for them: past it they are counted on the job
# (`attempts`, `events_not_stored`) but not stored, and the job says so once (`quota_reached_at` and an event).
# The attempts list stays a prefix of the method's attempts: an attempt is appended only right after the last one.
# Progress fields (the first solution among them) are stored whatever the quota.
# KEYS: 1 lease, 2 job, 3 attempts, 4 events, 5 tenant bytes, 6 counters, 7 step_seconds, 8 attempts_log.
# ARGV[1]: {token, first_index, fields, events, maxlen, counters, histogram, seconds, log_n, log_maxlen, now};
# ARGV[2..]: attempt JSON, the first with index first_index.  Returns the attempts stored (the list's length after),
# or -1 when fenced off.
PUBLISH = ACCOUNTING + """
local a = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[1]) ~= a.token then return -1 end
local job, tenant_bytes = KEYS[2], KEYS[5]
local have = redis.call('LLEN', KEYS[3])
local refused = false
for i = 2, #ARGV do
  local position = a.first_index + i - 3
  if position > have then break end
  if position == have then
    if not fits(job, tenant_bytes, #ARGV[i]) then
      refused = true
      break
    end
    redis.call('RPUSH', KEYS[3], ARGV[i])
    count(job, tenant_bytes, #ARGV[i])
    have = have + 1
  end
end
for k, v in pairs(a.fields) do set_field(job, tenant_bytes, k, v) end
redis.call('HSET', job, 'attempts_stored', have)
for _, e in ipairs(a.events) do
  if fits(job, tenant_bytes, #e[1] + #e[2]) then
    add_event(job, KEYS[4], tenant_bytes, a.maxlen, e[1], e[2])
  else
    refused = true
    redis.call('HINCRBY', job, 'events_not_stored', 1)
  end
end
if refused and redis.call('HEXISTS', job, 'quota_reached_at') == 0 then
  set_field(job, tenant_bytes, 'quota_reached_at', a.now)
  add_event(job, KEYS[4], tenant_bytes, a.maxlen, 'storage_quota_reached', cjson.encode({
    at = tonumber(a.now), quota_bytes = tonumber(redis.call('HGET', job, 'quota_bytes')),
    attempts_stored = have}))
end
for k, v in pairs(a.counters) do redis.call('HINCRBY', KEYS[6], k, v) end
for k, v in pairs(a.histogram) do redis.call('HINCRBY', KEYS[7], k, v) end
if a.seconds ~= '' then redis.call('HINCRBYFLOAT', KEYS[7], 'sum', a.seconds) end
if a.log_n > 0 then redis.call('XADD', KEYS[8], 'MAXLEN', '~', a.log_maxlen, '*', 'n', a.log_n) end
return have
"""

# Keep the first `keep` attempts (a resumed job's checkpoint holds those), behind the fence.
# KEYS: 1 lease, 2 job, 3 attempts, 4 tenant bytes.  ARGV: token, keep.  Returns the attempts dropped, or -1.
TRIM = ACCOUNTING + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local keep = tonumber(ARGV[2])
local gone = redis.call('LRANGE', KEYS[3], keep, -1)
local size = 0
for _, item in ipairs(gone) do size = size + #item end
if keep == 0 then redis.call('DEL', KEYS[3]) else redis.call('LTRIM', KEYS[3], 0, keep - 1) end
redis.call('HSET', KEYS[2], 'attempts_stored', redis.call('LLEN', KEYS[3]))
count(KEYS[2], KEYS[4], -size)
return #gone
"""

# Forget a job whose retention ended: its keys, its index entries, its bytes in the tenant's quota; its blobs (the
# adapter, a checkpoint a crash left behind) are left to a worker that reaches the blob store (blobs_to_delete). KEYS: 1 job, 2 events, 3 attempts, 4 lease, 5 retiring, 6 tenant bytes,
# 7 tenant jobs, 8 blobs_to_delete, 9.. the tenant's status indexes.  ARGV: job id.  Returns 1, or 0 if not due.
# allow-oom: forgetting is how a full Redis (maxmemory, noeviction) gets memory back (the shebang needs Redis 7).
FORGET = """#!lua flags=allow-oom
if not redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 0 end
local bytes = tonumber(redis.call('HGET', KEYS[1], 'stored_bytes') or '0')
if bytes > 0 and redis.call('DECRBY', KEYS[6], bytes) < 0 then redis.call('SET', KEYS[6], 0) end
redis.call('SADD', KEYS[8], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
for i = 9, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# A job's best-of-k baseline shares its samples with the tenant's other jobs on the same (problem, verifier, model,
# sampling): one job at a time draws more (the drawer), the others wait and read. The drawer's value is
# `<job id>|<lease token>`: the same job resumed by another worker (a new token) takes the role over; anyone else
# waits until it expires.
# KEYS: 1 drawer.  ARGV: value, ttl ms, job prefix (`<job id>|`).  Returns 1 when the caller draws now, else 0.
BASELINE_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] and string.sub(held, 1, #ARGV[3]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Add a step's samples to the shared record, only for its drawer, and keep both keys alive.
# KEYS: 1 record, 2 drawer.  ARGV: value, samples, successes, record ttl s, drawer ttl ms, release ('1' or '').
# Returns {samples, successes} after, or false when the caller is no longer the drawer (nothing written).
BASELINE_ADD = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local n = redis.call('HINCRBY', KEYS[1], 'samples', ARGV[2])
local c = redis.call('HINCRBY', KEYS[1], 'successes', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) else redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
return {n, c}
"""
