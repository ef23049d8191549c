"""`math`: the final answer in \\boxed{} is checked against the gold answer with math-verify.

math-verify compares mathematically (1/2 = 0.5 = \\frac{1}{2}, sets, intervals, equations) and is not symmetric:
the gold answer goes first. Its timeouts use SIGALRM, which works only in a main thread, so off the main thread
they are turned off; the attempt text is cut to its end first, which bounds the parsing work. math-verify is
imported on first use so that the spec imports without it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdpo_core.verifiers.base import Verdict, VerifierError
from sdpo_core.verifiers.extract import boxed

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

MAX_SCAN_CHARS = 20_000
MAX_ANSWER_CHARS = 1_000
NO_BOX_FEEDBACK = "No final answer was found in your response. Finish with the final answer written as \\boxed{...}."


class MathSpec(BaseModel):
    """A math answer checked for equivalence by math-verify (LaTeX or plain expressions)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["math"] = "math"
    answer: str = Field(min_length=1, max_length=MAX_ANSWER_CHARS, description="The gold answer, e.g. \\frac{1}{2}.")
    timeout_s: int = Field(default=5, ge=1, le=60, description="Per parse and per comparison (main thread only).")

    def verify(self, problem: Problem, completion: str) -> Verdict:
        given = boxed(completion[-MAX_SCAN_CHARS:])
        if not given:
            return Verdict(reward=0.0, solved=False, feedback=NO_BOX_FEEDBACK)
        if len(given) > MAX_ANSWER_CHARS:
            return Verdict(reward=0.0, solved=False, feedback="Your boxed answer is too long to be a final answer.")
        from math_verify import parse, verify  # heavy (sympy); only where math problems are verified

        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        gold = parse(f"\\boxed{{{self.answer}}}", parsing_timeout=timeout)  # type: ignore[arg-type]
        if not gold:
            raise VerifierError("math-verify cannot parse the gold answer")
        target = parse(f"\\boxed{{{given}}}", parsing_timeout=timeout)  # type: ignore[arg-type]
        shown = given if len(given) <= 120 else given[:120] + "..."
        if not target:
            return Verdict(
                reward=0.0, solved=False, answer=given,
                feedback=f"Your final answer \\boxed{{{shown}}} could not be read as a mathematical expression.",
            )
        if verify(gold, target, timeout_seconds=timeout):
            return Verdict(reward=1.0, solved=True, answer=given)
        return Verdict(reward=0.0, solved=False, answer=given, feedback=f"Your final answer {shown} is incorrect.")
