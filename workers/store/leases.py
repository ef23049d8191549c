"""The worker's side of the store: taking queue entries, job leases, and writes fenced by the lease token.

A lease is the key `{p}:job:{id}:lease` holding `<worker>/<generation>`; each take bumps the job's
`lease_generation`, so a worker whose lease expired and was taken by another holds a token that no longer matches.
Every write of a worker for a job (attempts, progress, events, status, queue entry, checkpoint pointer) runs in a
Lua script that checks the token first: a stale holder's write changes nothing and reports `fenced`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.jobs import JobPatch, JobRecord, now
from workers.keys import GROUP
from workers.store.jobs import JobStore, StatusChange


@dataclass
class Lease:
    """A job this worker holds: the token that fences its writes, and where the job came from."""

    job_id: str
    tenant: str
    token: str
    entry_id: str
    batch_id: str = ""
    tries: int = 1

    @property
    def generation(self) -> int:
        return int(self.token.rsplit("/", 1)[1])


@dataclass
class StepRecord:
    """What one step adds to the job: attempts (JSON, the first with index first_index), fields, events, metrics."""

    attempts: Sequence[str] = ()
    first_index: int = 1
    fields: JobPatch = field(default_factory=JobPatch)
    events: Sequence[tuple[str, dict[str, Any]]] = ()
    counters: dict[str, int] = field(default_factory=dict)
    histogram: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None


class WorkerQueue:
    """One worker's view of the queue and of the jobs it leases."""

    def __init__(self, store: JobStore, worker_id: str, *, lease_ms: int, log_maxlen: int = 2000) -> None:
        self.store, self.keys, self.redis = store, store.keys, store.redis
        self.worker_id, self.lease_ms, self.log_maxlen = worker_id, lease_ms, log_maxlen

    # ---- the queue --------------------------------------------------------------------------------------------
    async def next_entries(self, count: int, *, block_ms: int | None) -> list[tuple[str, str]]:
        """Up to `count` (entry id, job id): entries of dead workers first (idle longer than a lease), then new ones,
        waiting up to `block_ms` for one when `block_ms` is given."""
        _, claimed, *_ = await self.redis.xautoclaim(self.keys.queue, GROUP, self.worker_id, self.lease_ms, "0-0",
                                                     count=count)
        entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if len(entries) < count:
            reply = await self.redis.xreadgroup(GROUP, self.worker_id, {self.keys.queue: ">"},
                                                count=count - len(entries), block=block_ms)
            entries += reply[0][1] if reply else []
        return [(entry_id, fields.get("job_id", "")) for entry_id, fields in entries]

    async def ack(self, entry_id: str, *, batch_id: str = "") -> None:
        """Drop an entry whose job needs no lease (finished or gone); a batch's next job takes its slot."""
        await self.store.scripts["ACK"](keys=[self.keys.queue, self.keys.batch_waiting(batch_id)],
                                        args=[GROUP, entry_id, "1" if batch_id else ""])

    async def defer(self, entry_id: str, job_id: str) -> None:
        """Send an entry this worker read but will not take now to the back of the queue, for any worker."""
        await self.store.scripts["DEFER"](keys=[self.keys.queue], args=[GROUP, entry_id, job_id])

    # ---- leases -----------------------------------------------------------------------------------------------
    async def take(self, entry_id: str, record: JobRecord) -> Lease | None:
        """Lease the job (one more try), or None while another worker holds it."""
        taken = await self.store.scripts["CLAIM"](keys=[self.keys.lease(record.id), self.keys.job(record.id)],
                                                  args=[self.worker_id, self.lease_ms])
        if not taken:
            return None
        token, tries = taken
        return Lease(record.id, record.tenant, token, entry_id, record.batch_id, int(tries))

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease and keep its queue entry fresh; False when the lease was lost."""
        renewed = await self.store.scripts["RENEW"](
            keys=[self.keys.lease(lease.job_id), self.keys.queue],
            args=[lease.token, self.lease_ms, GROUP, self.worker_id, lease.entry_id])
        return bool(renewed)

    # ---- fenced writes ----------------------------------------------------------------------------------------
    async def publish(self, lease: Lease, step: StepRecord) -> int:
        """Append the attempts the list lacks (while the tenant's quota has room), set fields, add events (likewise)
        and metrics; the attempts stored after it (the list's length), or -1 when the lease is no longer ours
        (nothing was written)."""
        k, job_id = self.keys, lease.job_id
        args = {
            "token": lease.token, "first_index": step.first_index,
            "fields": step.fields.encoded(),
            "events": [[kind, json.dumps(data)] for kind, data in step.events], "maxlen": self.store.events_maxlen,
            "counters": step.counters, "histogram": step.histogram,
            "seconds": "" if step.seconds is None else repr(step.seconds),
            "log_n": step.counters.get("attempts", 0), "log_maxlen": self.log_maxlen, "now": str(now()),
        }
        keys = [k.lease(job_id), k.job(job_id), k.attempts(job_id), k.events(job_id), k.tenant_bytes(lease.tenant),
                k.counters, k.step_seconds, k.attempts_log]
        return await self.store.scripts["PUBLISH"](keys=keys, args=[json.dumps(args), *step.attempts])

    async def trim(self, lease: Lease, keep: int) -> int:
        """Keep the first `keep` attempts (what the checkpoint holds); -1 when fenced off."""
        k = self.keys
        return await self.store.scripts["TRIM"](
            keys=[k.lease(lease.job_id), k.job(lease.job_id), k.attempts(lease.job_id), k.tenant_bytes(lease.tenant)],
            args=[lease.token, keep])

    async def change(self, lease: Lease, *, allowed_from: Sequence[str], to: str, fields: JobPatch | None = None,
                     event: dict[str, Any] | None = None, ack: bool = False, requeue: bool = False,
                     release: bool = False, incr: dict[str, int] | None = None,
                     release_slot: bool | None = None) -> str:
        """A fenced status change; with `release` the job is over for this worker (entry acked, lease dropped).
        The batch's next job takes the slot when the entry is acked without a requeue, unless `release_slot` says
        otherwise (a job whose outcome is final frees its slot while its baseline still holds the entry)."""
        slot = ack and not requeue if release_slot is None else release_slot
        change = StatusChange(token=lease.token, ack=lease.entry_id if ack else "", requeue=requeue,
                              release_slot=slot, drop_lease=release, incr=incr or {})
        outcome, _ = await self.store.transition(lease.job_id, tenant=lease.tenant, allowed_from=allowed_from, to=to,
                                                 batch_id=lease.batch_id, fields=fields, event=event, change=change)
        return outcome

    async def release(self, lease: Lease, *, release_slot: bool = True) -> str:
        """Let the job go as it is (no status change): its entry is acked and the lease dropped; `release_slot`
        False when the job's batch slot was freed already (at its final status)."""
        return await self.change(lease, allowed_from=(), to="queued", ack=True, release=True,
                                 release_slot=release_slot)

    async def hand_back(self, lease: Lease, *, reason: str, fields: JobPatch | None = None,
                        not_a_try: bool = False) -> str:
        """Put a running job back on the queue (a fresh entry) for any worker to resume from its checkpoint."""
        return await self.change(lease, allowed_from=["running"], to="queued", fields=fields,
                                 event={"reason": reason}, ack=True, requeue=True, release=True,
                                 incr={"tries": -1} if not_a_try else None)

    # ---- the shared best-of-k samples (workers.baseline) -------------------------------------------------------
    async def baseline_counts(self, tenant: str, key: str) -> tuple[int, int]:
        """(samples, successes) the tenant's jobs have drawn for the baseline `key`."""
        samples, successes = await self.redis.hmget(self.keys.baseline(tenant, key), ["samples", "successes"])
        return int(samples or 0), int(successes or 0)

    async def baseline_claim(self, lease: Lease, key: str) -> bool:
        """Become the one job drawing more samples for `key` (or stay it); False while another job draws."""
        return bool(await self.store.scripts["BASELINE_CLAIM"](
            keys=[self.keys.baseline_drawer(lease.tenant, key)],
            args=[f"{lease.job_id}|{lease.token}", self.lease_ms, f"{lease.job_id}|"]))

    async def baseline_add(self, lease: Lease, key: str, samples: int, successes: int, *,
                           done: bool = False) -> tuple[int, int] | None:
        """Add samples to the shared record as its drawer (0, 0 renews the role); `done` gives the role up. The
        totals after, or None when this job no longer draws (nothing was added)."""
        totals = await self.store.scripts["BASELINE_ADD"](
            keys=[self.keys.baseline(lease.tenant, key), self.keys.baseline_drawer(lease.tenant, key)],
            args=[f"{lease.job_id}|{lease.token}", samples, successes, self.store.retention_s, self.lease_ms,
                  "1" if done else ""])
        return (int(totals[0]), int(totals[1])) if totals else None

    # ---- liveness, blobs --------------------------------------------------------------------------------------
    async def beat(self, info: dict[str, Any], *, forget_after_s: float) -> None:
        """Say this worker is alive; forget workers silent for longer than `forget_after_s`."""
        await self.redis.hset(self.keys.workers, self.worker_id, json.dumps({"seen_at": now(), **info}))
        gone = [w for w, seen in (await self.store.workers()).items()
                if seen.get("seen_at", 0) < now() - forget_after_s]
        if gone:
            await self.redis.hdel(self.keys.workers, *gone)

    async def leave(self) -> None:
        await self.redis.hdel(self.keys.workers, self.worker_id)

    async def blobs_to_delete(self, count: int = 50) -> list[str]:
        """Job ids whose blobs (adapter, leftover checkpoints) are due for deletion; the caller deletes them."""
        return await self.redis.spop(self.keys.blobs_to_delete, count) or []

