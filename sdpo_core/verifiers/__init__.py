"""Verifier specs (a pydantic union tagged by `type`) and the factory that turns a spec into a Verifier.

Answer verifiers (exact, numeric, regex) run in-process. Verifiers that execute code (programs written by the
model, or verifier code written by a user) never run in the process that holds the model: their specs build a
verifier from the sandbox runner that `workers/` provides, passed to `build_verifier(spec, sandbox=...)`.
To add a verifier type: write its spec model with a `type` literal, add it to `VerifierSpec`, and give it a
`verify(problem, completion)` method or a factory in `_FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from sdpo_core.verifiers.answer import ExactSpec, NumericSpec, RegexSpec
from sdpo_core.verifiers.base import Verdict, Verifier, VerifierError, clip_feedback

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

VerifierSpec = Annotated[ExactSpec | NumericSpec | RegexSpec, Field(discriminator="type")]

# type -> factory(spec, sandbox) for specs that need resources beyond their own fields.
_FACTORIES: dict[str, Callable[[Any, Any], Verifier]] = {}


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

    A verifier that raises yields reward 0 with feedback saying so, so one bad verifier never ends a run.
    """
    verifier = verifier or build_verifier(problem.verifier)
    verdicts = []
    for completion in completions:
        try:
            verdict = verifier.verify(problem, completion)
        except Exception as exc:  # noqa: BLE001 - a verifier bug is reported on the attempt, not raised
            verdict = Verdict(reward=0.0, solved=False, feedback=f"The verifier failed: {type(exc).__name__}: {exc}")
        verdicts.append(verdict.model_copy(update={"feedback": clip_feedback(verdict.feedback)}))
    return verdicts


__all__ = [
    "ExactSpec", "NumericSpec", "RegexSpec", "Verdict", "Verifier", "VerifierError", "VerifierSpec",
    "build_verifier", "verify_attempts",
]
