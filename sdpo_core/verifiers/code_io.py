"""`code_io`: a program that reads stdin and writes stdout, checked on input/output tests in the sandbox.

Each test is its own sandboxed run, and the output is compared here, outside the sandbox: the program's exit
status and stdout are data, so exiting early with status 0 or printing something that looks like a verdict
earns nothing. Feedback quotes only public tests (LeetCode style, see code_feedback); hidden tests must pass too
and are never quoted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdpo_core.verifiers import code_feedback as fb
from sdpo_core.verifiers.base import Verdict, clip_feedback
from sdpo_core.verifiers.codeblock import extract_code
from sdpo_core.verifiers.sandbox import RunLimits, RunResult, Sandbox

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

STARTUP_ALLOWANCE_S = 0.5  # the limit counts from process start; this covers the interpreter's own start
Compare = Literal["lines", "tokens", "exact"]
Outcome = Literal["pass", "wrong", "runtime", "time", "output"]


class IOTest(BaseModel):
    """One test: the program's stdin and the stdout it must produce."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    input: str = Field(default="", max_length=10_000_000, description="What the program reads on stdin.")
    output: str = Field(max_length=10_000_000, description="What the program must write on stdout.")


class CodeIOSpec(BaseModel):
    """A stdin/stdout program (Python) checked on public tests (quoted in feedback) and hidden tests."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["code_io"] = "code_io"
    runs_code: ClassVar[bool] = True
    public_tests: list[IOTest] = Field(min_length=1, max_length=1000, description="Failures here are quoted.")
    hidden_tests: list[IOTest] = Field(
        default_factory=list, max_length=10_000, description="A solution must pass these too; never quoted."
    )
    time_limit_s: float = Field(default=2.0, gt=0, le=60, description="Per test, wall clock.")
    memory_mb: int = Field(default=1024, ge=64, le=16_384, description="Address space of the program.")
    compare: Compare = Field(
        default="lines", description="lines: trailing whitespace ignored; tokens: any whitespace; exact: bytes."
    )
    packages: bool = Field(
        default=False,
        description="Let the program import third-party packages installed on the service (numpy, ...); without "
        "them (the default, as on most judges) Python starts 2-3x faster.",
    )

    def worst_case_seconds(self) -> float:
        return (len(self.public_tests) + len(self.hidden_tests)) * (self.time_limit_s + 1.0) * 1.5  # a run per test

    def verifier(self, sandbox: Sandbox) -> CodeIOVerifier:
        return CodeIOVerifier(self, sandbox)


_COMPARE: dict[str, Callable[[str], object]] = {
    "lines": lambda text: [line.rstrip() for line in text.rstrip().splitlines()],
    "tokens": str.split,
    "exact": lambda text: text,
}
_HIDDEN_KIND = {"wrong": "wrong answer", "runtime": "runtime error", "time": "time limit exceeded",
                "output": "output limit exceeded"}


class CodeIOVerifier:
    """Runs the longest fenced code block of an attempt on every test, one sandboxed run per test."""

    def __init__(self, spec: CodeIOSpec, sandbox: Sandbox) -> None:
        self.spec = spec
        self.sandbox = sandbox
        self.limits = RunLimits(
            wall_s=spec.time_limit_s + STARTUP_ALLOWANCE_S, cpu_s=spec.time_limit_s + STARTUP_ALLOWANCE_S,
            memory_mb=spec.memory_mb,
        )

    def verify(self, problem: Problem, completion: str) -> Verdict:
        extraction = extract_code(completion)
        if extraction.code is None:
            return _failed(fb.TRUNCATED_FEEDBACK if extraction.truncated else fb.FORMAT_FEEDBACK)
        code = extraction.code
        wrong: list[fb.WrongAnswer] = []
        for test in self.spec.public_tests:
            outcome, run = self.run_test(code, test)
            if outcome == "wrong":
                wrong.append(fb.WrongAnswer(test.input, run.stdout, test.output))
            elif outcome != "pass":  # a crash or a limit ends the run, as on LeetCode
                return _failed(_limit_feedback(outcome, run, test.input))
        if wrong:
            return _failed(fb.wrong_answers(wrong))
        for test in self.spec.hidden_tests:
            outcome, _ = self.run_test(code, test)
            if outcome != "pass":
                return _failed(
                    f"Your program passed all {len(self.spec.public_tests)} public tests but failed a hidden test "
                    f"({_HIDDEN_KIND[outcome]}). Hidden tests are not shown: think about edge cases and efficiency."
                )
        return Verdict(reward=1.0, solved=True)

    def run_test(self, code: str, test: IOTest) -> tuple[Outcome, RunResult]:
        run = self.sandbox.run_python(code, stdin=test.input, limits=self.limits, site_packages=self.spec.packages)
        if run.timed_out or run.cpu_limited:
            return "time", run
        if run.output_truncated:
            return "output", run
        if run.exit_code != 0:
            return "runtime", run
        same = _COMPARE[self.spec.compare](run.stdout) == _COMPARE[self.spec.compare](test.output)
        return ("pass" if same else "wrong"), run


def _limit_feedback(outcome: Outcome, run: RunResult, test_input: str) -> str:
    if outcome == "time":
        return fb.time_limit(test_input)
    if outcome == "output":
        return fb.output_limit(test_input, run.limits.max_output_bytes)
    trace = run.stderr.strip() or f"Your program failed: {run.describe()}."
    if run.out_of_memory:
        trace += f"\n(memory limit: {run.limits.memory_mb} MB)"
    return fb.runtime_error(trace, test_input)


def _failed(feedback: str) -> Verdict:
    return Verdict(reward=0.0, solved=False, feedback=clip_feedback(feedback))
