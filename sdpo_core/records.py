"""What a run produces and reports: attempts, progress events, the final result.

One event type serves every consumer: the CLI draws its progress bar from it, the workers publish it to the job's
Redis stream, the API streams it over SSE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from sdpo_core.verifiers.base import JUDGED, VerdictStatus

RunStatus = Literal["running", "succeeded", "exhausted", "cancelled"]


class Attempt(BaseModel):
    """One verified attempt."""

    index: int = Field(description="1-based position in generation order over the whole run.")
    step: int = Field(description="1-based step that sampled it.")
    text: str
    token_count: int
    truncated: bool = Field(description="The attempt hit max_new_tokens before the end-of-sequence token.")
    reward: float
    solved: bool
    feedback: str
    answer: str | None = None
    verdict: VerdictStatus = Field(default="rejected", description="ok | rejected | error | timeout | not_run: "
                                   "the last three mean the verifier failed or never ran, and its feedback is not "
                                   "about the attempt.")

    @model_validator(mode="before")
    @classmethod
    def _verdict_from_solved(cls, data: Any) -> Any:  # attempts stored before verdicts had a status
        if isinstance(data, dict) and "verdict" not in data:
            data = {**data, "verdict": "ok" if data.get("solved") else "rejected"}
        return data

    @property
    def judged(self) -> bool:
        """The verifier judged this attempt (its feedback is about the attempt and may teach)."""
        return self.verdict in JUDGED


class StepMetrics(BaseModel):
    """Numbers from one step; the update fields are None for the baselines."""

    loss: float | None = None
    distilled_samples: int = 0
    distilled_tokens: int = 0
    grad_norm: float | None = None
    seconds: dict[str, float] = Field(default_factory=dict, description="Wall time per phase of the step; "
                                      "generation shared with other runs is this run's share by generated tokens.")
    tokens_generated: int = Field(default=0, description="Tokens sampled in this step.")
    tokens_scored: int = Field(default=0, description="Tokens the update (and any signal) ran forward passes over.")
    verdicts: dict[str, int] = Field(default_factory=dict, description="The step's attempts by verdict status: "
                                     "verifier errors and timeouts apart from rejections.")


class ProgressEvent(BaseModel):
    """A run's progress after a step, or its end."""

    type: Literal["step", "decision", "finished"]
    method: str
    step: int
    attempts: int = Field(description="Attempts made so far.")
    max_attempts: int
    best_reward: float
    solved: bool
    first_success_attempt: int | None = None
    status: RunStatus = "running"
    metrics: StepMetrics | None = None
    reason: str | None = Field(default=None, description="A decision event: what the method does next and why.")


EventSink = Callable[[ProgressEvent], None]


def ignore_events(event: ProgressEvent) -> None:
    """The default sink."""


class RunResult(BaseModel):
    """The outcome of one run."""

    method: str
    status: RunStatus
    attempts: list[Attempt]
    steps: int
    first_success_attempt: int | None = Field(description="Index of the first verified solution, if found.")
    solution: str | None = None
    seconds: float = Field(default=0.0, description="Compute time the run used: its steps' generation share, "
                           "verification and updates.")
    tokens: int = Field(default=0, description="Tokens the run processed: generated plus scored by its updates.")

    @property
    def solved(self) -> bool:
        return self.first_success_attempt is not None
