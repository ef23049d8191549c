"""Jobs and batches in Redis: submission, reading, status changes and the end of their retention.

Status changes and submissions run as Lua scripts (workers.store.scripts), so a status, the tenant's per-status
index, the event that announces it and the counters move together, and the API and a worker racing on one job
never both win. The worker's side (leases, fenced writes) is workers.store.leases; both share one `JobStore`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from sdpo_core.statuses import FINISHED, STATUSES
from workers.jobs import BatchRecord, JobHead, JobPatch, JobRecord, now
from workers.keys import GROUP, Keys
from workers.store import scripts

RATE_WINDOW_S = 60  # /metrics: attempts per second over this window
HEAD_FIELDS = tuple(JobHead.model_fields)
LAST_STREAM_ID = f"{2**64 - 1}-{2**64 - 1}"


@dataclass
class SubmitOutcome:
    """What a submission did: created, existing (same Idempotency-Key and body), mismatch, cap or quota."""

    outcome: str
    id: str


@dataclass
class NewJob:
    id: str
    spec_json: str
    metadata_json: str
    summary_json: str = ""  # what listings show of the spec (JobHead.summary)


@dataclass
class MetricsSnapshot:
    """The numbers /metrics shows, read in one round trip."""

    by_status: dict[str, int]
    counters: dict[str, float]
    step_seconds: dict[str, float]
    queue_depth: int
    queue_pending: int
    recent_attempts: int
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TenantIndex:
    """One of a tenant's listings, newest first: its jobs (all, or those in one status) or its batches. Callers
    name the listing; the store knows its key."""

    tenant: str
    status: str | None = None
    batches: bool = False


@dataclass
class StatusChange:
    """What a worker adds to a status change: its fence, and what happens to the job's queue entry and lease."""

    token: str = ""  # the lease token; '' for the API, whose changes are not fenced
    ack: str = ""  # the queue entry to acknowledge and delete
    requeue: bool = False  # add a fresh queue entry (a hand-back)
    release_slot: bool = False  # queue the batch's next waiting job (this one is over)
    drop_lease: bool = False
    incr: dict[str, int] = field(default_factory=dict)  # record fields to add to (tries)


class JobStore:
    """Reads and writes jobs and batches under one key prefix; the one class in the service that talks to Redis."""

    def __init__(self, redis: Redis, keys: Keys, *, events_maxlen: int = 10_000, retention_s: int = 7 * 86400) -> None:
        self.redis, self.keys = redis, keys
        self.events_maxlen, self.retention_s = events_maxlen, retention_s
        self.scripts = {name: redis.register_script(getattr(scripts, name))
                        for name in ("SUBMIT", "TRANSITION", "REQUEST_CANCEL", "ACK", "DEFER", "CLAIM", "RENEW",
                                     "PUBLISH", "TRIM", "FORGET", "BASELINE_CLAIM", "BASELINE_ADD")}

    async def close(self) -> None:
        await self.redis.aclose()

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
        fingerprint: str, idempotency_ttl_s: int, max_active_jobs: int, max_tenant_bytes: int = 0,
        batch: BatchRecord | None = None, enqueue: int | None = None,
    ) -> SubmitOutcome:
        """Store jobs (and their batch) and queue the first `enqueue` of them, atomically."""
        k, batch_id = self.keys, batch.id if batch else ""
        kind = "batch" if batch_id else "job"
        keys = [k.idempotency(tenant, kind, idempotency_key or ""), k.tenant_status(tenant, "queued"),
                k.tenant_status(tenant, "running"), k.tenant_jobs(tenant), k.tenant_batches(tenant),
                k.tenant_bytes(tenant), k.batch(batch_id), k.batch_jobs(batch_id), k.batch_waiting(batch_id), k.queue,
                k.jobs_by_status]
        args: list[Any] = [json.dumps({
            "tenant": tenant, "idempotent": bool(idempotency_key), "fingerprint": fingerprint,
            "idem_ttl": idempotency_ttl_s, "max_active": max_active_jobs, "max_bytes": max_tenant_bytes,
            "now": str(now()), "result_id": result_id, "enqueue": len(jobs) if enqueue is None else enqueue,
            "batch_id": batch_id, "batch_fields": batch.encoded() if batch else {},
            "maxlen": self.events_maxlen,
        })]
        for job in jobs:
            keys += [k.job(job.id), k.events(job.id)]
            args += [job.id, job.spec_json, job.metadata_json, job.summary_json]
        outcome, found = await self.scripts["SUBMIT"](keys=keys, args=args)
        return SubmitOutcome(outcome, found)

    # ---- reading ----------------------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self.redis.hgetall(self.keys.job(job_id))
        return JobRecord.model_validate(fields) if fields else None

    async def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            rows = await pipe.execute()
        return [JobRecord.model_validate(row) if row else None for row in rows]

    async def get_heads(self, job_ids: Sequence[str]) -> list[JobHead | None]:
        """The records without their specs and solutions (None where gone): what a listing reads, however large
        the problems are."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), HEAD_FIELDS)
            rows = await pipe.execute()
        heads = [{f: v for f, v in zip(HEAD_FIELDS, row, strict=True) if v is not None} for row in rows]
        return [JobHead.model_validate(head) if head.get("id") else None for head in heads]

    async def cancel_requested(self, job_ids: Sequence[str]) -> list[bool]:
        """For each job, whether its owner asked to cancel it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "cancel_requested_at")
            return [bool(flag) for flag in await pipe.execute()]

    def _index_key(self, index: TenantIndex) -> str:
        k = self.keys
        if index.batches:
            return k.tenant_batches(index.tenant)
        return k.tenant_status(index.tenant, index.status) if index.status else k.tenant_jobs(index.tenant)

    async def page_ids(self, index: TenantIndex, *, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Ids of a listing, newest first, strictly older than `after`; and whether more follow."""
        upper = f"({after}" if after else "+"
        ids = await self.redis.zrevrangebylex(self._index_key(index), upper, "-", start=0, num=limit + 1)
        return ids[:limit], len(ids) > limit

    async def prune_index(self, index: TenantIndex, ids: Sequence[str]) -> None:
        """Drop ids whose records expired from a listing."""
        if ids:
            await self.redis.zrem(self._index_key(index), *ids)

    async def events(self, job_id: str, *, after: str | None, limit: int) -> list[tuple[str, dict[str, str]]]:
        """Up to `limit` events after the stream id `after` (None = from the start)."""
        if after == LAST_STREAM_ID:  # Redis refuses an exclusive start there; nothing can follow it
            return []
        start = f"({after}" if after and after != "0" else "-"
        return await self.redis.xrange(self.keys.events(job_id), min=start, count=limit)

    async def attempts(self, job_id: str, *, after: int, limit: int) -> tuple[list[str], bool]:
        rows = await self.redis.lrange(self.keys.attempts(job_id), after, after + limit)
        return rows[:limit], len(rows) > limit

    async def batch(self, batch_id: str) -> BatchRecord | None:
        fields = await self.redis.hgetall(self.keys.batch(batch_id))
        return BatchRecord.model_validate(fields) if fields else None

    async def batch_job_ids(self, batch_id: str) -> list[str]:
        return await self.redis.lrange(self.keys.batch_jobs(batch_id), 0, -1)

    async def finish_batch(self, batch_id: str, outcome_json: str) -> None:
        """Keep what a finished batch shows (its counts and curve: BatchRecord.outcome) on its record; it goes when
        its jobs go."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.batch(batch_id), "outcome", outcome_json)
            pipe.expire(self.keys.batch(batch_id), self.retention_s)
            pipe.expire(self.keys.batch_jobs(batch_id), self.retention_s)
            await pipe.execute()

    async def request_batch_cancel(self, batch_id: str) -> None:
        await self.redis.hsetnx(self.keys.batch(batch_id), "cancel_requested_at", now())

    # ---- status changes ---------------------------------------------------------------------------------------
    async def transition(
        self, job_id: str, *, tenant: str, allowed_from: Sequence[str], to: str, batch_id: str = "",
        fields: JobPatch | None = None, event: dict[str, Any] | None = None,
        change: StatusChange | None = None,
    ) -> tuple[str, str]:
        """Move a job to `to` if its status is one of `allowed_from`: (ok|refused|missing|fenced, old status)."""
        k, change = self.keys, change or StatusChange()
        fields = fields.encoded() if fields else {}
        at = now()
        if to == "running":
            fields.setdefault("started_at", str(at))
        finished = to in FINISHED
        if finished:
            fields.setdefault("finished_at", str(at))
        args = {
            "id": job_id, "tenant": tenant, "allowed": list(allowed_from), "to": to, "finished": finished,
            "finished_counter": f"finished:{to}",
            "event": json.dumps({"status": to, "at": at, **(event or {})}), "maxlen": self.events_maxlen,
            "token": change.token, "group": GROUP, "ack": change.ack, "requeue": change.requeue,
            "release_slot": change.release_slot, "drop_lease": change.drop_lease,
            "retire_at": at + self.retention_s, "expire_s": 2 * self.retention_s, "statuses": list(STATUSES),
            "fields": fields, "incr": change.incr,
        }
        keys = [k.job(job_id), k.events(job_id), k.attempts(job_id), k.lease(job_id), k.queue,
                k.batch_waiting(batch_id), k.jobs_by_status, k.counters, k.retiring, k.tenant_bytes(tenant),
                *k.tenant_statuses(tenant)]
        outcome, old = await self.scripts["TRANSITION"](keys=keys, args=[json.dumps(args)])
        return outcome, old

    async def cancel(self, record: JobHead) -> str:
        """Cancel a queued job at once or ask its worker to stop a running one; returns the status after."""
        outcome, old = await self.transition(record.id, tenant=record.tenant, allowed_from=["queued"],
                                             to="cancelled", fields=JobPatch(error_code="", error_message=""))
        if outcome != "refused" or old != "running":
            return "cancelled" if outcome == "ok" else old
        await self.request_cancel(record)
        return "running"

    async def request_cancel(self, record: JobHead) -> None:
        """Ask the job's worker to stop what it runs for the job (the job, or once its outcome is final, its
        baseline); once."""
        k, at = self.keys, now()
        await self.scripts["REQUEST_CANCEL"](
            keys=[k.job(record.id), k.events(record.id), k.tenant_bytes(record.tenant)],
            args=[json.dumps({"at": str(at), "event": json.dumps({"at": at}), "maxlen": self.events_maxlen})])

    # ---- retention --------------------------------------------------------------------------------------------
    async def sweep(self, *, limit: int = 200) -> int:
        """Forget up to `limit` finished jobs whose retention ended; returns how many went."""
        due = await self.redis.zrangebyscore(self.keys.retiring, "-inf", time.time(), start=0, num=limit)
        if not due:
            return 0
        tenants = await self._tenants(due)
        forgotten = 0
        k = self.keys
        for job_id, tenant in zip(due, tenants, strict=True):
            keys = [k.job(job_id), k.events(job_id), k.attempts(job_id), k.lease(job_id), k.retiring,
                    k.tenant_bytes(tenant), k.tenant_jobs(tenant), k.blobs_to_delete, *k.tenant_statuses(tenant)]
            forgotten += await self.scripts["FORGET"](keys=keys, args=[job_id])
        return forgotten

    async def _tenants(self, job_ids: Sequence[str]) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "tenant")
            return [tenant or "" for tenant in await pipe.execute()]

    async def tenant_bytes(self, tenant: str) -> int:
        return int(await self.redis.get(self.keys.tenant_bytes(tenant)) or 0)

    # ---- tenants, health, metrics -----------------------------------------------------------------------------
    async def count_request(self, tenant: str) -> int:
        """Count a request in the tenant's current one-minute window; returns the count so far."""
        key = self.keys.rate(tenant, int(time.time() // 60))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        return count

    async def ping(self) -> None:
        await self.redis.ping()

    async def workers(self) -> dict[str, dict[str, Any]]:
        """Worker id -> its last heartbeat ({seen_at, model, jobs}); an entry that is not a JSON object is left out
        (no reader of liveness may fail on one bad entry)."""
        beats = {}
        for worker, info in (await self.redis.hgetall(self.keys.workers)).items():
            try:
                beat = json.loads(info)
            except ValueError:
                continue
            if isinstance(beat, dict):
                beats[worker] = beat
        return beats

    async def metrics(self) -> MetricsSnapshot:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.jobs_by_status)
            pipe.hgetall(k.counters)
            pipe.hgetall(k.step_seconds)
            pipe.xlen(k.queue)
            pipe.xrange(k.attempts_log, min=f"{int((time.time() - RATE_WINDOW_S) * 1000)}-0")
            by_status, counters, steps, depth, recent = await pipe.execute()
        try:
            groups = await self.redis.xinfo_groups(k.queue)
            pending = next((g["pending"] for g in groups if g["name"] == GROUP), 0)
        except Exception:  # noqa: BLE001 - no queue yet
            pending = 0
        return MetricsSnapshot(
            by_status={s: int(v) for s, v in by_status.items()}, counters={c: float(v) for c, v in counters.items()},
            step_seconds={b: float(v) for b, v in steps.items()}, queue_depth=depth, queue_pending=pending,
            recent_attempts=sum(int(fields.get("n", 0)) for _, fields in recent), workers=await self.workers(),
        )
