"""Checklist verifier: requirements on the text of an answer, each with the feedback that names what is missing.

Many real tasks are judged by a list of requirements rather than one gold answer: a product description must
name the brand, a summary must stay under 50 words, a dosage must be given in mg and fall in a safe range.
Feedback that names the unmet requirement is what a self-teacher (or a multi-turn prompt) can act on, so each
check carries a message, by default one that says exactly what the check wants:

    {"type": "checklist", "checks": [
        {"kind": "contains", "text": "lighthouse"},                  -> The answer must use the word 'lighthouse'.
        {"kind": "excludes", "text": "very"},                        -> The answer must not use the word 'very'.
        {"kind": "number", "min": 500, "max": 600, "unit": "cm"},    -> The number must be at most 600 (it is 714).
        {"kind": "words", "max": 20}                                 -> The answer has 31 words; at most 20 are allowed.
    ]}

The attempt is solved when every check passes; the reward is the share of checks passed, and the feedback lists
the failed checks' messages (a user who wants a binary reward sets `partial_credit: false`). Checks run on the
attempt's final answer (`extract`, default the whole text) in-process: plain string and number handling, no
user-supplied patterns, so nothing here can stall the worker.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdpo_core.verifiers.base import Verdict
from sdpo_core.verifiers.extract import ExtractMode, extract_answer

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

MAX_SCAN_CHARS = 20_000
_NUMBER_WITH_UNIT = re.compile(r"(?<![\w.])([-+]?\d+(?:,\d{3})*(?:\.\d+)?)\s*([^\W\d_][\w/%°]*|%|°\w*)?")


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'’-]+", text)


def _has_phrase(text: str, phrase: str, case_sensitive: bool) -> bool:
    """`phrase` as whole words (so 'owl' is not found in 'bowl'), whitespace-insensitive."""
    words = [re.escape(w) for w in phrase.split()]
    pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
    return re.search(pattern, text, 0 if case_sensitive else re.IGNORECASE) is not None


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    feedback: str | None = Field(default=None, max_length=500, description="Message when the check fails.")


class ContainsCheck(_Check):
    """The answer uses a word or phrase."""

    kind: Literal["contains"] = "contains"
    text: str = Field(min_length=1, max_length=200)
    case_sensitive: bool = False

    def failure(self, answer: str) -> str | None:
        if _has_phrase(answer, self.text, self.case_sensitive):
            return None
        return self.feedback or f"The answer must use the word '{self.text}'."


class ExcludesCheck(_Check):
    """The answer does not use a word or phrase."""

    kind: Literal["excludes"] = "excludes"
    text: str = Field(min_length=1, max_length=200)
    case_sensitive: bool = False

    def failure(self, answer: str) -> str | None:
        if not _has_phrase(answer, self.text, self.case_sensitive):
            return None
        return self.feedback or f"The answer must not use the word '{self.text}'."


class NumberCheck(_Check):
    """The answer's first number (optionally with its unit) lies in [min, max]."""

    kind: Literal["number"] = "number"
    min: float | None = None
    max: float | None = None
    unit: str | None = Field(default=None, max_length=40, description="Required unit right after the number.")

    @model_validator(mode="after")
    def _bounds(self) -> NumberCheck:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"number check: min ({self.min}) is larger than max ({self.max})")
        return self

    def failure(self, answer: str) -> str | None:
        found = _NUMBER_WITH_UNIT.search(answer)
        if found is None:
            return self.feedback or "The answer must contain a number."
        value = float(found.group(1).replace(",", ""))
        if self.unit is not None and (found.group(2) or "").lower() != self.unit.lower():
            return self.feedback or f"The number must be given in {self.unit}."
        if self.min is not None and value < self.min:
            return self.feedback or f"The number must be at least {self.min:g} (it is {value:g})."
        if self.max is not None and value > self.max:
            return self.feedback or f"The number must be at most {self.max:g} (it is {value:g})."
        return None


class WordsCheck(_Check):
    """The answer's length in words lies in [min, max]."""

    kind: Literal["words"] = "words"
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)

    def failure(self, answer: str) -> str | None:
        count = len(_words(answer))
        if self.min is not None and count < self.min:
            return self.feedback or f"The answer has {count} words; at least {self.min} are needed."
        if self.max is not None and count > self.max:
            return self.feedback or f"The answer has {count} words; at most {self.max} are allowed."
        return None


Check = Annotated[ContainsCheck | ExcludesCheck | NumberCheck | WordsCheck, Field(discriminator="kind")]


class ChecklistSpec(BaseModel):
    """Every check must pass; feedback names the ones that failed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["checklist"] = "checklist"
    checks: list[Check] = Field(min_length=1, max_length=50)
    extract: ExtractMode = Field(default="full", description="Which part of the attempt the checks read.")
    partial_credit: bool = Field(default=True, description="Reward = share of checks passed (else 0 or 1).")

    def verify(self, problem: Problem, completion: str) -> Verdict:
        answer = extract_answer(completion[:MAX_SCAN_CHARS], self.extract)
        if answer is None:
            return Verdict(reward=0.0, solved=False, feedback="No final answer was found in your response.")
        failures = [message for check in self.checks if (message := check.failure(answer)) is not None]
        if not failures:
            return Verdict(reward=1.0, solved=True, answer=answer)
        passed = 1 - len(failures) / len(self.checks)
        return Verdict(reward=passed if self.partial_credit else 0.0, solved=False, answer=None,
                       feedback=" ".join(failures))
