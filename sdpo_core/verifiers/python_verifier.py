"""`python`: a verifier written by the user, `verify(completion) -> bool | float | {"reward", "feedback"}`.

It runs in the sandbox like any untrusted code (harness/call_once.py). Whatever it returns is checked here: a
value of another shape, a reward outside [0, 1], an exception or a hang becomes reward 0 with feedback that says
what happened, so a broken verifier never ends the job.
"""

from __future__ import annotations

import ast
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdpo_core.verifiers.base import Verdict, VerdictStatus, clip_feedback, verifier_failed
from sdpo_core.verifiers.harness.plain import NotPlainData, decode_plain
from sdpo_core.verifiers.judged import judge_limits, judge_worst_case_s, no_verdict, run_judge
from sdpo_core.verifiers.sandbox import Sandbox

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

EXPECTED_SHAPE = 'a bool, a number in [0, 1] or {"reward": number in [0, 1], "feedback": str}'


class PythonSpec(BaseModel):
    """Python source that defines `verify(completion)`; it runs sandboxed, without network."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["python"] = "python"
    runs_code: ClassVar[bool] = True
    source: str = Field(min_length=1, max_length=500_000, description="Defines verify(completion: str).")
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="For loading the source and one call.")
    memory_mb: int = Field(default=1024, ge=64, le=16_384)

    def worst_case_seconds(self) -> float:
        return judge_worst_case_s(self.timeout_s)

    def verifier(self, sandbox: Sandbox) -> PythonVerifier:
        return PythonVerifier(self, sandbox)

    @field_validator("source")
    @classmethod
    def _defines_verify(cls, source: str) -> str:
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise ValueError(f"the verifier source does not compile: {exc}") from exc
        if not any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "verify"
                   for node in tree.body):
            raise ValueError("the verifier source must define a top-level function verify(completion)")
        return source


class PythonVerifier:
    """Calls the user's verify(completion) once per attempt in the sandbox."""

    def __init__(self, spec: PythonSpec, sandbox: Sandbox) -> None:
        self.spec = spec
        self.sandbox = sandbox

    def verify(self, problem: Problem, completion: str) -> Verdict:
        payload = {"function": "verify", "args": [completion], "timeout_s": self.spec.timeout_s}
        outcome, run = run_judge(
            self.sandbox, "call_once.py", payload, {"verifier.py": self.spec.source},
            judge_limits(self.spec.timeout_s, self.spec.memory_mb),
        )
        if outcome is None:
            return _broken(no_verdict(run, "The verifier"))
        status = outcome.get("status")
        if status == "returned":
            try:
                return verdict_from(decode_plain(outcome.get("value")))
            except NotPlainData as exc:
                return _broken(f"The verifier's result could not be read: {exc}")
        error = outcome.get("error") or {}
        if status in ("load_error", "raised"):
            where = "while loading" if status == "load_error" else "in verify()"
            return _broken(f"The verifier raised {error.get('type')} {where}: {error.get('message', '')}".strip())
        if status == "not_plain":
            return _broken(f"The verifier returned {outcome.get('message')}; it must return {EXPECTED_SHAPE}.")
        if status == "time_limit":
            return _broken(f"The verifier did not finish within {self.spec.timeout_s:g} s.", "timeout")
        if status == "exited":
            return _broken(f"The verifier's process exited (status {outcome.get('exit_code')}) before returning.")
        return _broken(f"The verifier failed ({status}).")


def verdict_from(value: Any) -> Verdict:
    """A Verdict from what verify() returned; any other shape is reported as the verifier's fault."""
    if type(value) is bool:
        return Verdict(reward=float(value), solved=value, feedback="" if value else "The answer was judged incorrect.")
    if type(value) is dict and "reward" in value:
        reward, feedback, solved = value["reward"], value.get("feedback", ""), value.get("solved")
        if type(feedback) is not str:
            return _broken(f"The verifier's feedback is a {type(feedback).__name__}, not a string.")
    else:
        reward, feedback, solved = value, "", None
    if type(reward) not in (int, float) or not math.isfinite(reward) or not 0.0 <= reward <= 1.0:
        if reward is value:
            return _broken(f"The verifier returned {_shown(value)}; it must return {EXPECTED_SHAPE}.")
        return _broken(f"The verifier returned the reward {_shown(reward)}, which is not a number in [0, 1].")
    return Verdict(
        reward=float(reward), solved=solved if type(solved) is bool else reward >= 1.0,
        feedback=clip_feedback(feedback),
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


def _broken(message: str, status: VerdictStatus = "error") -> Verdict:
    return verifier_failed(message, status)
