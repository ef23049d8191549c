"""From stored records to API bodies: jobs, batches and their discovery curves."""

from __future__ import annotations

import json

from pydantic import BaseModel

from sdpo_core.curves import Comparison, average_curve, compare_to_best_of_k, curve_grid, pass_at_k
from sdpo_core.runs import self_baseline
from sdpo_core.statuses import BASELINE_LIVE, WITH_CURVE
from service.schemas import BaselineProgress, Batch, BatchCurve, Job, JobError, JobSummary
from workers.jobs import BatchRecord, JobHead, JobRecord, JobSpec


def job_view(record: JobRecord) -> Job:
    spec = record.job_spec()
    r = record
    return Job(
        id=r.id, status=r.status, created_at=r.created_at, started_at=r.started_at, finished_at=r.finished_at,
        cancel_requested_at=r.cancel_requested_at, batch_id=r.batch_id or None, method=spec.settings.method,
        budget=spec.settings.max_attempts, attempts=r.attempts, attempts_stored=r.attempts_stored,
        quota_reached_at=r.quota_reached_at, events_not_stored=r.events_not_stored, steps=r.steps,
        best_reward=r.best_reward, solved=r.first_success_attempt is not None,
        first_success_attempt=r.first_success_attempt,
        baseline=baseline_progress(r, spec),
        error=JobError(code=r.error_code, message=r.error_message) if r.error_code else None,
        problem=spec.problem, settings=spec.settings, metadata=json.loads(r.metadata or "{}"),
    )


def job_summary_view(head: JobHead) -> JobSummary:
    """A listing's view of a job: the record's head, with the summary stored at submission (summary_json)."""
    h = head
    return JobSummary(
        id=h.id, status=h.status, created_at=h.created_at, started_at=h.started_at, finished_at=h.finished_at,
        cancel_requested_at=h.cancel_requested_at, batch_id=h.batch_id or None, attempts=h.attempts, steps=h.steps,
        best_reward=h.best_reward, solved=h.first_success_attempt is not None,
        first_success_attempt=h.first_success_attempt,
        baseline=baseline_progress(h),
        error=JobError(code=h.error_code, message=h.error_message) if h.error_code else None,
        metadata=json.loads(h.metadata or "{}"), **json.loads(h.summary),
    )


def baseline_progress(head: JobHead, spec: JobSpec | None = None) -> BaselineProgress | None:
    """The job's comparison; a job no worker has started yet shows the baseline it asked for as pending."""
    if head.baseline_samples is None and head.baseline_state in ("", "skipped"):
        not_started = head.baseline_state == "" and spec is not None
        if not_started and spec.baseline_attempts > 0 and not self_baseline(spec.settings):
            return BaselineProgress(samples=0, successes=0, state="pending")
        return None
    return BaselineProgress(samples=head.baseline_samples or 0, successes=head.baseline_successes,
                            state=head.baseline_state or None, reused_samples=head.baseline_reused)


def baseline_outcomes(job: Job | JobSummary) -> list[bool]:
    """The best-of-k samples' outcomes (only their count and successes matter to pass@k)."""
    if job.baseline is None:
        return []
    return [True] * job.baseline.successes + [False] * (job.baseline.samples - job.baseline.successes)


def job_comparison(job: Job) -> Comparison:
    """The job's curve against best-of-k; while the baseline still draws, against its samples so far (said)."""
    comparison = compare_to_best_of_k(job.method, [job.first_success_attempt], baseline_outcomes(job), job.budget,
                                      first_step=job.settings.attempts_per_step)
    if job.baseline is not None and job.baseline.state in BASELINE_LIVE:
        comparison.note = (f"the best-of-k baseline is still {job.baseline.state} ({job.baseline.samples} samples "
                           f"so far): this curve will change; " + comparison.note)
    return comparison


def batch_curve(jobs: list[JobSummary], budget: int, method: str) -> BatchCurve | None:
    """The average discovery curve of the finished jobs against their average best-of-k curve."""
    finished = [job for job in jobs if job.status in WITH_CURVE]
    if not finished:
        return None
    ks = curve_grid(budget)

    def method_at(first: int | None):
        return lambda k: 1.0 if first is not None and first <= k else 0.0

    curves = [average_curve([method_at(j.first_success_attempt) for j in finished], ks, label=method, n_boot=300)]
    with_baseline = [j for j in finished if j.baseline and j.baseline.samples]

    def baseline_at(n: int, c: int):
        return lambda k: pass_at_k(n, c, k)

    if with_baseline:
        curves.append(average_curve([baseline_at(j.baseline.samples, j.baseline.successes) for j in with_baseline],
                                    ks, label="best-of-k", n_boot=300))
        note = (f"{method} solved {sum(j.solved for j in finished)} of {len(finished)} problems within {budget} "
                f"attempts; best-of-k expects {curves[1].mean[-1] * len(with_baseline):.1f} of {len(with_baseline)}")
    else:
        note = f"{method} solved {sum(j.solved for j in finished)} of {len(finished)}; no best-of-k samples"
    return BatchCurve(budget=budget, problems=len(finished), curves=curves, note=note)


class BatchOutcome(BaseModel):
    """What a finished batch keeps with its record: its counts and its curve, computed once when it finished, so
    that reading it costs no bootstrap however many jobs it has (and survives its jobs' retention)."""

    counts: dict[str, int]
    curve: BatchCurve | None


def batch_counts(jobs: list[JobSummary]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return counts


def batch_outcome(record: BatchRecord, jobs: list[JobSummary]) -> BatchOutcome:
    """The finished batch's counts and curve (the bootstrap: run it once, in a thread)."""
    return BatchOutcome(counts=batch_counts(jobs), curve=batch_curve(jobs, record.budget, record.method))


def batch_view(record: BatchRecord, job_ids: list[str], counts: dict[str, int], curve: BatchCurve | None, *,
               finished: bool) -> Batch:
    status = "in_progress" if not finished else ("cancelled" if record.cancel_requested_at else "completed")
    return Batch(
        id=record.id, status=status, created_at=record.created_at, cancel_requested_at=record.cancel_requested_at,
        method=record.method, budget=record.budget, job_ids=job_ids, counts=counts, curve=curve,
        metadata=json.loads(record.metadata or "{}"),
    )
