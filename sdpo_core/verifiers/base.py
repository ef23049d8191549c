"""The verifier contract: every verifier turns (problem, completion) into a Verdict.

The feedback text matters as much as the reward: before the first success there is no successful sibling to
imitate, so the feedback on a failed attempt is the self-teacher's only signal. It must say what was wrong
without revealing the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

FEEDBACK_MAX_CHARS = 2000


class Verdict(BaseModel):
    """What a verifier says about one attempt."""

    model_config = ConfigDict(frozen=True)

    reward: float = Field(ge=0.0, le=1.0, description="Score in [0, 1]; 1.0 means fully correct.")
    solved: bool = Field(description="True when the attempt counts as a verified solution.")
    feedback: str = Field(default="", description="What was wrong, never the answer; empty when solved.")
    answer: str | None = Field(default=None, description="The final answer extracted from the attempt, if any.")


@runtime_checkable
class Verifier(Protocol):
    """Anything that can score a completion for a problem."""

    def verify(self, problem: Problem, completion: str) -> Verdict: ...


class VerifierError(ValueError):
    """A verifier spec that cannot be built (bad pattern, unknown type, missing dependency)."""


def clip_feedback(text: str, limit: int = FEEDBACK_MAX_CHARS) -> str:
    """Cap feedback so that one chatty verifier cannot blow up the teacher's context."""
    if len(text) <= limit:
        return text
    return text[: limit - 15].rstrip() + "\n...[truncated]"
