"""The HTTP API's request and response bodies, shared by the server, the client SDK and the CLI.

Built on the core models (Problem, RunSettings, Attempt, DiscoveryCurve, Comparison) rather than repeating their
fields. Imports neither fastapi, redis, torch nor `workers`: the light client installs only pydantic and httpx.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdpo_core.curves import Comparison, DiscoveryCurve
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt
from sdpo_core.settings import Method, RunSettings
from sdpo_core.statuses import FINISHED, BaselineState, JobStatus

Metadata = dict[str, str]
BatchStatus = Literal["in_progress", "completed", "cancelled"]
QUESTION_PREVIEW_CHARS = 200


def _check_metadata(value: Metadata) -> Metadata:
    if len(value) > 16:
        raise ValueError("at most 16 metadata keys")
    for key, item in value.items():
        if not 1 <= len(key) <= 64 or len(item) > 512:
            raise ValueError(f"metadata '{key[:64]}': keys are 1-64 characters, values at most 512")
    return value


# ---- requests --------------------------------------------------------------------------------------------------
class BaselineRequest(BaseModel):
    """A baseline to compare the method against (today: best-of-k sampling of the frozen model)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    method: Literal["best-of-k"] = "best-of-k"
    attempts: int | None = Field(default=None, ge=1, le=1_000_000,
                                 description="Samples; default: twice the job's budget.")


class JobOptions(BaseModel):
    """How to attack a problem: shared by a single job and every job of a batch."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    method: Method | None = Field(default=None, description="The discovery method (default auto); shorthand for "
                                  "settings.method.")
    budget: int | None = Field(default=None, ge=1, le=1_000_000, description="Attempts to spend (default 256).")
    settings: RunSettings = Field(default_factory=RunSettings, description="Method settings (sampling, SDPO).")
    baselines: list[BaselineRequest] = Field(
        default_factory=lambda: [BaselineRequest()], max_length=1,
        description="Baselines for the discovery curve; [] for none.",
    )
    metadata: Metadata = Field(default_factory=dict, description="Your labels: up to 16 string pairs.")
    model: str | None = Field(default=None, max_length=200, description="Base model; default: the one served.")

    _metadata = field_validator("metadata")(_check_metadata)

    @model_validator(mode="before")
    @classmethod
    def _merge_shorthands(cls, data: Any) -> Any:
        """`method` and `budget` are shorthands for settings.method and settings.max_attempts, merged before the
        settings are validated (a budget of 2048 with 1024 attempts a step is a valid pair)."""
        if not isinstance(data, dict):
            return data
        settings = data.get("settings") or {}
        if isinstance(settings, RunSettings):
            settings = settings.model_dump(include=settings.model_fields_set)
        if not isinstance(settings, dict):
            return data  # the settings' own validation names the problem
        for short, field in (("method", "method"), ("budget", "max_attempts")):
            value = data.get(short)
            if value is None:
                continue
            if field in settings and settings[field] != value:
                raise ValueError(f"{short} ({value!r}) disagrees with settings.{field} ({settings[field]!r}); give "
                                 "one of them")
            settings = {**settings, field: value}
        return {**data, "settings": settings}

    @model_validator(mode="after")
    def _shorthands_from_settings(self) -> JobOptions:
        self.method, self.budget = self.settings.method, self.settings.max_attempts
        return self


class JobCreate(JobOptions):
    """POST /v1/jobs: one problem and how to attack it."""

    problem: Problem


class BatchCreate(JobOptions):
    """POST /v1/batches: many problems under the same options."""

    problems: list[Problem] = Field(min_length=1, max_length=1000)
    concurrency: int | None = Field(default=None, ge=1, le=1000,
                                    description="Jobs of this batch queued or running at once; default: all.")


# ---- responses -------------------------------------------------------------------------------------------------
class JobError(BaseModel):
    """Why a job failed, and what to do about it."""

    code: str = Field(description="e.g. model_not_served, verifier_unavailable, job_keeps_failing.")
    message: str


class BaselineProgress(BaseModel):
    """The job's best-of-k comparison: a part of the job with its own state; the job's status never waits for it."""

    samples: int = Field(description="Best-of-k samples behind the estimate (drawn by this job or reused).")
    successes: int
    state: BaselineState | None = Field(default=None, description="pending (another job draws the same samples), "
                                        "running, done (its estimate settled or its cap reached), skipped, "
                                        "cancelled, interrupted (its worker stopped after the job's outcome).")
    reused_samples: int = Field(default=0, description="Of `samples`, those your earlier jobs on the same problem, "
                                "verifier, model and sampling settings drew.")


class Job(BaseModel):
    """A job: its status with timestamps, its progress and its request."""

    object: Literal["job"] = "job"
    id: str
    status: JobStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested_at: float | None = None
    batch_id: str | None = None
    method: Method
    budget: int
    attempts: int = 0
    attempts_stored: int | None = Field(default=None, description="Attempts kept (GET /attempts); fewer than "
                                        "`attempts` once a job's attempts reach the service's storage cap or the "
                                        "tenant's storage quota.")
    quota_reached_at: float | None = Field(default=None, description="When the tenant's storage quota first kept an "
                                           "attempt or a progress event of this job from being stored (the job "
                                           "goes on; its counts, status and solution are kept).")
    events_not_stored: int = Field(default=0, description="Progress events the storage quota kept out of the "
                                   "job's event stream.")
    steps: int = 0
    best_reward: float = 0.0
    solved: bool = False
    first_success_attempt: int | None = None
    baseline: BaselineProgress | None = None
    error: JobError | None = None
    problem: Problem
    settings: RunSettings
    metadata: Metadata = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in FINISHED


class JobSummary(BaseModel):
    """A job in a listing: its status and progress, and which problem, without the problem itself (a problem can
    be megabytes of tests; GET /v1/jobs/{id} has it)."""

    object: Literal["job.summary"] = "job.summary"
    id: str
    status: JobStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested_at: float | None = None
    batch_id: str | None = None
    method: Method
    budget: int
    attempts: int = 0
    steps: int = 0
    best_reward: float = 0.0
    solved: bool = False
    first_success_attempt: int | None = None
    baseline: BaselineProgress | None = None
    error: JobError | None = None
    problem_id: str | None = Field(default=None, description="The problem's own label, if it has one.")
    question: str = Field(description=f"The start of the question (at most {QUESTION_PREVIEW_CHARS} characters).")
    verifier: str = Field(description="The verifier's type.")
    metadata: Metadata = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in FINISHED


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobSummary]
    has_more: bool
    last_id: str | None = Field(default=None, description="Pass as `after` for the next page.")


class JobEvent(BaseModel):
    """One entry of a job's event stream; `id` is the SSE id (Last-Event-ID) and the `after` cursor."""

    object: Literal["job.event"] = "job.event"
    id: str
    type: str = Field(description="status | progress | resumed | cancel_requested | storage_quota_reached")
    data: dict[str, Any]


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool
    last_id: str | None = None


class AttemptList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Attempt]
    has_more: bool
    last_id: int | None = Field(default=None, description="Attempt index; pass as `after` for the next page.")


class Solution(BaseModel):
    job_id: str
    status: JobStatus
    solved: bool
    attempt: Attempt | None = Field(default=None, description="The first verified solution.")


class JobCurve(BaseModel):
    """discovery@k of the job's method against pass@k of best-of-k, with confidence bands."""

    job_id: str
    status: JobStatus
    baseline: BaselineProgress | None = Field(default=None, description="Where the comparison stands: while its "
                                              "state is pending or running, the curve shows the samples so far.")
    comparison: Comparison


class BatchCurve(BaseModel):
    """The batch's average discovery curve against the average best-of-k curve (bands: bootstrap over problems)."""

    budget: int
    problems: int = Field(description="Finished problems behind the curves.")
    curves: list[DiscoveryCurve]
    note: str


class Batch(BaseModel):
    object: Literal["batch"] = "batch"
    id: str
    status: BatchStatus
    created_at: float
    cancel_requested_at: float | None = None
    method: Method
    budget: int
    job_ids: list[str]
    counts: dict[str, int] = Field(description="Jobs per status.")
    curve: BatchCurve | None = Field(default=None, description="Over the batch's succeeded and exhausted jobs, once "
                                     "every job has ended (computed once then, and kept with the batch).")
    metadata: Metadata = Field(default_factory=dict)


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    has_more: bool
    last_id: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    redis: bool
    workers: int = Field(description="Workers seen within the staleness window (information: 0 is still ready).")
    detail: str = ""

