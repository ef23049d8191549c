"""Every Redis key the service uses, in one place; the store passes them to its Lua scripts as KEYS.

All keys share a prefix (default ``sdpo``) so that one Redis can host several deployments or test sessions. No
script builds a key name itself: each receives every key it touches in KEYS, as Redis Cluster requires. On a
cluster, give the prefix a hash tag (``{sdpo}``) so that all keys of a deployment share one slot.

=================================  ===========  =====================================================================
key                                type         what it holds
=================================  ===========  =====================================================================
{p}:queue                          stream       one entry per job to run: ``job_id``; consumer group ``workers``
{p}:job:{id}                       hash         the job record (workers.jobs.JobRecord): status, times, spec, progress
{p}:job:{id}:events                stream       progress events (``type``, ``data`` JSON), capped; ids feed SSE
{p}:job:{id}:attempts              list         the method's attempts as JSON, in order, up to the per-job byte cap
{p}:job:{id}:lease                 string       the lease token ``<worker>/<generation>`` of the job's holder; expires
{p}:tenant:{t}:jobs                zset         the tenant's job ids (score 0, ordered by the time-sortable id)
{p}:tenant:{t}:status:{s}          zset         the tenant's job ids with status ``s`` (same ordering)
{p}:tenant:{t}:batches             zset         the tenant's batch ids
{p}:tenant:{t}:bytes               string       bytes the tenant's kept jobs hold (records, attempts, events): quota
{p}:tenant:{t}:rate:{window}       string       requests in the current rate-limit window (expires)
{p}:idem:{t}:{kind}:{key}          string       an Idempotency-Key's request fingerprint and resulting id (expires)
{p}:batch:{id}                     hash         the batch record: tenant, settings, timestamps; finished: its outcome
{p}:batch:{id}:jobs                list         the batch's job ids in problem order
{p}:batch:{id}:waiting             list         job ids not yet on the queue (the batch's concurrency limit)
{p}:baseline:{t}:{key}             hash         best-of-k samples drawn for one (problem, verifier, model, sampling):
                                                ``samples``, ``successes``; shared by the tenant's jobs; expires
{p}:baseline:{t}:{key}:drawer      string       ``<job id>|<lease token>`` of the one job drawing more of them; expires
{p}:retiring                       zset         finished job ids, scored by when their retention ends
{p}:blobs_to_delete                set          job ids whose stored blobs (the adapter) a worker must delete
{p}:workers                        hash         worker id -> JSON {seen_at, model, jobs}: liveness for /readyz
{p}:metrics:counters               hash         counters: attempts, steps, verifier outcomes, jobs finished by status
{p}:metrics:jobs_by_status         hash         jobs per status (terminal ones counted since the Redis was created)
{p}:metrics:step_seconds           hash         step latency histogram: bucket upper bounds, ``sum``, ``count``
{p}:metrics:attempts_log           stream       one entry per step with its attempt count (ids are timestamps)
=================================  ===========  =====================================================================

A finished job's keys are deleted when its retention ends (the store's sweep, run by the API and the workers); an
expiry one retention later stays as a backstop. Ids drop out of the tenant's indexes in the same sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdpo_core.statuses import STATUSES

GROUP = "workers"  # the queue's consumer group


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "sdpo"

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def attempts(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:attempts"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:lease"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_status(self, tenant: str, status: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:status:{status}"

    def tenant_statuses(self, tenant: str) -> list[str]:
        """The tenant's per-status indexes, in the order of sdpo_core.statuses.STATUSES."""
        return [self.tenant_status(tenant, status) for status in STATUSES]

    def tenant_batches(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:batches"

    def tenant_bytes(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:bytes"

    def rate(self, tenant: str, window: int) -> str:
        return f"{self.prefix}:tenant:{tenant}:rate:{window}"

    def idempotency(self, tenant: str, kind: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{kind}:{key}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:jobs"

    def batch_waiting(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:waiting"

    def baseline(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:baseline:{tenant}:{key}"

    def baseline_drawer(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:baseline:{tenant}:{key}:drawer"

    @property
    def retiring(self) -> str:
        return f"{self.prefix}:retiring"

    @property
    def blobs_to_delete(self) -> str:
        return f"{self.prefix}:blobs_to_delete"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def counters(self) -> str:
        return f"{self.prefix}:metrics:counters"

    @property
    def jobs_by_status(self) -> str:
        return f"{self.prefix}:metrics:jobs_by_status"

    @property
    def step_seconds(self) -> str:
        return f"{self.prefix}:metrics:step_seconds"

    @property
    def attempts_log(self) -> str:
        return f"{self.prefix}:metrics:attempts_log"
