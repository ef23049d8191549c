"""What a job is to a worker and to the store: its spec, its record, and the failures a user can act on.

Pure pydantic (no torch, no redis). The statuses are defined once, in sdpo_core.statuses.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from sdpo_core.failures import RunFailure
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings
from sdpo_core.statuses import FINISHED, JobStatus


class JobSpec(BaseModel):
    """Everything a worker needs to run one job (stored as the job's `spec` JSON)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    problem: Problem
    settings: RunSettings
    baseline_attempts: int = Field(default=0, ge=0, description="best-of-k samples to compare against; 0 = none.")
    model: str | None = Field(default=None, description="The base model the job needs; None = whatever is served.")


class JobProgress(BaseModel):
    """The progress fields a worker writes into the job record after each step."""

    attempts: int = 0
    steps: int = 0
    best_reward: float = 0.0
    first_success_attempt: int | None = None
    baseline_samples: int | None = None
    baseline_successes: int = 0
    baseline_state: str = Field(default="", description="workers.baseline's states; '' in records from before.")
    baseline_reused: int = Field(default=0, description="Baseline samples drawn by the tenant's earlier jobs.")


class JobHead(JobProgress):
    """The job's hash in Redis, typed, without the spec and the solution (each can be megabytes): what listings
    read. One field per hash field (empty strings read as None)."""

    model_config = ConfigDict(extra="ignore")
    id: str
    tenant: str
    status: JobStatus
    created_at: float
    metadata: str = "{}"
    summary: str = Field(default="", description="What a listing shows of the spec (JSON), stored at submission.")
    batch_id: str = ""
    tries: int = Field(default=0, description="Starts by a worker, crashes and errors included.")
    lease_generation: int = Field(default=0, description="Leases taken so far; the fencing token's number.")
    worker: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested_at: float | None = None
    error_code: str = ""
    error_message: str = ""
    last_error: str = ""
    attempts_stored: int | None = Field(default=None, description="Attempts in the attempts list (a prefix).")
    stored_bytes: int = Field(default=0, description="Bytes of every value stored for the job (record fields, "
                              "attempts, events): what it takes of its tenant's quota.")
    quota_bytes: int = Field(default=0, description="The tenant's quota when the job was submitted; 0 = none.")
    quota_reached_at: float | None = Field(default=None, description="When the quota first refused an attempt or an "
                                           "event of this job.")
    events_not_stored: int = Field(default=0, description="Progress events the quota refused.")
    checkpoint: str = Field(default="", description="The name of the job's current checkpoint blob.")
    checkpoint_step: int = Field(default=0, description="The method's step that checkpoint holds (older: refused).")
    adapter: bool = Field(default=False, description="The finished adapter is in the checkpoint store.")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any, info) -> Any:
        if value == "" and info.field_name in _OPTIONAL:
            return None
        if info.field_name == "adapter" and isinstance(value, str):
            return value == "1"
        return value

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobRecord(JobHead):
    """The whole job hash: the head, the spec and the first solution."""

    spec: str = Field(description="The JobSpec as JSON.")
    solution: str = Field(default="", description="The first verified attempt as JSON, kept beyond the attempt cap.")

    def job_spec(self) -> JobSpec:
        return JobSpec.model_validate_json(self.spec)


_OPTIONAL = {"first_success_attempt", "baseline_samples", "started_at", "finished_at", "cancel_requested_at",
             "attempts_stored", "quota_reached_at"}


class _Patch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def merge(self, **fields: Any) -> JobPatch:
        """This patch and `fields`, validated (model_copy would not check the names)."""
        return JobPatch(**{**self.model_dump(exclude_unset=True), **fields})

    def encoded(self) -> dict[str, str]:
        """The fields given, as the job hash stores them: None as '', a flag as '1' or '0' (JobHead reads both)."""
        return {name: "" if value is None else ("1" if value else "0") if isinstance(value, bool) else str(value)
                for name, value in self.model_dump(exclude_unset=True).items()}


# The record fields a worker or the API writes with a status change or a step (the rest, counters and lease numbers,
# are the Lua scripts'): their types are JobRecord's, and a misspelled name is an error instead of a hash field no
# reader sees (JobHead ignores extras).
JOB_WRITABLE = (*JobProgress.model_fields, "worker", "started_at", "finished_at", "error_code", "error_message",
                "last_error", "checkpoint", "checkpoint_step", "adapter", "solution")
JobPatch = create_model("JobPatch", __base__=_Patch, __doc__="Some writable fields of a job record (JOB_WRITABLE).",
                        **{name: (JobRecord.model_fields[name].annotation | None, None) for name in JOB_WRITABLE})


class BatchRecord(BaseModel):
    """The batch's hash in Redis, typed: written once at submission (and its outcome once every job has ended)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    tenant: str
    created_at: float
    method: str
    budget: int
    metadata: str = "{}"
    size: int
    cancel_requested_at: float | None = None
    outcome: str = Field(default="", description="The finished batch's counts and curve (service.views."
                         "BatchOutcome) as JSON; '' until every job has ended.")

    def encoded(self) -> dict[str, str]:
        """The fields given, as the hash stores them."""
        return {name: str(value) for name, value in self.model_dump(exclude_unset=True, exclude_none=True).items()}


class JobFailure(RunFailure):
    """A job that cannot go on, with a code and a message meant for the job's owner; `retryable` when another try
    (from the checkpoint) may get past it."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(code, message)
        self.retryable = retryable


def step_too_large(attempts_per_step: int, max_new_tokens: int, limit: int) -> str:
    """Why a step is refused: its attempts times their length is over `limit` tokens."""
    return (f"a step of {attempts_per_step} attempts x {max_new_tokens} new tokens = "
            f"{attempts_per_step * max_new_tokens} tokens is over this service's limit of {limit}; lower "
            "settings.attempts_per_step or settings.max_new_tokens")


def new_id(kind: str) -> str:
    """A time-sortable id: the kind, 12 hex digits of milliseconds, 10 random hex digits."""
    return f"{kind}_{int(time.time() * 1000):012x}{os.urandom(5).hex()}"


def now() -> float:
    return round(time.time(), 3)
