"""Jobs, batches and their events in Redis: the one place that writes the key layout of `workers.keys`.

Status changes, submissions and cancellations run as Lua scripts, so a status, the tenant's per-status index and the
event that announces the change move together, and the API and a worker racing on one job never both win.
Both the API (async) and the workers use this module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from workers.jobs import TERMINAL, now
from workers.keys import GROUP, Keys

log = logging.getLogger(__name__)

# ARGV: tenant, idem_key, fingerprint, idem_ttl, cap, now, result_id, n_enqueue, batch_id, batch_fields_json,
#       then per job: id, spec_json, metadata_json. Returns {outcome, id}.
_SUBMIT = """
local p = KEYS[1]
local tenant, idem, fp, idem_ttl, cap = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local t, result_id, n_enqueue, batch_id = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
local idem_key = p .. ':idem:' .. tenant .. ':' .. idem
if idem ~= '' then
  local seen = redis.call('GET', idem_key)
  if seen then
    local sep = string.find(seen, '\\n', 1, true)
    local seen_fp, seen_id = string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1)
    if seen_fp == fp then return {'existing', seen_id} end
    return {'mismatch', seen_id}
  end
end
local n = (#ARGV - 10) / 3
local active = redis.call('ZCARD', p .. ':tenant:' .. tenant .. ':status:queued')
  + redis.call('ZCARD', p .. ':tenant:' .. tenant .. ':status:running')
if active + n > cap then return {'cap', tostring(active)} end
if batch_id ~= '' then
  local fields = cjson.decode(ARGV[10])
  for k, v in pairs(fields) do redis.call('HSET', p .. ':batch:' .. batch_id, k, v) end
  redis.call('ZADD', p .. ':tenant:' .. tenant .. ':batches', 0, batch_id)
end
for i = 0, n - 1 do
  local id, spec, meta = ARGV[11 + 3 * i], ARGV[12 + 3 * i], ARGV[13 + 3 * i]
  local job = p .. ':job:' .. id
  redis.call('HSET', job, 'id', id, 'tenant', tenant, 'status', 'queued', 'created_at', t, 'spec', spec,
             'metadata', meta, 'batch_id', batch_id, 'attempts', 0, 'tries', 0)
  redis.call('ZADD', p .. ':tenant:' .. tenant .. ':jobs', 0, id)
  redis.call('ZADD', p .. ':tenant:' .. tenant .. ':status:queued', 0, id)
  redis.call('XADD', job .. ':events', '*', 'type', 'status', 'data', cjson.encode({status = 'queued', at = tonumber(t)}))
  if batch_id ~= '' then redis.call('RPUSH', p .. ':batch:' .. batch_id .. ':jobs', id) end
  redis.call('HINCRBY', p .. ':metrics:jobs_by_status', 'queued', 1)
  if i < n_enqueue then
    redis.call('XADD', p .. ':queue', '*', 'job_id', id)
  else
    redis.call('RPUSH', p .. ':batch:' .. batch_id .. ':waiting', id)
  end
end
if idem ~= '' then redis.call('SET', idem_key, fp .. '\\n' .. result_id, 'EX', idem_ttl) end
return {'created', result_id}
"""

# ARGV: job_id, allowed_from (comma list), to_status, event_data_json, events_maxlen, expire_s, field, value, ...
# Returns {outcome, previous_status}.
_TRANSITION = """
local p = KEYS[1]
local id, allowed, to, data, maxlen, expire = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local job = p .. ':job:' .. id
local status = redis.call('HGET', job, 'status')
if not status then return {'missing', ''} end
if not string.find(',' .. allowed .. ',', ',' .. status .. ',', 1, true) then return {'refused', status} end
redis.call('HSET', job, 'status', to)
for i = 7, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
local tenant = redis.call('HGET', job, 'tenant')
redis.call('ZREM', p .. ':tenant:' .. tenant .. ':status:' .. status, id)
redis.call('ZADD', p .. ':tenant:' .. tenant .. ':status:' .. to, 0, id)
redis.call('XADD', job .. ':events', 'MAXLEN', '~', maxlen, '*', 'type', 'status', 'data', data)
if status ~= to then
  redis.call('HINCRBY', p .. ':metrics:jobs_by_status', status, -1)
  redis.call('HINCRBY', p .. ':metrics:jobs_by_status', to, 1)
end
if expire > 0 then
  for _, k in ipairs({job, job .. ':events', job .. ':attempts', job .. ':adapter'}) do
    redis.call('EXPIRE', k, expire)
  end
end
return {'ok', status}
"""

# Move the next still-queued job of a batch onto the queue. ARGV: batch_id. Returns the job id or false.
_RELEASE = """
local p = KEYS[1]
local waiting = p .. ':batch:' .. ARGV[1] .. ':waiting'
while true do
  local id = redis.call('LPOP', waiting)
  if not id then return false end
  if redis.call('HGET', p .. ':job:' .. id, 'status') == 'queued' then
    redis.call('XADD', p .. ':queue', '*', 'job_id', id)
    return id
  end
end
"""

# Renew a lease only if this worker holds it. ARGV: worker_id, ttl_ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class SubmitOutcome:
    """What a submission did: created, existing (same Idempotency-Key and body), mismatch or cap."""

    outcome: str
    id: str


@dataclass
class NewJob:
    id: str
    spec_json: str
    metadata_json: str


class JobStore:
    """Reads and writes jobs and batches for one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, *, events_maxlen: int = 10_000, retention_s: int = 7 * 86400):
        self.redis, self.keys = redis, keys
        self.events_maxlen, self.retention_s = events_maxlen, retention_s
        self._submit = redis.register_script(_SUBMIT)
        self._transition = redis.register_script(_TRANSITION)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        self._release_lease = redis.register_script(_RELEASE_LEASE)

    # ---- submission -------------------------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        """Create the queue stream and its consumer group if missing."""
        try:
            await self.redis.xgroup_create(self.keys.queue, GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists
            if "BUSYGROUP" not in str(exc):
                raise

    async def submit(
        self, *, tenant: str, jobs: Sequence[NewJob], result_id: str, idempotency_key: str | None,
        fingerprint: str, idempotency_ttl_s: int, max_active_jobs: int, batch_id: str | None = None,
        batch_fields: dict[str, Any] | None = None, enqueue: int | None = None,
    ) -> SubmitOutcome:
        """Store jobs (and their batch) and queue the first `enqueue` of them, atomically."""
        args: list[Any] = [
            tenant, idempotency_key or "", fingerprint, idempotency_ttl_s, max_active_jobs, now(), result_id,
            len(jobs) if enqueue is None else enqueue, batch_id or "", json.dumps(batch_fields or {}),
        ]
        for job in jobs:
            args += [job.id, job.spec_json, job.metadata_json]
        outcome, found = await self._submit(keys=[self.keys.prefix], args=args)
        return SubmitOutcome(_s(outcome), _s(found))

    async def set_summaries(self, summaries: dict[str, str]) -> None:
        """Store each new job's listing summary (JSON) beside its spec, so listings never read the spec."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, summary in summaries.items():
                pipe.hset(self.keys.job(job_id), "summary", summary)
            await pipe.execute()

    # ---- reading ----------------------------------------------------------------------------------------------
    async def get(self, job_id: str) -> dict[str, str] | None:
        fields = await self.redis.hgetall(self.keys.job(job_id))
        return {_s(k): _s(v) for k, v in fields.items()} or None

    async def get_many(self, job_ids: Sequence[str], fields: Sequence[str] | None = None) -> list[dict[str, str] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                if fields:
                    pipe.hmget(self.keys.job(job_id), list(fields))
                else:
                    pipe.hgetall(self.keys.job(job_id))
            rows = await pipe.execute()
        out: list[dict[str, str] | None] = []
        for row in rows:
            if fields:
                record = {f: _s(v) for f, v in zip(fields, row, strict=True) if v is not None}
            else:
                record = {_s(k): _s(v) for k, v in row.items()}
            out.append(record or None)
        return out

    async def page_ids(self, index_key: str, *, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Ids of an index, newest first, strictly older than `after`; and whether more follow."""
        upper = f"({after}" if after else "+"
        ids = await self.redis.zrevrangebylex(index_key, upper, "-", start=0, num=limit + 1)
        ids = [_s(i) for i in ids]
        return ids[:limit], len(ids) > limit

    async def prune_index(self, index_key: str, job_ids: Sequence[str]) -> None:
        """Drop ids whose records expired."""
        if job_ids:
            await self.redis.zrem(index_key, *job_ids)

    async def events(self, job_id: str, *, after: str | None, limit: int, block_ms: int | None = None):
        """Up to `limit` events after the stream id `after` ('0' = from the start), waiting up to block_ms."""
        key = self.keys.events(job_id)
        start = after or "0"
        if block_ms is None:
            rows = await self.redis.xrange(key, min=f"({start}" if start != "0" else "-", count=limit)
        else:
            reply = await self.redis.xread({key: start}, count=limit, block=block_ms)
            rows = reply[0][1] if reply else []
        return [(_s(i), {_s(k): _s(v) for k, v in f.items()}) for i, f in rows]

    async def attempts(self, job_id: str, *, after: int, limit: int) -> tuple[list[str], bool]:
        rows = await self.redis.lrange(self.keys.attempts(job_id), after, after + limit)
        return [_s(r) for r in rows[:limit]], len(rows) > limit

    async def adapter(self, job_id: str) -> bytes | None:
        return await self.redis.get(self.keys.adapter(job_id))

    async def adapter_size(self, job_id: str) -> int:
        """Bytes of the job's adapter archive; 0 when there is none."""
        return int(await self.redis.strlen(self.keys.adapter(job_id)))

    async def adapter_chunks(self, job_id: str, size: int, chunk_bytes: int = 1 << 20):
        """The adapter archive in pieces of `chunk_bytes` (GETRANGE): a download never holds it whole."""
        for start in range(0, size, chunk_bytes):
            piece = await self.redis.getrange(self.keys.adapter(job_id), start, min(start + chunk_bytes, size) - 1)
            if not piece:
                return  # expired meanwhile: the client sees a short body
            yield piece

    async def batch(self, batch_id: str) -> dict[str, str] | None:
        fields = await self.redis.hgetall(self.keys.batch(batch_id))
        return {_s(k): _s(v) for k, v in fields.items()} or None

    async def batch_job_ids(self, batch_id: str) -> list[str]:
        return [_s(i) for i in await self.redis.lrange(self.keys.batch_jobs(batch_id), 0, -1)]

    # ---- status changes ---------------------------------------------------------------------------------------
    async def transition(
        self, job_id: str, *, allowed_from: Sequence[str], to: str, fields: dict[str, Any] | None = None,
        event: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Move a job to status `to` if it is in one of `allowed_from`: ('ok'|'refused'|'missing', old status)."""
        fields = dict(fields or {})
        at = now()
        if to == "running":
            fields.setdefault("started_at", at)
        if to in TERMINAL:
            fields.setdefault("finished_at", at)
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, "" if v is None else v]
        data = json.dumps({"status": to, "at": at, **(event or {})})
        expire = self.retention_s if to in TERMINAL else 0
        outcome, old = await self._transition(
            keys=[self.keys.prefix],
            args=[job_id, ",".join(allowed_from), to, data, self.events_maxlen, expire, *flat],
        )
        return _s(outcome), _s(old)

    async def release_batch_slot(self, batch_id: str) -> str | None:
        """Queue the batch's next waiting job (its concurrency limit freed a slot)."""
        job_id = await self._release(keys=[self.keys.prefix], args=[batch_id])
        return _s(job_id) if job_id else None

    async def cancel(self, job_id: str) -> str:
        """Cancel a queued job at once or ask its worker to stop a running one; returns the status after."""
        outcome, old = await self.transition(job_id, allowed_from=["queued"], to="cancelled",
                                             fields={"error_code": "", "error_message": ""})
        if outcome != "refused" or old != "running":
            return "cancelled" if outcome == "ok" else old
        if await self.redis.hsetnx(self.keys.job(job_id), "cancel_requested_at", now()):
            await self.add_event(job_id, "cancel_requested", {"at": now()})
        return "running"

    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        await self.redis.xadd(self.keys.events(job_id), {"type": kind, "data": json.dumps(data)},
                              maxlen=self.events_maxlen, approximate=True)

    # ---- worker side ------------------------------------------------------------------------------------------
    async def take_lease(self, job_id: str, worker_id: str, ttl_ms: int) -> bool:
        return bool(await self.redis.set(self.keys.lease(job_id), worker_id, nx=True, px=ttl_ms))

    async def renew_lease(self, job_id: str, worker_id: str, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.keys.lease(job_id)], args=[worker_id, ttl_ms]))

    async def drop_lease(self, job_id: str, worker_id: str) -> None:
        await self._release_lease(keys=[self.keys.lease(job_id)], args=[worker_id])

    async def publish_progress(
        self, job_id: str, *, attempts: Sequence[str], first_index: int, fields: dict[str, Any],
        events: Sequence[tuple[str, dict[str, Any]]],
    ) -> int:
        """Append the attempts the attempts list lacks (index >= first_index, 1-based), set progress fields, add
        events; returns how many attempts were new. Only the lease holder calls this, so LLEN cannot race."""
        key = self.keys.attempts(job_id)
        have = await self.redis.llen(key)
        fresh = list(attempts[max(0, have - (first_index - 1)):])
        async with self.redis.pipeline(transaction=True) as pipe:
            if fresh:
                pipe.rpush(key, *fresh)
            if fields:
                pipe.hset(self.keys.job(job_id), mapping={k: "" if v is None else v for k, v in fields.items()})
            for kind, data in events:
                pipe.xadd(self.keys.events(job_id), {"type": kind, "data": json.dumps(data)},
                          maxlen=self.events_maxlen, approximate=True)
            await pipe.execute()
        return len(fresh)

    async def trim_attempts(self, job_id: str, count: int) -> None:
        """Keep the first `count` attempts (those a checkpoint holds) before a resumed job appends again."""
        if count == 0:
            await self.redis.delete(self.keys.attempts(job_id))
        else:
            await self.redis.ltrim(self.keys.attempts(job_id), 0, count - 1)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
