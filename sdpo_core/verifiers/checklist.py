"""Checklist verifier: requirements on the text of an answer, each with the feedback that names what is missing.

Many real tasks are judged by a list of requirements rather than one gold answer: a product description must
name the brand, a summary must stay under 50 words, a dosage must be given in mg and fall in a safe range.
Feedback that names the unmet requirement is what a self-teacher (or a multi-turn prompt) can act on, so each
check carries a message, by default one that says exactly what the check wants:

    {"type": "checklist", "checks": [
        {"kind": "contains", "text": "lighthouse"},                  -> The answer must use the word 'lighthouse'.
        {"kind": "contains", "text": ["sea", "ocean"]},              -> The answer must use one of the words 'sea', 'ocean'.
        {"kind": "excludes", "text": "very"},                        -> The answer must not use the word 'very'.
        {"kind": "excludes", "text": ["answer", "word"]},            -> The answer must not use the word 'word'.
        {"kind": "number", "min": 500, "max": 600, "unit": "cm"},    -> The number must be at most 600 (it is 714).
        {"kind": "words", "max": 20}                                 -> The answer has 31 words; at most 20 are allowed.
    ]}

The attempt is solved when every check passes; the reward is the share of all checks passed (every check is
evaluated, whatever the feedback reports; a user who wants a binary reward sets `partial_credit: false`), and the
feedback lists the failed checks' messages. Two options shape the feedback as real tools do:
- `report: "first"` names only the first failed check in the list's order, as a compiler or a test runner that
  stops at the first failure: the requirements arrive one at a time and a method must keep them;
- `feedback_format: "test_log" | "build_log"` embeds the message(s) in a few hundred tokens of deterministic
  test-runner or build output (feedback_log.py), at most FEEDBACK_MAX_CHARS characters.
Checks run on the attempt's final answer (`extract`, default the whole text) in-process: plain string and number
handling, no user-supplied patterns, so nothing here can stall the worker.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdpo_core.verifiers.base import FEEDBACK_MAX_CHARS, TEXT_CHECK_S, Verdict
from sdpo_core.verifiers.extract import ExtractMode, extract_answer
from sdpo_core.verifiers.feedback_log import log_seed, render_log

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


Phrase = Annotated[str, Field(min_length=1, max_length=200)]


def _quoted(phrases: list[str]) -> str:
    return ", ".join(f"'{p}'" for p in phrases)


class _PhraseCheck(_Check):
    """A word or phrase, or a list of them: a topic has several words ('sea', 'ocean'), talk about the task has
    many ('answer', 'instruction', ...), and one check with one message says so better than one check per word."""

    text: Phrase | list[Phrase] = Field(description="A word or phrase, or a list of them (at most 50).")
    case_sensitive: bool = False

    @property
    def phrases(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else self.text

    @model_validator(mode="after")
    def _some(self) -> _PhraseCheck:
        if not 1 <= len(self.phrases) <= 50:
            raise ValueError(f"{self.kind} check: text must name 1 to 50 words or phrases")
        return self

    def found(self, answer: str) -> list[str]:
        return [p for p in self.phrases if _has_phrase(answer, p, self.case_sensitive)]


class ContainsCheck(_PhraseCheck):
    """The answer uses a word or phrase (with a list: any one of them)."""

    kind: Literal["contains"] = "contains"

    def requirement(self) -> str:
        if self.feedback:
            return self.feedback
        if len(self.phrases) == 1:
            return f"The answer must use the word '{self.phrases[0]}'."
        return f"The answer must use one of the words {_quoted(self.phrases)}."

    def failure(self, answer: str) -> str | None:
        return None if self.found(answer) else self.requirement()


class ExcludesCheck(_PhraseCheck):
    """The answer uses none of these words or phrases; the default feedback names the ones it used."""

    kind: Literal["excludes"] = "excludes"

    def requirement(self) -> str:
        if self.feedback:
            return self.feedback
        if len(self.phrases) == 1:
            return f"The answer must not use the word '{self.phrases[0]}'."
        return f"The answer must not use the words {_quoted(self.phrases)}."

    def failure(self, answer: str) -> str | None:
        used = self.found(answer)
        if not used:
            return None
        if self.feedback:
            return self.feedback
        return f"The answer must not use the word{'s' if len(used) > 1 else ''} {_quoted(used)}."


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

    def requirement(self) -> str:
        if self.feedback:
            return self.feedback
        unit = f" in {self.unit}" if self.unit else ""
        if self.min is not None and self.max is not None:
            return f"The answer's first number must be between {self.min:g} and {self.max:g}{unit}."
        if self.min is not None:
            return f"The answer's first number must be at least {self.min:g}{unit}."
        if self.max is not None:
            return f"The answer's first number must be at most {self.max:g}{unit}."
        return f"The answer must contain a number{unit}."

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

    def requirement(self) -> str:
        if self.feedback:
            return self.feedback
        if self.min is not None and self.max is not None:
            return f"The answer must have between {self.min} and {self.max} words."
        if self.min is not None:
            return f"The answer must have at least {self.min} words."
        return f"The answer must have at most {self.max} words." if self.max is not None else ""

    def failure(self, answer: str) -> str | None:
        count = len(_words(answer))
        if self.min is not None and count < self.min:
            return self.feedback or f"The answer has {count} words; at least {self.min} are needed."
        if self.max is not None and count > self.max:
            return self.feedback or f"The answer has {count} words; at most {self.max} are allowed."
        return None


Check = Annotated[ContainsCheck | ExcludesCheck | NumberCheck | WordsCheck, Field(discriminator="kind")]


class ChecklistSpec(BaseModel):
    """Every check must pass; feedback names the ones that failed (or only the first), plain or inside a log."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["checklist"] = "checklist"
    runs_code: ClassVar[bool] = False
    checks: list[Check] = Field(min_length=1, max_length=50)
    extract: ExtractMode = Field(default="full", description="Which part of the attempt the checks read.")
    partial_credit: bool = Field(default=True, description="Reward = share of checks passed (else 0 or 1).")
    report: Literal["all", "first"] = Field(
        default="all", description="all: the feedback names every failed check; first: only the first failed check "
        "in the list's order, as a compiler or a test runner that stops at the first failure.")
    feedback_format: Literal["plain", "test_log", "build_log"] = Field(
        default="plain", description="plain: the messages alone; test_log / build_log: the messages inside a few "
        "hundred tokens of deterministic test-runner or compiler output.")

    def worst_case_seconds(self) -> float:
        return TEXT_CHECK_S

    def verify(self, problem: Problem, completion: str) -> Verdict:
        answer = extract_answer(completion[:MAX_SCAN_CHARS], self.extract)
        if answer is None:
            return Verdict(reward=0.0, solved=False, feedback="No final answer was found in your response.")
        outcomes = [(i, check.failure(answer)) for i, check in enumerate(self.checks)]
        failed = [message for _, message in outcomes if message is not None]
        if not failed:
            return Verdict(reward=1.0, solved=True, answer=answer)
        passed = 1 - len(failed) / len(self.checks)
        if self.report == "first":  # what a runner that stops at the first failure has seen
            first = next(i for i, message in outcomes if message is not None)
            outcomes, failed = outcomes[: first + 1], failed[:1]
        if self.feedback_format == "plain":
            feedback = " ".join(failed)
        else:
            seed = log_seed(problem.question, self.model_dump_json())
            feedback = render_log(self.feedback_format, seed, outcomes, FEEDBACK_MAX_CHARS)
        return Verdict(reward=passed if self.partial_credit else 0.0, solved=False, answer=None, feedback=feedback)

    def all_requirements(self) -> str:
        """Every check's requirement in one plain feedback, as if all were unmet: what `sdpo bench signal` tells
        the model to measure whether a problem can be solved at all once its hidden requirements are known."""
        return " ".join(r for check in self.checks if (r := check.requirement()))
