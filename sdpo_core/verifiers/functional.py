"""`code_functional`: a function checked by assert-based tests, HumanEval style (prompt, entry point, test code).

The function runs in a child process of the sandboxed judge; the test code runs in the judge and reaches the
function through a proxy that carries plain data only (harness/functional.py). Feedback names the failing call
and what the function returned, never the expected value, the assertion or the test code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdpo_core.verifiers import code_feedback as fb
from sdpo_core.verifiers.base import Verdict, clip_feedback
from sdpo_core.verifiers.codeblock import defines_function, extract_code
from sdpo_core.verifiers.judged import judge_limits, judge_worst_case_s, no_verdict, run_judge
from sdpo_core.verifiers.sandbox import Sandbox

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

CALL_LABEL = "Last Executed Call"


class CodeFunctionalSpec(BaseModel):
    """A Python function `entry_point` checked by `test` (HumanEval's `def check(candidate)` with asserts)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["code_functional"] = "code_functional"
    runs_code: ClassVar[bool] = True
    entry_point: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The function's name.")
    test: str = Field(
        min_length=1, max_length=1_000_000,
        description="Test code: `def check(candidate)` with asserts, or asserts that call the entry point by name.",
    )
    code_prefix: str = Field(
        default="", max_length=200_000,
        description="Code put before the attempt's code when it does not define the entry point (HumanEval prompt).",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="For loading the code and all the calls.")
    memory_mb: int = Field(default=1024, ge=64, le=16_384)

    def worst_case_seconds(self) -> float:
        return judge_worst_case_s(self.timeout_s)

    def verifier(self, sandbox: Sandbox) -> CodeFunctionalVerifier:
        return CodeFunctionalVerifier(self, sandbox)

    @field_validator("test")
    @classmethod
    def _compiles(cls, test: str) -> str:
        try:
            compile(test, "<test>", "exec")
        except SyntaxError as exc:
            raise ValueError(f"the test code does not compile: {exc}") from exc
        return test


class CodeFunctionalVerifier:
    """Runs the attempt's function against the spec's tests in the sandbox."""

    def __init__(self, spec: CodeFunctionalSpec, sandbox: Sandbox) -> None:
        self.spec = spec
        self.sandbox = sandbox

    def verify(self, problem: Problem, completion: str) -> Verdict:
        extraction = extract_code(completion)
        if extraction.code is None:
            return _failed(fb.TRUNCATED_FEEDBACK if extraction.truncated else fb.FORMAT_FEEDBACK)
        code = extraction.code
        if not defines_function(code, self.spec.entry_point) and self.spec.code_prefix:
            code = self.spec.code_prefix + code
        payload = {"test": self.spec.test, "entry_point": self.spec.entry_point, "timeout_s": self.spec.timeout_s}
        outcome, run = run_judge(
            self.sandbox, "functional.py", payload, {"solution.py": code},
            judge_limits(self.spec.timeout_s, self.spec.memory_mb),
        )
        if outcome is None:
            return _failed(no_verdict(run, "The tests of your function"))
        if outcome.get("status") == "passed":
            return Verdict(reward=1.0, solved=True)
        return _failed(feedback_for(outcome, self.spec.entry_point))


def feedback_for(outcome: dict[str, Any], entry_point: str) -> str:
    """LeetCode-style feedback for a failed functional run (see harness/functional.py for the statuses)."""
    status = outcome.get("status")
    call = str(outcome.get("call", ""))
    error = outcome.get("error") or {}
    if status == "load_error":
        trace = f"{error.get('trace', '')}{error.get('type', 'Error')}: {error.get('message', '')}"
        if error.get("type") in ("SyntaxError", "IndentationError", "TabError"):
            return fb.compile_error(trace)
        if error.get("type") == "SystemExit":
            return "Runtime Error\nYour code called exit() while it was being loaded; define the function instead."
        return fb.runtime_error(trace, "(loading your code)", input_label="While")
    if status == "wrong_answer":
        returned = outcome.get("returned")
        detail = f"Returned:\n{fb.field(str(returned))}" if returned is not None else outcome.get("message", "")
        return clip_feedback(f"Wrong Answer\nCall:\n{fb.field(call)}\n{detail}" if call else
                             "Wrong Answer: a test assertion failed.")
    if status == "runtime_error":
        trace = f"{error.get('trace', '')}{error.get('type', 'Error')}: {error.get('message', '')}"
        return fb.runtime_error(trace, call, input_label=CALL_LABEL)
    if status == "time_limit":
        return fb.time_limit(call or None, input_label=CALL_LABEL)
    if status == "not_plain":
        return clip_feedback(
            f"Wrong Answer\n{entry_point}() must return plain built-in data, but it returned "
            f"{outcome.get('message', 'something else')}\n\n{CALL_LABEL}\n{fb.field(call)}"
        )
    if status == "exited":
        how = "called exit()" if error else f"ended its process (status {outcome.get('exit_code')})"
        return clip_feedback(f"Runtime Error\nYour code {how} during a call; a function must return its result."
                             + (f"\n\n{CALL_LABEL}\n{fb.field(call)}" if call else ""))
    if status == "test_error":
        return f"The problem's test code failed before calling {entry_point}(): {outcome.get('message', '')}"[:500]
    return f"Runtime Error\nYour code interfered with the test harness ({outcome.get('message') or status})."


def _failed(feedback: str) -> Verdict:
    return Verdict(reward=0.0, solved=False, feedback=clip_feedback(feedback))
