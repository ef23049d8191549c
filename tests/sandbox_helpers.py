"""Helpers for the sandbox and verifier tests: problems, code blocks, leftover-process checks."""

from __future__ import annotations

import os
import time

from sdpo_core.problem import Problem
from workers.uids import DEFAULT_UID_BASE, DEFAULT_UID_COUNT

SUM_TESTS = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in [(1, 2), (10, 20), (-5, 5)]]
SUM_SOLUTION = "a, b = map(int, input().split())\nprint(a + b)\n"


def block(code: str) -> str:
    """`code` as a model would answer it: some reasoning, then a fenced block."""
    return f"Here is my solution.\n```python\n{code}\n```\n"


def sum_problem(**overrides: object) -> Problem:
    """A small code_io problem: read two integers, print their sum."""
    verifier = {"type": "code_io", "public_tests": SUM_TESTS, "hidden_tests": [{"input": "1000 1\n", "output": "1001\n"}],
                "time_limit_s": 1.0, **overrides}
    return Problem.model_validate({"id": "sum", "prompt": "Read a and b, print a + b.", "verifier": verifier})


def sandbox_processes() -> list[int]:
    """Pids still running under any sandbox uid."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status") as status:
                uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
        except (OSError, StopIteration, ValueError):
            continue
        if DEFAULT_UID_BASE <= uid < DEFAULT_UID_BASE + DEFAULT_UID_COUNT:
            pids.append(int(name))
    return pids


def wait_until_no_sandbox_processes(timeout_s: float = 10.0) -> list[int]:
    """Leftover sandbox pids after waiting up to `timeout_s` for them to go (empty when contained)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = sandbox_processes()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
