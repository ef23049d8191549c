"""From a request to stored jobs: the job spec, the service's caps on it, and the answers when the store says no."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from sdpo_core.curves import default_baseline_samples
from sdpo_core.problem import Problem
from service.config import ApiSettings
from service.errors import ApiError
from service.schemas import QUESTION_PREVIEW_CHARS, JobOptions
from workers.jobs import JobSpec, new_id, step_too_large
from workers.store import NewJob


def job_spec(options: JobOptions, problem: Problem, settings: ApiSettings) -> JobSpec:
    """What a worker runs for `problem` under `options`; 422 when an option is over this service's caps."""
    run = options.settings
    if run.sdpo.lora_rank > settings.max_lora_rank:
        raise _over_cap("settings.sdpo.lora_rank", f"{run.sdpo.lora_rank} is over this service's limit of "
                                                   f"{settings.max_lora_rank}")
    if run.attempts_per_step * run.max_new_tokens > settings.max_step_tokens:
        raise _over_cap("settings.max_new_tokens", step_too_large(run.attempts_per_step, run.max_new_tokens,
                                                                  settings.max_step_tokens))
    if not options.baselines:
        samples = 0
    elif options.baselines[0].attempts is not None:
        samples = options.baselines[0].attempts
        if samples > settings.max_baseline_attempts:
            raise _over_cap("baselines.0.attempts", f"{samples} is over this service's limit of "
                                                    f"{settings.max_baseline_attempts} baseline samples")
    else:
        samples = min(default_baseline_samples(run.max_attempts), settings.max_baseline_attempts)
    return JobSpec(problem=problem, settings=run, baseline_attempts=samples, model=options.model)


def _over_cap(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}", code="invalid_request", errors=[{"field": field, "message": message}])


def new_job(spec: JobSpec, metadata_json: str) -> NewJob:
    """A job to store: a new id, the spec, the metadata, and the summary that listings show instead of the spec."""
    return NewJob(new_id("job"), spec.model_dump_json(), metadata_json, summary_json(spec))


def summary_json(spec: JobSpec) -> str:
    """What a listing shows of a job's request (service.views.job_summary_view): never the whole problem, which can
    be megabytes of tests."""
    return json.dumps({"method": spec.settings.method, "budget": spec.settings.max_attempts,
                       "problem_id": spec.problem.id, "question": spec.problem.question[:QUESTION_PREVIEW_CHARS],
                       "verifier": spec.problem.verifier.type})


def fingerprint(body: BaseModel) -> str:
    """What an Idempotency-Key remembers of the request body."""
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def submission_error(outcome: str, found: str, settings: ApiSettings, n: int) -> ApiError:
    """The answer to a submission the store refused: a reused key, the active-job cap or the storage quota."""
    if outcome == "mismatch":
        return ApiError(422, f"this Idempotency-Key was used for another request body (it created '{found}'); "
                             "use a new key for a new request", code="idempotency_key_reused")
    if outcome == "quota":
        return ApiError(429, f"the tenant's kept jobs hold {found} bytes; the quota is {settings.max_tenant_bytes}. "
                             f"Finished jobs are deleted {settings.retention_s} s after they end",
                        code="storage_quota_exceeded", headers={"Retry-After": "3600", "x-should-retry": "false"})
    return ApiError(429, f"the tenant has {found} queued or running jobs; the cap is {settings.max_active_jobs} and "
                         f"this request adds {n}", code="too_many_active_jobs", headers={"Retry-After": "30"})
