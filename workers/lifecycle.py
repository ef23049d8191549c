"""A leased job from start to end: open its runs (fresh or from its checkpoint), publish each step, finish or fail;
then, while its baseline still draws (workers.baseline), add the baseline's samples to the shared record and let
the job go when it is done.

Every write goes through the fenced store (workers.store.leases): when a write reports `fenced`, another worker
holds the job now, and this one drops it without touching anything else. A checkpoint is a blob named for the
lease generation; the step's publication makes it the job's current one, so a stale holder's blob is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import ValidationError

from sdpo_core.failures import RunFailure
from sdpo_core.loop import ProblemRun
from sdpo_core.methods import learns
from sdpo_core.runs import (
    BASELINE,
    METHOD,
    baseline_key,
    baseline_settings,
    comparison_runs,
    comparison_settings,
    continuation_seed,
    self_baseline,
)
from sdpo_core.serving import Serving
from sdpo_core.statuses import BaselineState
from workers import checkpoint
from workers.active_job import ActiveJob
from workers.baseline import JobBaseline
from workers.checkpoint import CheckpointStore
from workers.jobs import JobFailure, JobPatch, JobRecord, JobSpec, now, step_too_large
from workers.metrics import step_metrics, verifier_outcome
from workers.settings import WorkerSettings
from workers.store import STORE_UNAVAILABLE, Lease, StepRecord, WorkerQueue

log = logging.getLogger(__name__)


class JobLifecycle:
    """Starts, publishes, finishes and fails the jobs of one worker."""

    def __init__(self, queue: WorkerQueue, checkpoints: CheckpointStore, serving: Serving,
                 settings: WorkerSettings) -> None:
        self.queue, self.checkpoints, self.serving, self.settings = queue, checkpoints, serving, settings

    # ---- start ------------------------------------------------------------------------------------------------
    async def start(self, lease: Lease, record: JobRecord) -> ActiveJob | None:
        """The job running on this worker, or None if it failed, was refused or is no longer ours."""
        job = ActiveJob(lease=lease, spec=None)  # type: ignore[arg-type] - set below; fail() only needs the lease
        try:
            if lease.tries > self.settings.max_tries:
                last = record.last_error or "the worker running it stopped (crashed or was killed)"
                raise JobFailure("job_keeps_failing", f"the job was started {lease.tries - 1} times and did not "
                                                      f"finish; last error: {last}")
            job.spec = self._spec(record)
            await asyncio.to_thread(self._check_size, job.spec)  # tokenizes the prompt
            verify = self._verify_function(job.spec, lease.job_id)
            outcome = await self.queue.change(
                lease, allowed_from=["queued", "running"], to="running",
                fields=JobPatch(worker=self.queue.worker_id, started_at=record.started_at or now()),
                event={"worker": self.queue.worker_id, "try": lease.tries})
            if outcome != "ok":
                await self.queue.release(lease)
                return None
            job.checkpoint = checkpoint.checkpoint_name(lease.generation)
            job.previous_checkpoint = record.checkpoint
            states = await asyncio.to_thread(checkpoint.load_states, self.checkpoints, lease.job_id,
                                             record.checkpoint or checkpoint.FILENAME)
            if states:
                check_restored(job.spec, states, checkpoint_step=record.checkpoint_step)
            job.runs = await asyncio.to_thread(
                comparison_runs, job.spec.problem, job.spec.settings, self.serving.policy,
                baseline_samples=0, name=lease.job_id, verify=verify, sink_for=job.sink, states=states)
            job.verify = verify
            if job.spec.baseline_attempts > 0 and not self_baseline(job.spec.settings):
                job.baseline = JobBaseline(
                    key=baseline_key(job.spec.problem, job.spec.settings, self.serving.model_name),
                    cap=job.spec.baseline_attempts, budget=job.spec.settings.max_attempts)
                await self.advance_baseline(job, publish=False)
        except Exception as exc:  # noqa: BLE001 - the job fails, the worker goes on
            await self.fail(job, exc)
            return None
        if states and not await self._resume(job):
            job.lost = True
        log.info("job %s: running (try %d%s)", lease.job_id, lease.tries, ", resumed" if states else "")
        return job

    def _spec(self, record: JobRecord) -> JobSpec:
        try:
            spec = record.job_spec()
        except ValidationError as exc:
            raise JobFailure("invalid_job", f"the stored job cannot be read: {exc}") from exc
        if spec.model not in (None, self.serving.model_name, self.settings.model):
            raise JobFailure("model_not_served", f"the job asks for model '{spec.model}', but the workers serve "
                                                 f"'{self.serving.model_name}'; leave 'model' out or submit where "
                                                 "it is served")
        return spec

    def _check_size(self, spec: JobSpec) -> None:
        """The worker's own caps (a job may have been stored under other API settings) and the model's context."""
        run, limits = spec.settings, self.settings
        if run.attempts_per_step * run.max_new_tokens > limits.max_step_tokens:
            raise JobFailure("step_too_large", step_too_large(run.attempts_per_step, run.max_new_tokens,
                                                              limits.max_step_tokens))
        if spec.baseline_attempts > limits.max_baseline_attempts:
            raise JobFailure("baseline_too_large", f"{spec.baseline_attempts} baseline samples are over the "
                                                   f"workers' limit of {limits.max_baseline_attempts}")
        context = self.serving.policy.context_length
        prompt = len(self.serving.policy.chat_ids(spec.problem.chat()))
        if context is not None and prompt + run.max_new_tokens > context:
            raise JobFailure("step_too_large", f"the prompt ({prompt} tokens) plus settings.max_new_tokens "
                                               f"({run.max_new_tokens}) is over the model's context of {context} "
                                               "tokens")

    def _verify_function(self, spec: JobSpec, lane: str):
        from sdpo_core.verification.verify import verify_function

        try:
            return verify_function(spec.problem, lane=lane, settings=self.settings.verifier_pool)
        except Exception as exc:  # noqa: BLE001 - a verifier that cannot be built is the user's to fix
            raise JobFailure("verifier_unavailable", f"the verifier cannot be set up: {type(exc).__name__}: "
                                                     f"{exc}") from exc

    def release_verifier(self, job_id: str) -> None:
        """Stop the job's verifier lane (a verification still running for it ends as not run)."""
        from sdpo_core.verification.verify import shared_pool

        shared_pool(self.settings.verifier_pool).close_lane(job_id)

    async def _resume(self, job: ActiveJob) -> bool:
        """Make the attempts list equal the checkpoint's stored prefix: drop any beyond it, add any a crash lost."""
        attempts = job.method.attempts
        keep = job.restart_storage(attempts, self.settings.max_attempt_bytes)
        if await self.queue.trim(job.lease, keep) < 0:
            return False
        rows = [a.model_dump_json() for a in attempts[:keep]]
        stored = await self.queue.publish(job.lease, StepRecord(
            attempts=rows, first_index=1, fields=job.progress(),
            events=[("resumed", {"at": now(), "worker": self.queue.worker_id, "attempts": len(attempts)})]))
        job.stored_upto(stored)
        return stored >= 0

    # ---- each step --------------------------------------------------------------------------------------------
    async def after_step(self, job: ActiveJob, seconds: float) -> None:
        """Checkpoint, then publish the step's attempts, progress, events and metrics (fenced)."""
        fields, saved = job.progress(), False
        try:
            await asyncio.to_thread(checkpoint.save_states, self.checkpoints, job.id, job.states(), job.checkpoint)
            fields, saved = fields.merge(checkpoint=job.checkpoint, checkpoint_step=job.method.step), True
        except Exception:  # noqa: BLE001 - the job goes on; a takeover would resume from the previous checkpoint
            log.exception("job %s: checkpoint to %s failed", job.id, self.checkpoints.url)
        new = job.method.attempts[job.published:]
        plan = job.to_store(self.settings.max_attempt_bytes)
        counters, histogram = step_metrics([verifier_outcome(a.verdict) for a in new], seconds)
        stored = await self.queue.publish(job.lease, StepRecord(
            attempts=plan.rows, first_index=plan.first_index, fields=fields, events=job.take_events(),
            counters=counters, histogram=histogram, seconds=seconds))
        job.commit(plan)
        job.stored_upto(stored)
        if stored < 0:
            log.warning("job %s: lease lost; another worker holds it now", job.id)
            job.lost = True
        elif saved and job.previous_checkpoint not in ("", job.checkpoint):
            await self._delete_blobs(job.id, keep=(job.checkpoint, checkpoint.ADAPTER))
            job.previous_checkpoint = ""

    # ---- endings ----------------------------------------------------------------------------------------------
    async def finish(self, job: ActiveJob) -> None:
        """The job's final status; its adapter goes to the blob store, its checkpoints are deleted."""
        method = job.method
        status = method.status if method.status in ("succeeded", "exhausted", "cancelled") else "exhausted"
        if status == "succeeded" and method.first_success is None:
            status = "exhausted"
        if method.status == "cancelled":
            status = "cancelled"
        fields = job.progress().merge(error_code="", error_message="")
        if learns(job.spec.settings.method) and status != "cancelled":
            fields = fields.merge(adapter=await self._save_adapter(job))
        plan = job.to_store(self.settings.max_attempt_bytes)  # a step whose publication Redis missed
        stored = await self.queue.publish(job.lease, StepRecord(attempts=plan.rows, first_index=plan.first_index,
                                                                events=job.take_events()))
        if stored < 0:
            job.lost = True
            return
        job.commit(plan)
        job.stored_upto(stored)
        drawing = job.baseline is not None and job.baseline.live  # the lease stays until it is done
        outcome = await self.queue.change(job.lease, allowed_from=["running"], to=status, fields=fields,
                                          event={"attempts": len(method.attempts)}, ack=not drawing,
                                          release=not drawing, release_slot=True)
        job.outcome_final, job.released = True, not drawing
        log.info("job %s: %s after %d attempts%s", job.id, status, len(method.attempts),
                 "; its baseline goes on" if drawing else "")
        if outcome == "fenced":
            job.lost = True
        else:
            await self._delete_blobs(job.id, keep=(checkpoint.ADAPTER,))

    # ---- the baseline -----------------------------------------------------------------------------------------
    async def advance_baseline(self, job: ActiveJob, *, publish: bool = True) -> None:
        """Move the job's baseline on: add what its run drew to the shared record and end it once enough is drawn;
        or, while another job draws the same samples, read theirs and take over drawing when that one stops.
        Publishes the baseline's fields (and an event when its state changes)."""
        b = job.baseline
        if b is None or not b.live:
            return
        before = (b.state, b.samples)
        if b.state == "running":
            samples, successes = b.unrecorded()
            if samples or b.run.done:
                totals = await self.queue.baseline_add(job.lease, b.key, samples, successes)
                if totals is None:  # our turn expired and another job draws now: wait for theirs
                    b.end("pending")
                    b.run = None
                else:
                    (b.samples, b.successes), b.recorded = totals, b.recorded + samples
                    if b.enough or b.run.done:
                        await self.end_baseline(job, "done", publish=False)
        if b.state == "pending":
            b.samples, b.successes = await self.queue.baseline_counts(job.lease.tenant, b.key)
            if b.enough:
                b.reused = b.reused or b.samples
                b.state = "done"
            elif await self.queue.baseline_claim(job.lease, b.key):
                b.reused = b.reused or b.samples
                settings = baseline_settings(job.spec.settings, b.cap - b.samples,
                                             seed=continuation_seed(b.key, b.samples))
                b.run = ProblemRun(job.spec.problem, settings, self.serving.policy, name=f"{job.id}-baseline",
                                   verify=job.verify, on_event=job.sink(BASELINE))
                b.recorded, b.state = 0, "running"
                job.runs[BASELINE] = b.run  # the scheduler steps it (in the background) from the next batch on
        if publish and (b.state, b.samples) != before:
            await self.publish_baseline(job, changed=b.state != before[0])

    async def end_baseline(self, job: ActiveJob, state: BaselineState, *, publish: bool = True) -> None:
        """Stop the baseline (done, cancelled, interrupted) and give up drawing for its key."""
        b = job.baseline
        if b is None or not b.live:
            return
        if b.state == "running":
            with contextlib.suppress(*STORE_UNAVAILABLE):
                await self.queue.baseline_add(job.lease, b.key, 0, 0, done=True)
        b.end(state)
        if publish:
            await self.publish_baseline(job, changed=True)

    async def publish_baseline(self, job: ActiveJob, *, changed: bool) -> None:
        if await self.queue.publish(job.lease, baseline_record(job.baseline.fields(), changed=changed)) < 0:
            job.lost = True

    async def interrupt_baseline(self, lease: Lease) -> None:
        """A job whose worker died after its final status while its baseline drew (this worker took the entry
        over): the outcome stands; the baseline ends `interrupted` with the counts it reached, and the job goes."""
        log.info("job %s: its worker stopped while its baseline drew; the baseline is interrupted", lease.job_id)
        await self.queue.publish(lease, baseline_record({"baseline_state": "interrupted"}, changed=True))
        await self.queue.release(lease, release_slot=False)

    async def release(self, job: ActiveJob) -> None:
        """The job's baseline is over: let the job go (its batch slot was freed at its final status)."""
        await self.queue.release(job.lease, release_slot=False)
        job.released = True

    async def _save_adapter(self, job: ActiveJob) -> bool:
        try:
            archive = await asyncio.to_thread(checkpoint.adapter_archive, job.method.state_dict(),
                                              job.spec.settings, self.serving.resolved_model)
            await asyncio.to_thread(self.checkpoints.save, job.id, archive, checkpoint.ADAPTER)
            return True
        except Exception:  # noqa: BLE001 - the result stands without the archive
            log.exception("job %s: adapter export failed", job.id)
            return False

    async def fail(self, job: ActiveJob, exc: BaseException) -> None:
        """A job's error: retried from its checkpoint while tries remain, else it ends `failed`. Once the job's
        outcome is final only its baseline can fail: it ends `interrupted` and the outcome stands."""
        lease = job.lease
        if job.outcome_final:
            log.warning("job %s: its baseline stopped: %s: %s", lease.job_id, type(exc).__name__, exc)
            await self.end_baseline(job, "interrupted")
            await self.release(job)
            return
        if isinstance(exc, RunFailure):  # the job's own (JobFailure is one): its code and message
            failure = exc
        else:
            log.exception("job %s failed", lease.job_id, exc_info=exc)
            failure = JobFailure("job_error", f"{type(exc).__name__}: {exc}", retryable=True)
        if job.baseline is not None:  # give up drawing for its key (a retry takes it over again)
            await self.end_baseline(job, "interrupted", publish=False)
        if failure.retryable and lease.tries < self.settings.max_tries:
            await self.queue.hand_back(lease, reason=f"error, will retry: {failure.message}",
                                       fields=JobPatch(last_error=failure.message))
            return
        message = failure.message
        if failure.retryable:
            failure.code, message = "job_keeps_failing", f"the job failed {lease.tries} times; last error: {message}"
        outcome = await self.queue.change(
            lease, allowed_from=["queued", "running"], to="failed",
            fields=JobPatch(error_code=failure.code, error_message=message),
            event={"error": {"code": failure.code, "message": message}}, ack=True, release=True)
        log.warning("job %s failed: %s: %s", lease.job_id, failure.code, message)
        if outcome != "fenced":
            await self._delete_blobs(lease.job_id)

    async def delete_retired_blobs(self) -> None:
        """Delete the blobs of jobs whose retention ended (the store's sweep queues them)."""
        for job_id in await self.queue.blobs_to_delete():
            await self._delete_blobs(job_id)

    async def _delete_blobs(self, job_id: str, keep: tuple[str, ...] = ()) -> None:
        try:
            await asyncio.to_thread(self.checkpoints.delete, job_id, keep)
        except Exception:  # noqa: BLE001 - a leftover blob costs storage, not correctness
            log.exception("job %s: deleting its blobs failed", job_id)


def baseline_record(fields: dict[str, Any], *, changed: bool) -> StepRecord:
    """The baseline's fields for the job record, with a `baseline` event when its state changed."""
    return StepRecord(fields=JobPatch(**fields), events=[("baseline", {"at": now(), **fields})] if changed else [])


def check_restored(spec: JobSpec, states: checkpoint.States, *, checkpoint_step: int = 0) -> None:
    """A checkpoint must hold exactly the job's runs, each with the job's problem (and verifier) and settings as
    stored in Redis: what runs is always what was submitted, never what a checkpoint says. Its method run must be
    at least at `checkpoint_step`, the step the job's record says its current checkpoint holds: an older one of the
    same blob (a replayed earlier step, validly signed) would silently roll the job back."""
    wanted = comparison_settings(spec.settings, 0)  # a baseline's samples live in the shared record
    states = {key: state for key, state in states.items() if key != BASELINE}  # checkpoints from before held one
    if set(states) != set(wanted):
        raise JobFailure("checkpoint_mismatch", f"the job's checkpoint holds the runs {sorted(states)}, the job has "
                                                f"{sorted(wanted)}; it was not resumed")
    problem = spec.problem.model_dump(mode="json")
    for key, settings in wanted.items():
        for part, expected in (("problem", problem), ("settings", settings.model_dump(mode="json"))):
            if states[key].get(part) != expected:
                raise JobFailure("checkpoint_mismatch", f"the {part} in the job's checkpoint ({key} run) differs "
                                                        "from the job's; it was not resumed")
    step = states[METHOD].get("step", 0)
    if step < checkpoint_step:
        raise checkpoint.CheckpointRejected(f"the job's checkpoint holds step {step}, older than step "
                                            f"{checkpoint_step} that its record names: an older checkpoint was put "
                                            "in its place; it was not resumed")
