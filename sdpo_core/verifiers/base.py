"""The verifier contract: every verifier turns (problem, completion) into a Verdict.

The feedback text matters as much as the reward: before the first success there is no successful sibling to
imitate, so the feedback on a failed attempt is the self-teacher's only signal. It must say what was wrong
without revealing the answer.

A verdict's status says whether the attempt was judged at all: `ok` (verified) and `rejected` are judgements;
`error` (the verifier broke: a crash, a bad reply), `timeout` (it ran out of time) and `not_run` (it never ran: the
step's verification budget ended first, or no verifier process could start) are not, so their feedback describes
the verifier, not the attempt, and is never shown to the self-teacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

FEEDBACK_MAX_CHARS = 2000
VerdictStatus = Literal["ok", "rejected", "error", "timeout", "not_run"]
JUDGED: frozenset[str] = frozenset({"ok", "rejected"})  # the verifier looked at the attempt and said something
TEXT_CHECK_S = 10.0  # worst case of a plain text check (exact, numeric, regex, checklist): longer is a runaway regex


class Verdict(BaseModel):
    """What a verifier says about one attempt."""

    model_config = ConfigDict(frozen=True)

    reward: float = Field(ge=0.0, le=1.0, description="Score in [0, 1]; 1.0 means fully correct.")
    solved: bool = Field(description="True when the attempt counts as a verified solution.")
    feedback: str = Field(default="", description="What was wrong, never the answer; empty when solved.")
    answer: str | None = Field(default=None, description="The final answer extracted from the attempt, if any.")
    status: VerdictStatus = Field(default="rejected", description="ok (solved) | rejected | error | timeout | not_run; "
                                  "without one, ok when solved.")

    @model_validator(mode="before")
    @classmethod
    def _status_from_solved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "status" not in data:
            data = {**data, "status": "ok" if data.get("solved") else "rejected"}
        return data

    @model_validator(mode="after")
    def _solved_means_ok(self) -> Verdict:
        if self.solved != (self.status == "ok"):
            raise ValueError(f"a verdict with status {self.status!r} cannot have solved={self.solved}")
        return self

    @property
    def judged(self) -> bool:
        return self.status in JUDGED


def verifier_failed(feedback: str, status: VerdictStatus = "error") -> Verdict:
    """The verdict when the verifier, not the attempt, failed: no reward, feedback for the logs and the user."""
    return Verdict(reward=0.0, solved=False, feedback=clip_feedback(feedback), status=status)


@runtime_checkable
class Verifier(Protocol):
    """Anything that can score a completion for a problem."""

    def verify(self, problem: Problem, completion: str) -> Verdict: ...


class VerifierSpecContract(Protocol):
    """What every spec of `VerifierSpec` declares beside its fields; no base class supplies a default, so a spec
    that leaves one out fails tests/test_verifiers_other.py rather than getting someone else's time limit."""

    type: str
    # Whether verifying executes untrusted code: then only through a sandbox, and `verifier(sandbox)` builds it;
    # otherwise the spec is itself the Verifier.
    runs_code: ClassVar[bool]

    def worst_case_seconds(self) -> float:
        """How long one verification may legitimately take, from the spec's own limits (the verifier pool's hard
        limit is this plus a margin for starting a process)."""
        ...


@runtime_checkable
class StatesRequirements(Protocol):
    """A verifier spec that can tell every requirement at once (checklist): for measuring whether a problem whose
    feedback arrives one piece at a time can be solved at all once everything is known (`sdpo bench signal`)."""

    def all_requirements(self) -> str: ...


class VerifierError(ValueError):
    """A verifier spec that cannot be built (bad pattern, unknown type, missing dependency)."""


def clip_feedback(text: str, limit: int = FEEDBACK_MAX_CHARS) -> str:
    """Cap feedback so that one chatty verifier cannot blow up the teacher's context."""
    if len(text) <= limit:
        return text
    return text[: limit - 15].rstrip() + "\n...[truncated]"
