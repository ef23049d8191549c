"""What a job is to a worker: its spec, its statuses, and the failures a user can act on.

Pure pydantic (no torch, no redis), so the API schemas can build on it.
"""

from __future__ import annotations

import os
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings

JobStatus = Literal["queued", "running", "succeeded", "exhausted", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "exhausted", "failed", "cancelled"})
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "exhausted", "failed", "cancelled")


class JobSpec(BaseModel):
    """Everything a worker needs to run one job (stored as the job's `spec` JSON)."""

    model_config = ConfigDict(extra="forbid")
    problem: Problem
    settings: RunSettings
    baseline_attempts: int = Field(default=0, ge=0, description="best-of-k samples to compare against; 0 = none.")
    model: str | None = Field(default=None, description="The base model the job needs; None = whatever is served.")


class JobFailure(Exception):
    """A job that cannot go on, with a code and a message meant for the job's owner."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.retryable = code, message, retryable


def new_id(kind: str) -> str:
    """A time-sortable id: the kind, 12 hex digits of milliseconds, 10 random hex digits."""
    return f"{kind}_{int(time.time() * 1000):012x}{os.urandom(5).hex()}"


def now() -> float:
    return round(time.time(), 3)
