"""The worker: takes jobs from the Redis queue, runs their loops interleaved on one base model, checkpoints each step.

    async for _ in steps:                  one iteration
        admit new or abandoned jobs        XAUTOCLAIM (dead workers' entries) then XREADGROUP; a lease per job
        honour cancellations               between steps
        run_step(all live runs)            one generation batch for every job, one adapter each
        checkpoint -> publish              the checkpoint first, then attempts/progress/events in one MULTI
        finish done jobs                   adapter archive, final status, XACK + XDEL, drop the lease and checkpoint

Delivery is at-least-once. A heartbeat renews each job's lease and resets its stream entry's idle time; an entry
idle longer than the lease belongs to a dead worker and is reclaimed, and the job resumes from its checkpoint.
Attempts are appended only past the list's length, so a resumed step is never counted twice. SIGTERM lets the
current step finish, then hands the jobs back to the queue. Checkpoints go to a `CheckpointStore` (a shared directory
or object storage) that every worker reaches. A lost Redis connection is retried with backoff, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers import checkpoint
from workers.checkpoint import CheckpointStore
from workers.jobs import TERMINAL, JobFailure, JobSpec, now
from workers.keys import GROUP, Keys
from workers.logs import log_context, set_context
from workers.metrics import record_finished, record_step, verifier_outcome
from workers.runtime import METHOD, ActiveJob, open_runs
from workers.store import JobStore

log = logging.getLogger(__name__)
FORGET_WORKERS_AFTER_S = 3600  # a worker silent this long is dropped from the liveness table
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError)  # BusyLoadingError (an AOF replay) is a ConnectionError
BACKOFF_S = (0.5, 10.0)  # first and longest wait between tries while Redis is unreachable


class Worker:
    """One process, one base model, up to `max_jobs` interleaved jobs.

    :param redis_url: the Redis holding the queue and the jobs
    :param model: the base model to serve (HF id or local folder; None = the offline default)
    :param checkpoints: where job checkpoints go (a store, a directory, or s3://bucket/prefix); every worker that
        may reclaim another's jobs must reach the same one
    :param max_jobs: jobs run at once (their attempts share generation batches)
    :param lease_ms: a job whose worker has not renewed its lease for this long is reclaimed by another
    :param max_tries: starts a job gets (crashes and errors included) before it ends `failed`
    :param poll_ms: how long an idle worker blocks waiting for a job
    :param retention_s: how long finished jobs are kept
    :param max_batch_size: generation slots of the engine
    :param engine: the generation engine, "transformers" or "vllm" (None: sdpo_core.engines.default_engine())
    :param dtype: the base weights' dtype, "auto", "bfloat16" or "float32" (None: sdpo_core.models.choose_dtype)
    """

    def __init__(
        self, *, redis_url: str, model: str | None, checkpoints: CheckpointStore | str | Path, prefix: str = "sdpo",
        max_jobs: int = 4,
        lease_ms: int = 30_000, max_tries: int = 3, poll_ms: int = 1000, retention_s: int = 7 * 86400,
        events_maxlen: int = 10_000, max_batch_size: int = 32, worker_id: str | None = None,
        engine: str | None = None, dtype: str | None = None,
    ) -> None:
        if max_jobs < 1 or lease_ms < 1000 or max_tries < 1:
            raise ValueError("max_jobs and max_tries must be >= 1 and lease_ms >= 1000")
        self.redis_url, self.model = redis_url, model
        self.checkpoints = checkpoints if hasattr(checkpoints, "save") else checkpoint.open_store(checkpoints)
        self.keys = Keys(prefix)
        self.max_jobs, self.lease_ms, self.max_tries, self.poll_ms = max_jobs, lease_ms, max_tries, poll_ms
        self.retention_s, self.events_maxlen, self.max_batch_size = retention_s, events_maxlen, max_batch_size
        self.engine_name, self.dtype = engine, dtype
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        self.active: dict[str, ActiveJob] = {}
        self.stopping = asyncio.Event()
        self.model_name = ""
        self.policy: Any = None
        self.engine: Any = None

    # ---- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or `stop()`)."""
        set_context(worker=self.id)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        await asyncio.to_thread(self._load_model)
        self.redis = Redis.from_url(self.redis_url)
        self.store = JobStore(self.redis, self.keys, events_maxlen=self.events_maxlen, retention_s=self.retention_s)
        heartbeat: asyncio.Task | None = None
        log.info("worker %s serving %s, checkpoints in %s", self.id, self.model_name, self.checkpoints.url)
        try:
            await self._with_redis(self.store.ensure_group)  # Redis may come up after the worker
            heartbeat = asyncio.create_task(self._heartbeat())
            await self._with_redis(self._beat)
            await self._with_redis(self._serve_once, forever=True)
        finally:
            if heartbeat:
                heartbeat.cancel()
            await self._hand_back_all()
            try:
                await self.redis.hdel(self.keys.workers, self.id)
            except REDIS_ERRORS:
                pass  # the table forgets silent workers
            await self.redis.aclose()

    async def _serve_once(self) -> None:
        await self._admit_jobs()
        if self.active:
            await self._iteration()

    async def _with_redis(self, step, *, forever: bool = False) -> None:
        """Run `step` once (or until stopped, if `forever`); while Redis is unreachable, retry with backoff."""
        delay = 0.0
        while not self.stopping.is_set():
            try:
                await step()
                delay = 0.0
                if not forever:
                    return
            except REDIS_ERRORS as exc:  # a restart, a failover, a network blip: wait and try again
                delay = min(max(delay * 2, BACKOFF_S[0]), BACKOFF_S[1])
                log.warning("redis unavailable (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)

    def stop(self) -> None:
        log.info("worker %s stopping after the current step", self.id)
        self.stopping.set()

    def _load_model(self) -> None:
        import warnings

        from sdpo_core.engines import make_engine
        from sdpo_core.models import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model
        from sdpo_core.policy import LoraPolicy

        warnings.filterwarnings("ignore", category=FutureWarning)
        base, tokenizer = load_model_and_tokenizer(self.model, dtype=self.dtype)
        self.model_name = self.model or DEFAULT_MODEL
        self.resolved_model = resolve_model(self.model)
        self.policy = LoraPolicy(base, tokenizer)
        self.engine = make_engine(self.policy, self.resolved_model, self.engine_name,
                                  max_batch_size=self.max_batch_size, max_adapters=max(16, self.max_jobs))

    # ---- heartbeat --------------------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self._beat()
            except REDIS_ERRORS as exc:  # the main loop reports the outage and backs off; keep beating
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            except Exception:  # noqa: BLE001 - nothing may kill the heartbeat
                log.exception("heartbeat failed")

    async def _beat(self) -> None:
        """Renew leases, keep our stream entries fresh, say we are alive."""
        for job in list(self.active.values()):
            if not await self.store.renew_lease(job.id, self.id, self.lease_ms):
                with job.log_context():
                    log.warning("job %s: lease lost; dropping it", job.id)
                job.lost = True
        entries = [job.entry_id for job in self.active.values() if not job.lost]
        if entries:
            await self.redis.xclaim(self.keys.queue, GROUP, self.id, 0, entries, justid=True)
        info = {"seen_at": now(), "model": self.model_name, "jobs": sorted(self.active)}
        await self.redis.hset(self.keys.workers, self.id, json.dumps(info))
        gone = [w for w, raw in (await self.redis.hgetall(self.keys.workers)).items()
                if json.loads(raw).get("seen_at", 0) < now() - FORGET_WORKERS_AFTER_S]
        if gone:
            await self.redis.hdel(self.keys.workers, *gone)

    # ---- admission --------------------------------------------------------------------------------------------
    async def _admit_jobs(self) -> None:
        free = self.max_jobs - len(self.active)
        if free <= 0 or self.stopping.is_set():
            return
        _, claimed, *_ = await self.redis.xautoclaim(self.keys.queue, GROUP, self.id, self.lease_ms, "0-0", count=free)
        entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if len(entries) < free:
            block = None if self.active or entries else self.poll_ms
            reply = await self.redis.xreadgroup(GROUP, self.id, {self.keys.queue: ">"}, count=free - len(entries),
                                                block=block)
            entries += reply[0][1] if reply else []
        for entry_id, fields in entries:
            job_id = (fields.get(b"job_id") or b"").decode()
            with log_context(job_id=job_id, tenant=None):
                try:
                    await self._admit(entry_id.decode(), job_id)
                except REDIS_ERRORS:
                    raise
                except Exception:  # noqa: BLE001 - one bad entry never stops the worker
                    log.exception("job %s: admission failed", job_id)

    async def _admit(self, entry_id: str, job_id: str) -> None:
        record = await self.store.get(job_id)
        if record is None or record["status"] in TERMINAL:
            await self._ack(entry_id, record.get("batch_id", "") if record else "")
            return
        set_context(tenant=record.get("tenant"))
        if not await self.store.take_lease(job_id, self.id, self.lease_ms):
            return  # a live worker still holds it
        tries = await self.redis.hincrby(self.keys.job(job_id), "tries", 1)
        job = ActiveJob(id=job_id, entry_id=entry_id, spec=None, batch_id=record.get("batch_id", ""), runs={},
                        tenant=record.get("tenant", ""))
        try:
            if tries > self.max_tries:
                last = record.get("last_error") or "the worker running it stopped (crashed or was killed)"
                raise JobFailure("job_keeps_failing", f"the job was started {tries - 1} times and did not finish; "
                                                      f"last error: {last}")
            job.spec = self._parse_spec(record)
            verify = self._verify_function(job.spec)
            started = record.get("started_at") or now()
            outcome, status = await self.store.transition(
                job_id, allowed_from=["queued", "running"], to="running",
                fields={"worker": self.id, "started_at": started}, event={"worker": self.id, "try": tries},
            )
            if outcome != "ok":
                await self._release(job, entry_ack=True)
                return
            states = await asyncio.to_thread(checkpoint.load_states, self.checkpoints, job_id)
            await asyncio.to_thread(open_runs, job, policy=self.policy, verify=verify, states=states)
        except Exception as exc:  # noqa: BLE001 - the job fails, the worker goes on
            await self._fail(job, exc)
            return
        if states:
            await self._resume_attempts(job)
        self.active[job_id] = job
        log.info("job %s: running (try %d%s)", job_id, tries, ", resumed" if states else "")

    def _parse_spec(self, record: dict[str, str]) -> JobSpec:
        try:
            spec = JobSpec.model_validate_json(record["spec"])
        except (KeyError, ValidationError) as exc:
            raise JobFailure("invalid_job", f"the stored job cannot be read: {exc}") from exc
        if spec.model not in (None, self.model_name, self.model):
            raise JobFailure("model_not_served", f"the job asks for model '{spec.model}', but the workers serve "
                                                 f"'{self.model_name}'; leave 'model' out or submit where it is served")
        return spec

    def _verify_function(self, spec: JobSpec):
        from workers.verification import verify_function

        try:
            return verify_function(spec.problem)
        except Exception as exc:  # noqa: BLE001 - a verifier that cannot be built is the user's to fix
            raise JobFailure("verifier_unavailable", f"the verifier cannot be set up: {type(exc).__name__}: {exc}") \
                from exc

    async def _resume_attempts(self, job: ActiveJob) -> None:
        """Make the attempts list equal the checkpoint's: drop any beyond it, add any the crash lost."""
        attempts = job.runs[METHOD].attempts
        await self.store.trim_attempts(job.id, len(attempts))
        await self.store.publish_progress(
            job.id, attempts=[a.model_dump_json() for a in attempts], first_index=1, fields=job.progress_fields(),
            events=[("resumed", {"at": now(), "worker": self.id, "attempts": len(attempts)})],
        )
        job.published_attempts = len(attempts)

    # ---- one iteration ----------------------------------------------------------------------------------------
    async def _iteration(self) -> None:
        await self._honour_cancellations()
        stepping = [job for job in self.active.values() if not job.lost and not job.done]
        if stepping:
            clock = time.perf_counter()
            failed = await self._step(stepping)
            seconds = time.perf_counter() - clock
            for job in stepping:
                if job.id not in failed:
                    with job.log_context():
                        await self._after_step(job, seconds / len(stepping))
        for job in list(self.active.values()):
            if job.lost:
                self._forget(job)
            elif job.done:
                with job.log_context():
                    await self._finish(job)

    async def _honour_cancellations(self) -> None:
        jobs = list(self.active.values())
        if not jobs:
            return
        flags = await self.store.get_many([j.id for j in jobs], fields=["cancel_requested_at"])
        for job, flag in zip(jobs, flags, strict=True):
            if flag and flag.get("cancel_requested_at"):
                for run in job.runs.values():
                    run.cancel()
                job.pending.clear()  # the runs' "finished" events: the final status event says it

    async def _step(self, jobs: list[ActiveJob]) -> set[str]:
        """One generation batch for all jobs; if it raises, each job alone to find the one at fault."""
        from sdpo_core.loop import run_step

        runs = [run for job in jobs for run in job.live_runs()]
        try:
            await asyncio.to_thread(run_step, runs, self.engine)
            return set()
        except Exception:  # noqa: BLE001
            log.exception("a joint step failed; stepping jobs one by one")
        failed = set()
        for job in jobs:
            try:
                await asyncio.to_thread(run_step, job.live_runs(), self.engine)
            except Exception as exc:  # noqa: BLE001 - this job's fault
                failed.add(job.id)
                with job.log_context():
                    await self._fail(job, exc)
        return failed

    async def _after_step(self, job: ActiveJob, seconds: float) -> None:
        """Checkpoint, then publish the step's attempts, progress and events."""
        try:
            await asyncio.to_thread(checkpoint.save_states, self.checkpoints, job.id, job.states())
        except Exception:  # noqa: BLE001 - the job goes on; a takeover would resume from the previous checkpoint
            log.exception("job %s: checkpoint to %s failed", job.id, self.checkpoints.url)
        if job.lost:
            return
        method = job.runs[METHOD]
        new = method.attempts[job.published_attempts:]
        added = await self.store.publish_progress(
            job.id, attempts=[a.model_dump_json() for a in new], first_index=job.published_attempts + 1,
            fields=job.progress_fields(), events=job.take_events(),
        )
        job.published_attempts = len(method.attempts)
        outcomes = [verifier_outcome(a.solved, a.feedback) for a in new[len(new) - added:]]
        await record_step(self.redis, self.keys, attempts=added, seconds=seconds, outcomes=outcomes)

    # ---- endings ----------------------------------------------------------------------------------------------
    async def _finish(self, job: ActiveJob) -> None:
        method = job.runs[METHOD]
        status = method.status if method.status in TERMINAL else "exhausted"
        if status == "succeeded" and method.first_success is None:
            status = "exhausted"
        if any(run.status == "cancelled" for run in job.runs.values()):
            status = "cancelled"
        fields = {**job.progress_fields(), "error_code": "", "error_message": ""}
        if job.spec.settings.method == "sdpo" and status != "cancelled":
            try:
                archive = await asyncio.to_thread(
                    checkpoint.adapter_archive, method.state_dict(), job.spec.settings, self.resolved_model)
                await self.redis.set(self.keys.adapter(job.id), archive, ex=self.retention_s)
            except Exception:  # noqa: BLE001 - the result stands without the archive
                log.exception("job %s: adapter export failed", job.id)
        rest = method.attempts[job.published_attempts:]  # a step whose publication Redis missed
        await self.store.publish_progress(job.id, attempts=[a.model_dump_json() for a in rest],
                                          first_index=job.published_attempts + 1, fields={}, events=job.take_events())
        job.published_attempts = len(method.attempts)
        outcome, _ = await self.store.transition(job.id, allowed_from=["running"], to=status, fields=fields,
                                                 event={"attempts": len(method.attempts)})
        if outcome == "ok":
            await record_finished(self.redis, self.keys, status)
        log.info("job %s: %s after %d attempts", job.id, status, len(method.attempts))
        await self._release(job, entry_ack=True)

    async def _fail(self, job: ActiveJob, exc: BaseException) -> None:
        """A job's error: retried from its checkpoint while tries remain, else it ends `failed`."""
        if isinstance(exc, JobFailure):
            failure = exc
        else:
            log.exception("job %s failed", job.id, exc_info=exc)
            failure = JobFailure("job_error", f"{type(exc).__name__}: {exc}", retryable=True)
        tries = int(await self.redis.hget(self.keys.job(job.id), "tries") or 0)
        if failure.retryable and tries < self.max_tries:
            await self.redis.hset(self.keys.job(job.id), "last_error", failure.message)
            await self._hand_back(job, reason=f"error, will retry: {failure.message}")
            return
        message = failure.message
        if failure.retryable:
            failure.code, message = "job_keeps_failing", f"the job failed {tries} times; last error: {message}"
        outcome, _ = await self.store.transition(
            job.id, allowed_from=["queued", "running"], to="failed",
            fields={"error_code": failure.code, "error_message": message},
            event={"error": {"code": failure.code, "message": message}},
        )
        if outcome == "ok":
            await record_finished(self.redis, self.keys, "failed")
        log.warning("job %s failed: %s: %s", job.id, failure.code, message)
        await self._release(job, entry_ack=True)

    async def _hand_back(self, job: ActiveJob, *, reason: str) -> None:
        """Put a running job back on the queue (a fresh entry) for any worker to resume from its checkpoint."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.queue, GROUP, job.entry_id)
            pipe.xdel(self.keys.queue, job.entry_id)  # as _ack does: a spent entry left behind inflates the depth
            pipe.xadd(self.keys.queue, {"job_id": job.id})
            await pipe.execute()
        await self.store.transition(job.id, allowed_from=["running"], to="queued", event={"reason": reason})
        await self._release(job, entry_ack=False)

    async def _hand_back_all(self) -> None:
        for job in list(self.active.values()):
            try:
                if not job.lost:
                    with job.log_context():
                        await self.redis.hincrby(self.keys.job(job.id), "tries", -1)  # a handover is not a failure
                        await self._hand_back(job, reason="worker shut down")
                else:
                    self._forget(job)
            except Exception:  # noqa: BLE001 - the lease expiry hands it over anyway
                log.exception("job %s: hand-back failed", job.id)

    async def _release(self, job: ActiveJob, *, entry_ack: bool) -> None:
        if entry_ack:
            await self._ack(job.entry_id, job.batch_id)
        await self.store.drop_lease(job.id, self.id)
        if entry_ack:  # the job is over (or was never ours to run): its checkpoint is no longer needed
            try:
                await asyncio.to_thread(self.checkpoints.delete, job.id)
            except Exception:  # noqa: BLE001 - a leftover checkpoint costs storage, not correctness
                log.exception("job %s: deleting its checkpoint failed", job.id)
        self._forget(job)

    async def _ack(self, entry_id: str, batch_id: str) -> None:
        await self.redis.xack(self.keys.queue, GROUP, entry_id)
        await self.redis.xdel(self.keys.queue, entry_id)
        if batch_id:
            await self.store.release_batch_slot(batch_id)

    def _forget(self, job: ActiveJob) -> None:
        job.close()
        self.active.pop(job.id, None)
