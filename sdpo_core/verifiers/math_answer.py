"""`math`: the final answer in \\boxed{} is checked against the gold answer with math-verify.

math-verify compares mathematically (1/2 = 0.5 = \\frac{1}{2}, sets, intervals, equations) and is not symmetric:
the gold answer goes first. Its timeouts use SIGALRM, which works only in a main thread, so off the main thread
they are turned off; the attempt text is cut to its end first, which bounds the parsing work. math-verify is
imported on first use so that the spec imports without it.

sympy evaluates integer powers and factorials exactly and at once, inside one C call no timeout interrupts:
9^{9^{9}} has 370 million digits and takes minutes. So power towers, huge exponents and huge factorials are refused
in a gold answer (the spec does not validate) and not evaluated in an attempt (reward 0, feedback says why); the
verifier pool's hard time limit (sdpo_core/verification/pool.py) catches whatever this screen misses.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdpo_core.verifiers.base import Verdict, VerifierError
from sdpo_core.verifiers.extract import boxed

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

MAX_SCAN_CHARS = 20_000
MAX_ANSWER_CHARS = 1_000
MAX_EXPONENT = 100_000  # 10^{100000} has 100001 digits: milliseconds
MAX_FACTORIAL = 10_000  # 10000! has 35660 digits
_CLOSING = {"{": "}", "(": ")", "[": "]"}
NO_BOX_FEEDBACK = "No final answer was found in your response. Finish with the final answer written as \\boxed{...}."


class MathSpec(BaseModel):
    """A math answer checked for equivalence by math-verify (LaTeX or plain expressions)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["math"] = "math"
    runs_code: ClassVar[bool] = False
    answer: str = Field(min_length=1, max_length=MAX_ANSWER_CHARS, description="The gold answer, e.g. \\frac{1}{2}.")
    timeout_s: int = Field(default=5, ge=1, le=60, description="Per parse and per comparison (main thread only).")

    @field_validator("answer")
    @classmethod
    def _evaluable(cls, answer: str) -> str:
        hazard = evaluation_hazard(answer)
        if hazard:
            raise ValueError(f"the gold answer contains {hazard}, which math verification would evaluate exactly "
                             "(minutes of CPU, gigabytes of memory); such answers are not accepted")
        return answer

    def worst_case_seconds(self) -> float:
        return 4.0 * self.timeout_s  # two parses and a comparison, each under timeout_s, with room

    def verify(self, problem: Problem, completion: str) -> Verdict:
        given = boxed(completion[-MAX_SCAN_CHARS:])
        if not given:
            return Verdict(reward=0.0, solved=False, feedback=NO_BOX_FEEDBACK)
        if len(given) > MAX_ANSWER_CHARS:
            return Verdict(reward=0.0, solved=False, feedback="Your boxed answer is too long to be a final answer.")
        hazard = evaluation_hazard(given)
        if hazard:
            return Verdict(reward=0.0, solved=False, answer=given,
                           feedback=f"Your final answer contains {hazard}; it was not evaluated and is not accepted.")
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


def evaluation_hazard(expression: str) -> str | None:
    """What in `expression` sympy would take minutes to evaluate exactly: a power tower of numbers (an exponent
    that has an exponent; e^{-x^2} is symbolic and fine), an integer exponent above MAX_EXPONENT, a factorial above
    MAX_FACTORIAL; None if nothing."""
    text = expression.replace("**", "^")
    for match in re.finditer(r"\^", text):
        exponent, end = _operand(text, match.end())
        while text[end:].lstrip().startswith("^"):  # a^b^c is a^(b^c)
            after = end + len(text[end:]) - len(text[end:].lstrip()) + 1
            more, end = _operand(text, after)
            exponent += "^" + more
        if "^" in exponent and not re.search(r"[A-Za-z]", exponent):  # numbers only: sympy evaluates it
            return f"a power tower ({_shown(text[max(match.start() - 20, 0): end + 20])})"
        digits = exponent.strip("{}()[] +-")
        if digits.isdigit() and int(digits) > MAX_EXPONENT:
            return f"the exponent {_shown(digits)} (at most {MAX_EXPONENT} is evaluated)"
    for match in re.finditer(r"(\d+)\s*!", text):
        if int(match.group(1)) > MAX_FACTORIAL:
            return f"the factorial {_shown(match.group(0))} (at most {MAX_FACTORIAL}! is evaluated)"
    return None


def _operand(text: str, start: int) -> tuple[str, int]:
    """The exponent that starts at `start` (a bracketed group, a command with its groups, a number or one
    character) and where it ends."""
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return "", i
    if text[i] in _CLOSING:
        depth, j = 0, i
        while j < len(text):
            depth += text[j] in _CLOSING
            depth -= text[j] in _CLOSING.values()
            j += 1
            if depth == 0:
                break
        return text[i:j], j
    if text[i] == "\\":
        match = re.match(r"\\[A-Za-z]+\s*", text[i:]) or re.match(r"\\.", text[i:])
        group, end = _operand(text, i + match.end()) if text[i + match.end(): i + match.end() + 1] == "{" else ("", i)
        return match.group(0) + group, max(end, i + match.end())
    match = re.match(r"\d+", text[i:])
    return (match.group(0), i + match.end()) if match else (text[i], i + 1)


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."
