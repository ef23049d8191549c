"""From stored records to API bodies: jobs, batches and their discovery curves."""

from __future__ import annotations

import json

from sdpo_core.discovery import Comparison, average_curve, compare_to_best_of_k, curve_grid, pass_at_k
from service.schemas import QUESTION_PREVIEW_CHARS, BaselineProgress, Batch, BatchCurve, Job, JobError, JobSummary
from workers.jobs import TERMINAL, JobSpec

FINISHED_WITH_CURVE = ("succeeded", "exhausted")


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def job_view(record: dict[str, str]) -> Job:
    spec = JobSpec.model_validate_json(record["spec"])
    samples = _int(record.get("baseline_samples"))
    error = JobError(code=record["error_code"], message=record.get("error_message", "")) \
        if record.get("error_code") else None
    first = _int(record.get("first_success_attempt"))
    return Job(
        id=record["id"], status=record["status"], created_at=float(record["created_at"]),
        started_at=_float(record.get("started_at")), finished_at=_float(record.get("finished_at")),
        cancel_requested_at=_float(record.get("cancel_requested_at")), batch_id=record.get("batch_id") or None,
        method=spec.settings.method, budget=spec.settings.max_attempts, attempts=int(record.get("attempts") or 0),
        steps=int(record.get("steps") or 0), best_reward=float(record.get("best_reward") or 0.0),
        solved=first is not None, first_success_attempt=first,
        baseline=BaselineProgress(samples=samples, successes=int(record.get("baseline_successes") or 0))
        if samples is not None else None,
        error=error, problem=spec.problem, settings=spec.settings, metadata=json.loads(record.get("metadata") or "{}"),
    )


# The job record's fields a listing reads: everything but the spec (the problem, possibly megabytes).
SUMMARY_FIELDS = ("id", "tenant", "status", "created_at", "started_at", "finished_at", "cancel_requested_at",
                  "batch_id", "attempts", "steps", "best_reward", "first_success_attempt", "baseline_samples",
                  "baseline_successes", "error_code", "error_message", "metadata", "summary")


def summary_json(spec: JobSpec) -> str:
    """What a listing shows of a job's request, stored beside the spec at submission (the `summary` field)."""
    return json.dumps({"method": spec.settings.method, "budget": spec.settings.max_attempts,
                       "problem_id": spec.problem.id, "question": spec.problem.question[:QUESTION_PREVIEW_CHARS],
                       "verifier": spec.problem.verifier.type})


def job_summary_view(record: dict[str, str]) -> JobSummary:
    """A listing's view of a record (read with SUMMARY_FIELDS; older records without a summary bring their spec)."""
    summary = json.loads(record["summary"] if record.get("summary") else
                         summary_json(JobSpec.model_validate_json(record["spec"])))
    samples = _int(record.get("baseline_samples"))
    first = _int(record.get("first_success_attempt"))
    return JobSummary(
        id=record["id"], status=record["status"], created_at=float(record["created_at"]),
        started_at=_float(record.get("started_at")), finished_at=_float(record.get("finished_at")),
        cancel_requested_at=_float(record.get("cancel_requested_at")), batch_id=record.get("batch_id") or None,
        attempts=int(record.get("attempts") or 0), steps=int(record.get("steps") or 0),
        best_reward=float(record.get("best_reward") or 0.0), solved=first is not None, first_success_attempt=first,
        baseline=BaselineProgress(samples=samples, successes=int(record.get("baseline_successes") or 0))
        if samples is not None else None,
        error=JobError(code=record["error_code"], message=record.get("error_message", ""))
        if record.get("error_code") else None,
        metadata=json.loads(record.get("metadata") or "{}"), **summary,
    )


def baseline_outcomes(job: Job | JobSummary) -> list[bool]:
    """The best-of-k samples' outcomes (only their count and successes matter to pass@k)."""
    if job.baseline is None:
        return []
    return [True] * job.baseline.successes + [False] * (job.baseline.samples - job.baseline.successes)


def job_comparison(job: Job) -> Comparison:
    return compare_to_best_of_k(job.method, [job.first_success_attempt], baseline_outcomes(job), job.budget)


def batch_curve(jobs: list[JobSummary], budget: int, method: str) -> BatchCurve | None:
    """The average discovery curve of the finished jobs against their average best-of-k curve."""
    finished = [job for job in jobs if job.status in FINISHED_WITH_CURVE]
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


def batch_view(record: dict[str, str], job_ids: list[str], jobs: list[JobSummary]) -> Batch:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    all_done = all(job.status in TERMINAL for job in jobs)
    status = "in_progress" if not all_done else ("cancelled" if record.get("cancel_requested_at") else "completed")
    return Batch(
        id=record["id"], status=status, created_at=float(record["created_at"]),
        cancel_requested_at=_float(record.get("cancel_requested_at")), method=record["method"],
        budget=int(record["budget"]), job_ids=job_ids, counts=counts,
        curve=batch_curve(jobs, int(record["budget"]), record["method"]),
        metadata=json.loads(record.get("metadata") or "{}"),
    )
