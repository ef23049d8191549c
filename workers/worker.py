"""The worker: a queue shell around the job runtime. It leases jobs from Redis, steps them together, hands them back.

    async for _ in steps:                  one iteration
        admit new or abandoned jobs        entries idle past a lease (dead workers') first, then new ones; when
                                           full, a waiting tenant under its share takes a slot of one over it
        honour cancellations               between steps, and inside a step's generation (polled every second)
        runs.step()                        one generation batch for every job not waiting for its verdicts
                                           (sdpo_core.runs.DiscoveryRuns); each job verifies in a lane of its own
        publish                            for each job that finished a step: checkpoint, then attempts/progress/
                                           events, fenced by the lease
        baselines                          add what each job's baseline drew to the tenant's shared record; end it
                                           once its estimate is settled (workers.baseline)
        finish done jobs                   at the method's end: adapter to the blob store, final status at once,
                                           adapter freed; the entry is acked once the baseline is over too

Delivery is at-least-once. A heartbeat renews each lease (and keeps its queue entry fresh); an entry idle longer
than a lease belongs to a dead worker and is reclaimed, and the job resumes from its checkpoint. Every write is
fenced by the lease token, so a worker that lost a lease cannot write for that job. SIGTERM lets the current step
go on for `shutdown_grace_s`, then stops its generation and hands the jobs back. A lost Redis connection is retried
with backoff, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

from sdpo_core.runs import BASELINE, METHOD, DiscoveryRuns, StepReport
from sdpo_core.serving import load_serving
from sdpo_core.statuses import BASELINE_LIVE
from sdpo_core.verification.hardening import make_undumpable, start_resource_tracker_without_secrets
from workers import checkpoint
from workers.active_job import ActiveJob
from workers.lifecycle import JobLifecycle
from workers.logs import log_context, set_context
from workers.settings import WorkerSettings
from workers.store import STORE_UNAVAILABLE, StoreFull, WorkerQueue, open_store

log = logging.getLogger(__name__)
FORGET_WORKERS_AFTER_S = 3600  # a worker silent this long is dropped from the liveness table
BACKOFF_S = (0.5, 10.0)  # first and longest wait between tries while Redis is unreachable
POLL_DURING_STEP_S = 1.0  # how often cancellations (and a shutdown's grace) are looked at while a step runs
LOOKAHEAD = 16  # queue entries a full worker reads to find a tenant waiting under its share


class Worker:
    """One process, one base model, up to `settings.max_jobs` interleaved jobs."""

    def __init__(self, settings: WorkerSettings, *, checkpoints: checkpoint.CheckpointStore | None = None) -> None:
        self.settings = settings
        self.checkpoints = checkpoints or checkpoint.open_store(settings.checkpoint_location,
                                                               s3_endpoint_url=settings.s3_endpoint_url)
        self.id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        self.jobs: dict[str, ActiveJob] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`)."""
        set_context(worker=self.id)
        make_undumpable()  # its environment holds the Redis password and storage keys
        start_resource_tracker_without_secrets()  # the one process of ours that could not hide them itself
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, self.stop)
        s = self.settings
        self.serving = await asyncio.to_thread(load_serving, s.engine_settings)
        self.runs = DiscoveryRuns(self.serving.engine, step_seconds=s.max_step_seconds,
                                  chunk_attempts=s.max_batch_size)
        self.store = open_store(s.redis_url, s.redis_prefix, max_connections=s.redis_max_connections,
                                events_maxlen=s.events_maxlen, retention_s=s.retention_s)
        self.queue = WorkerQueue(self.store, self.id, lease_ms=s.lease_ms)
        self.lifecycle = JobLifecycle(self.queue, self.checkpoints, self.serving, s)
        heartbeat: asyncio.Task | None = None
        log.info("worker %s serving %s, checkpoints in %s", self.id, self.serving.model_name, self.checkpoints.url)
        try:
            await self._with_redis(self.store.ensure_group)  # Redis may come up after the worker
            heartbeat = asyncio.create_task(self._heartbeat())
            await self._with_redis(self._beat)
            await self._with_redis(self._serve_once, forever=True)
        finally:
            if heartbeat:
                heartbeat.cancel()
            await self._hand_back_all()
            with contextlib.suppress(*STORE_UNAVAILABLE):  # the table forgets silent workers
                await self.queue.leave()
            await self.store.close()

    def stop(self) -> None:
        log.info("worker %s stopping after the current step", self.id)
        self.stopping.set()

    async def _with_redis(self, step, *, forever: bool = False) -> None:
        """Run `step` once (or until stopped, if `forever`); while Redis is unreachable, retry with backoff."""
        delay = 0.0
        while not self.stopping.is_set():
            try:
                await step()
                delay = 0.0
                if not forever:
                    return
            except (*STORE_UNAVAILABLE, StoreFull) as exc:  # a restart, a failover, a full Redis: wait, try again
                delay = min(max(delay * 2, BACKOFF_S[0]), BACKOFF_S[1])
                log.warning("redis unavailable (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)

    async def _serve_once(self) -> None:
        await self._admit_jobs()
        if self.jobs:
            await self._iteration()

    # ---- heartbeat: leases, liveness, retention ---------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_ms / 3000)
            try:
                await self._beat()
            except STORE_UNAVAILABLE as exc:  # the main loop reports the outage and backs off; keep beating
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            except Exception:  # noqa: BLE001 - nothing may kill the heartbeat
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        """Renew leases, say we are alive, forget expired jobs and delete their blobs."""
        for job in list(self.jobs.values()):
            if not job.lost and not await self.queue.renew(job.lease):
                with job.log_context():
                    log.warning("job %s: lease lost; dropping it", job.id)
                job.lost = True
            elif job.baseline is not None and job.baseline.state == "running":  # keep drawing for its key
                await self.queue.baseline_add(job.lease, job.baseline.key, 0, 0)
        info = {"model": self.serving.model_name, "jobs": sorted(self.jobs)}
        await self.queue.beat(info, forget_after_s=FORGET_WORKERS_AFTER_S)
        await self.store.sweep()
        await self.lifecycle.delete_retired_blobs()

    # ---- admission --------------------------------------------------------------------------------------------
    async def _admit_jobs(self) -> None:
        if self.stopping.is_set():
            return
        # a job whose outcome is final holds no slot while its baseline draws (at most max_jobs of those)
        deciding = sum(not job.outcome_final for job in self.jobs.values())
        free = min(self.settings.max_jobs - deciding, 2 * self.settings.max_jobs - len(self.jobs))
        if free <= 0:
            if self.settings.fair_share:
                await self._share_slots()
            return
        entries = await self.queue.next_entries(free, block_ms=None if self.jobs else self.settings.poll_ms)
        for entry_id, job_id in entries:
            await self._admit_entry(entry_id, job_id)

    async def _admit_entry(self, entry_id: str, job_id: str) -> None:
        with log_context(job_id=job_id, tenant=None):
            try:
                await self._admit(entry_id, job_id)
            except STORE_UNAVAILABLE:
                raise
            except Exception:  # noqa: BLE001 - one bad entry never stops the worker
                log.exception("job %s: admission failed", job_id)

    async def _share_slots(self) -> None:
        """Every slot is taken: look at the next queue entries; the first whose tenant holds less than its share
        (max_jobs over the tenants running here or waiting) while another holds more takes the slot of that
        tenant's longest-running job, which is handed back (not a try; it resumes from its checkpoint). The other
        entries go back to the queue's tail, for any worker."""
        running = self._running_by_tenant()
        if max(map(len, running.values()), default=0) <= max(1, self.settings.max_jobs // (len(running) + 1)):
            return  # no tenant holds more than a newcomer's share: nothing to hand over, leave the queue alone
        entries = await self.queue.next_entries(LOOKAHEAD, block_ms=None)
        if not entries:
            return
        heads = await self.store.get_heads([job_id for _, job_id in entries])
        for (entry_id, job_id), head in zip(entries, heads, strict=True):
            if head is None or head.finished:
                await self.queue.ack(entry_id, batch_id=head.batch_id if head else "")
                continue
            victim = self._over_share(head.tenant)
            if victim is None:
                await self.queue.defer(entry_id, job_id)
                continue
            with victim.log_context():
                log.info("job %s: handed back, its tenant holds more than its share while tenant %s waits",
                         victim.id, head.tenant)
                await self.queue.hand_back(victim.lease, reason="its slot went to another tenant's job (fair "
                                           "share); it resumes from its checkpoint", not_a_try=True)
            self._forget(victim)
            await self._admit_entry(entry_id, job_id)

    def _over_share(self, waiting_tenant: str) -> ActiveJob | None:
        """The job to hand back so that `waiting_tenant` gets a slot, or None when it already holds its share or
        no tenant holds more than its share."""
        running = self._running_by_tenant()
        share = max(1, self.settings.max_jobs // len(set(running) | {waiting_tenant}))
        if len(running.get(waiting_tenant, [])) >= share:
            return None
        heaviest = max(running.values(), key=len, default=[])
        if len(heaviest) <= share:
            return None
        return min(heaviest, key=lambda job: job.admitted_at)

    def _running_by_tenant(self) -> dict[str, list[ActiveJob]]:
        running: dict[str, list[ActiveJob]] = {}
        for job in self.jobs.values():
            if not job.lost and not job.outcome_final:
                running.setdefault(job.lease.tenant, []).append(job)
        return running

    async def _admit(self, entry_id: str, job_id: str) -> None:
        record = await self.store.get(job_id)
        if record is not None and record.finished and record.baseline_state in BASELINE_LIVE:
            await self._interrupted_baseline(entry_id, record)
            return
        if record is None or record.finished:
            await self.queue.ack(entry_id, batch_id=record.batch_id if record else "")
            return
        set_context(tenant=record.tenant)
        lease = await self.queue.take(entry_id, record)
        if lease is None:
            return  # a live worker still holds it
        job = await self.lifecycle.start(lease, record)
        if job is not None:
            self.jobs[job.id] = job
            self.runs.add(job.id, job.runs, background=(BASELINE,))

    async def _interrupted_baseline(self, entry_id: str, record) -> None:
        """A job whose worker died after its final status, while its baseline drew: the outcome stands; the
        baseline ends `interrupted` with the counts it reached (a later job on the problem goes on from them)."""
        lease = await self.queue.take(entry_id, record)
        if lease is not None:
            await self.lifecycle.interrupt_baseline(lease)

    # ---- one iteration ----------------------------------------------------------------------------------------
    async def _iteration(self) -> None:
        jobs = [job for job in self.jobs.values() if not job.lost]
        for job, cancel in zip(jobs, await self.store.cancel_requested([j.id for j in jobs]), strict=True):
            if cancel:
                await self._cancel(job)
        stepping = [job for job in jobs if job.stepping]
        if stepping:
            clock = time.perf_counter()
            report = await self._step([job.id for job in stepping])
            seconds = (time.perf_counter() - clock) / max(1, len(report.runs))
            for job in stepping:
                with job.log_context():
                    if job.id in report.failures:
                        await self.lifecycle.fail(job, report.failures[job.id])
                        self._forget(job)
                    elif id(job.method) in report.runs:
                        await self.lifecycle.after_step(job, seconds)
        elif jobs and all(job.outcome_final for job in jobs):  # only baselines waiting for another job's samples
            await asyncio.sleep(self.settings.poll_ms / 1000)
        for job in list(self.jobs.values()):
            with job.log_context():
                if not job.lost and job.method.done and not job.outcome_final:  # the outcome first, always
                    await self.lifecycle.finish(job)
                    if job.id in self.runs.groups:
                        self.runs.free(job.id, METHOD)  # its adapter is saved: free it while the baseline draws
                if not job.lost:
                    await self.lifecycle.advance_baseline(job)
                if not job.lost and job.over and not job.released:  # its baseline ended after its outcome
                    await self.lifecycle.release(job)
                if job.lost or job.released:
                    self._forget(job)

    async def _cancel(self, job: ActiveJob) -> None:
        """Its owner cancelled the job (or, once its outcome is final, its comparison): stop what still runs."""
        if not job.outcome_final:
            job.method.cancel()
            job.pending.clear()  # the run's "finished" event: the final status event says it
        await self.lifecycle.end_baseline(job, "cancelled")

    async def _step(self, job_ids: list[str]) -> StepReport:
        """One scheduler step in a thread; meanwhile, every second, a cancelled job's generation is stopped, and
        after a SIGTERM's grace every job's is (the jobs are then handed back)."""
        step = asyncio.ensure_future(asyncio.to_thread(self.runs.step, job_ids))
        stop_all_at = None
        while not (await asyncio.wait({step}, timeout=POLL_DURING_STEP_S))[0]:
            with contextlib.suppress(*STORE_UNAVAILABLE):
                for job_id, cancel in zip(job_ids, await self.store.cancel_requested(job_ids), strict=True):
                    if cancel:
                        self.runs.stop(job_id)
            if self.stopping.is_set():
                stop_all_at = stop_all_at or time.monotonic() + self.settings.shutdown_grace_s
                if time.monotonic() >= stop_all_at:
                    for job_id in job_ids:
                        self.runs.stop(job_id)
        return step.result()

    # ---- endings ----------------------------------------------------------------------------------------------
    async def _hand_back_all(self) -> None:
        for job in list(self.jobs.values()):
            with job.log_context():
                try:
                    if not job.lost and job.outcome_final:  # its outcome stands; its baseline stops here
                        await self.lifecycle.end_baseline(job, "interrupted")
                        await self.lifecycle.release(job)
                    elif not job.lost:  # a handover is not a failure: the try is given back
                        await self.queue.hand_back(job.lease, reason="worker shut down", not_a_try=True)
                except Exception:  # noqa: BLE001 - the lease expiry hands it over anyway
                    log.exception("job %s: hand-back failed", job.id)
            self._forget(job)

    def _forget(self, job: ActiveJob) -> None:
        """Free the job's adapters (policy and engine) and its verifier lane, and stop holding it."""
        if job.id in self.runs.groups:
            self.runs.close(job.id)
        self.lifecycle.release_verifier(job.id)
        self.jobs.pop(job.id, None)
