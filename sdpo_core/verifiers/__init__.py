"""Verifier specs (a pydantic union tagged by `type`) and the factory that turns a spec into a Verifier.

Answer verifiers (exact, numeric, regex, checklist, math, reasoning_gym) run in-process; webhook calls out over HTTP.
Verifiers that execute code (code_io and code_functional programs written by the model, python verifiers written
by a user) never run in the process that holds the model: their specs build a verifier from the sandbox that
`workers/` provides (the `Sandbox` protocol of sandbox.py), passed to `build_verifier(spec, sandbox=...)`.
To add a verifier type: write its spec model with a `type` literal, add it to `VerifierSpec`, and give it a
`verify(problem, completion)` method or a factory in `_FACTORIES`.
"""

from __future__ import annotations

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
    clip_feedback,
    verifier_failed,
)
from sdpo_core.verifiers.checklist import ChecklistSpec
from sdpo_core.verifiers.code_io import CodeIOSpec, CodeIOVerifier
from sdpo_core.verifiers.functional import CodeFunctionalSpec, CodeFunctionalVerifier
from sdpo_core.verifiers.math_answer import MathSpec
from sdpo_core.verifiers.python_verifier import PythonSpec, PythonVerifier
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

# Types whose verification executes untrusted code: they run only through a sandbox.
SANDBOXED_TYPES = frozenset({"code_io", "code_functional", "python"})


def _sandboxed(verifier_class: Callable[[Any, Sandbox], Verifier]) -> Callable[[Any, Any], Verifier]:
    def factory(spec: Any, sandbox: Any) -> Verifier:
        if sandbox is None:
            raise VerifierError(
                f"verifier type '{spec.type}' runs code and needs a sandbox (sdpo_core.verification.verify provides one)"
            )
        return verifier_class(spec, sandbox)

    return factory


# What the loop calls to verify one step's attempts: (problem, completions) -> one verdict each, in order.
VerifyFn = Callable[["Problem", Sequence[str]], list[Verdict]]

# type -> factory(spec, sandbox) for specs that need resources beyond their own fields.
_FACTORIES: dict[str, Callable[[Any, Any], Verifier]] = {
    "code_io": _sandboxed(CodeIOVerifier),
    "code_functional": _sandboxed(CodeFunctionalVerifier),
    "python": _sandboxed(PythonVerifier),
}


def build_verifier(spec: Any, *, sandbox: Any = None) -> Verifier:
    """The Verifier for `spec`; `sandbox` runs code for the types that execute code."""
    factory = _FACTORIES.get(spec.type)
    if factory is not None:
        return factory(spec, sandbox)
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
    "JUDGED", "SANDBOXED_TYPES", "ChecklistSpec", "CodeFunctionalSpec", "CodeIOSpec", "ExactSpec", "MathSpec",
    "NumericSpec", "PythonSpec", "VerdictStatus", "verifier_failed",
    "ReasoningGymSpec", "RegexSpec", "RunLimits", "RunResult", "Sandbox", "StatesRequirements", "Verdict", "Verifier", "VerifierError",
    "VerifierSpec", "VerifyFn", "WebhookSpec", "build_verifier", "clip_feedback", "verify_attempts",
]
