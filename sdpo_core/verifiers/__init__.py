"""Verifier specs (a pydantic union tagged by `type`) and the factory that turns a spec into a Verifier.

Each spec declares whether it runs code and its own worst-case time (`VerifierSpecContract`, base.py). Answer
verifiers (exact, numeric, regex, checklist, math, reasoning_gym) and webhook are their own Verifier. Verifiers that
execute code (code_io and code_functional programs written by the model, python verifiers written by a user) never
run in the process that holds the model: `spec.verifier(sandbox)` builds them from the sandbox that
sdpo_core.verification provides (the `Sandbox` protocol of sandbox.py), through `build_verifier(spec, sandbox=...)`.
To add a verifier type: write its spec model (a `type` literal, `runs_code`, `worst_case_seconds`, and `verify` or
`verifier(sandbox)`) in a module of its own and add it to `VerifierSpec`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from sdpo_core.verifiers.answer import ExactSpec, NumericSpec, RegexSpec
from sdpo_core.verifiers.base import (
    JUDGED,
    StatesRequirements,
    Verdict,
    VerdictStatus,
    Verifier,
    VerifierError,
    VerifierSpecContract,
    clip_feedback,
    verifier_failed,
)
from sdpo_core.verifiers.checklist import ChecklistSpec
from sdpo_core.verifiers.code_io import CodeIOSpec
from sdpo_core.verifiers.functional import CodeFunctionalSpec
from sdpo_core.verifiers.math_answer import MathSpec
from sdpo_core.verifiers.python_verifier import PythonSpec
from sdpo_core.verifiers.reasoning import ReasoningGymSpec
from sdpo_core.verifiers.sandbox import RunLimits, RunResult, Sandbox
from sdpo_core.verifiers.webhook import WebhookSpec

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

VerifierSpec = Annotated[
    ExactSpec | NumericSpec | RegexSpec | ChecklistSpec | MathSpec | ReasoningGymSpec | CodeIOSpec | CodeFunctionalSpec
    | PythonSpec | WebhookSpec,
    Field(discriminator="type"),
]
SPEC_CLASSES: tuple[type[VerifierSpecContract], ...] = typing.get_args(typing.get_args(VerifierSpec)[0])

# Types whose verification executes untrusted code: they run only through a sandbox.
SANDBOXED_TYPES = frozenset(spec.model_fields["type"].default for spec in SPEC_CLASSES if spec.runs_code)

# What the loop calls to verify one step's attempts: (problem, completions) -> one verdict each, in order.
VerifyFn = Callable[["Problem", Sequence[str]], list[Verdict]]


def build_verifier(spec: Any, *, sandbox: Sandbox | None = None) -> Verifier:
    """The Verifier for `spec`; `sandbox` runs code for the types that execute code."""
    if spec.runs_code:
        if sandbox is None:
            raise VerifierError(f"verifier type '{spec.type}' runs code and needs a sandbox "
                                "(sdpo_core.verification provides one)")
        return spec.verifier(sandbox)
    if isinstance(spec, Verifier):
        return spec
    raise VerifierError(f"verifier type '{spec.type}' cannot be built here")


def verify_attempts(problem: Problem, completions: Sequence[str], verifier: Verifier | None = None) -> list[Verdict]:
    """Verdicts for several attempts, one at a time in this process, feedback capped.

    A verifier that raises yields an `error` verdict saying so, so one bad verifier never ends a run.
    """
    verifier = verifier or build_verifier(problem.verifier)
    verdicts = []
    for completion in completions:
        try:
            verdict = verifier.verify(problem, completion)
        except Exception as exc:  # noqa: BLE001 - a verifier bug is reported on the attempt, not raised
            verdict = verifier_failed(f"The verifier failed: {type(exc).__name__}: {exc}")
        verdicts.append(verdict.model_copy(update={"feedback": clip_feedback(verdict.feedback)}))
    return verdicts


__all__ = [
    "JUDGED", "SANDBOXED_TYPES", "SPEC_CLASSES", "ChecklistSpec", "CodeFunctionalSpec", "CodeIOSpec", "ExactSpec",
    "MathSpec", "NumericSpec", "PythonSpec", "ReasoningGymSpec", "RegexSpec", "RunLimits", "RunResult", "Sandbox",
    "StatesRequirements", "Verdict", "VerdictStatus", "Verifier", "VerifierError", "VerifierSpec",
    "VerifierSpecContract", "VerifyFn", "WebhookSpec", "build_verifier", "clip_feedback", "verifier_failed",
    "verify_attempts",
]
