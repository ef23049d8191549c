"""How a worker (or `sdpo solve`) verifies a batch of attempts for a problem.

Answer verifiers run in-process. (Code-running verifiers and the sandbox pool arrive with the verifier issue.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sdpo_core.problem import Problem
from sdpo_core.verifiers import Verdict, verify_attempts

VerifyFn = Callable[[Problem, Sequence[str]], list[Verdict]]


def verify_function(problem: Problem) -> VerifyFn:
    """The batch verify callable the loop uses for `problem`."""
    return verify_attempts
