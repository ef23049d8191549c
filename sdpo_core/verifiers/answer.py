"""Answer verifiers: exact match, numeric with a tolerance, regex. They run in-process (no code is executed).

Feedback says what was wrong (no answer found, the answer given is incorrect, the form is wrong) and never the
expected answer or pattern.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdpo_core.verifiers.base import TEXT_CHECK_S, Verdict
from sdpo_core.verifiers.extract import ExtractMode, extract_answer, parse_number

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

# An attempt is scanned at most this far: model text is untrusted input to a user-supplied regex.
MAX_SCAN_CHARS = 20_000

NO_ANSWER_FEEDBACK = (
    "No final answer was found in your response. Finish with the final answer written as "
    "<answer>...</answer> or \\boxed{...}."
)


def _shown(answer: str, limit: int = 120) -> str:
    return answer if len(answer) <= limit else answer[:limit] + "..."


def _normalize(text: str, case_sensitive: bool) -> str:
    text = " ".join(text.strip().split()).rstrip(".").strip()
    return text if case_sensitive else text.lower()


class ExactSpec(BaseModel):
    """The extracted answer equals `answer` after normalisation (whitespace, case, trailing period, numbers)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["exact"] = "exact"
    runs_code: ClassVar[bool] = False
    answer: str = Field(min_length=1, description="The expected final answer.")
    extract: ExtractMode = Field(default="auto", description="How the final answer is taken from the attempt.")
    case_sensitive: bool = False

    def worst_case_seconds(self) -> float:
        return TEXT_CHECK_S

    def verify(self, problem: Problem, completion: str) -> Verdict:
        numeric_gold = parse_number(self.answer) is not None
        given = extract_answer(completion[-MAX_SCAN_CHARS:], self.extract, numeric=numeric_gold)
        if given is None:
            return Verdict(reward=0.0, solved=False, feedback=NO_ANSWER_FEEDBACK)
        if _normalize(given, self.case_sensitive) == _normalize(self.answer, self.case_sensitive):
            return Verdict(reward=1.0, solved=True, answer=given)
        if numeric_gold:
            gold, value = parse_number(self.answer), parse_number(given)
            if value is not None and gold is not None and math.isclose(value, gold, rel_tol=1e-9, abs_tol=1e-12):
                return Verdict(reward=1.0, solved=True, answer=given)
        return Verdict(
            reward=0.0, solved=False, answer=given, feedback=f"Your final answer '{_shown(given)}' is incorrect."
        )


class NumericSpec(BaseModel):
    """The extracted answer is a number within `abs_tol` or `rel_tol` of `answer`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["numeric"] = "numeric"
    runs_code: ClassVar[bool] = False
    answer: float = Field(description="The expected value.")
    rel_tol: float = Field(default=1e-6, ge=0.0)
    abs_tol: float = Field(default=1e-9, ge=0.0)
    extract: ExtractMode = "auto"
    reveal_direction: bool = Field(
        default=False, description="Say whether a wrong answer is too high or too low (a hint, not the answer)."
    )

    def worst_case_seconds(self) -> float:
        return TEXT_CHECK_S

    def verify(self, problem: Problem, completion: str) -> Verdict:
        given = extract_answer(completion[-MAX_SCAN_CHARS:], self.extract, numeric=True)
        if given is None:
            return Verdict(reward=0.0, solved=False, feedback=NO_ANSWER_FEEDBACK)
        value = parse_number(given)
        if value is None:
            return Verdict(
                reward=0.0, solved=False, answer=given,
                feedback=f"Your final answer '{_shown(given)}' is not a number. The answer must be a single number.",
            )
        if math.isclose(value, self.answer, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
            return Verdict(reward=1.0, solved=True, answer=given)
        feedback = f"Your final answer {_shown(given)} is incorrect."
        if self.reveal_direction:
            feedback += " It is too high." if value > self.answer else " It is too low."
        return Verdict(reward=0.0, solved=False, answer=given, feedback=feedback)


class RegexSpec(BaseModel):
    """The extracted answer (or the whole attempt) matches `pattern`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["regex"] = "regex"
    runs_code: ClassVar[bool] = False
    pattern: str = Field(min_length=1, max_length=2000, description="A Python regular expression.")
    target: Literal["answer", "completion"] = Field(
        default="answer", description="Match against the extracted final answer or the whole attempt."
    )
    full_match: bool = Field(default=True, description="The whole target must match, not just a part of it.")
    extract: ExtractMode = "auto"
    case_sensitive: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        """Compiled here, so that whatever `re` refuses (a syntax error, a repeat count over 2**32-1, nesting too deep
        for its parser) is a 422 naming the field, never an error later."""
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
        return pattern

    def worst_case_seconds(self) -> float:
        return TEXT_CHECK_S

    def verify(self, problem: Problem, completion: str) -> Verdict:
        text = completion[-MAX_SCAN_CHARS:]
        given = text if self.target == "completion" else extract_answer(text, self.extract)
        if given is None:
            return Verdict(reward=0.0, solved=False, feedback=NO_ANSWER_FEEDBACK)
        compiled = re.compile(self.pattern, 0 if self.case_sensitive else re.IGNORECASE)
        matched = compiled.fullmatch(given.strip()) if self.full_match else compiled.search(given)
        if matched:
            return Verdict(reward=1.0, solved=True, answer=given if self.target == "answer" else None)
        what = f"Your final answer '{_shown(given)}'" if self.target == "answer" else "Your response"
        return Verdict(
            reward=0.0, solved=False, answer=given if self.target == "answer" else None,
            feedback=f"{what} does not have the required form.",
        )
