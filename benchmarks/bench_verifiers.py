"""Verifier throughput and sandbox overhead on this machine.

1. Verifications per second: a `code_io` problem with 10 tests, correct attempts (so all 10 tests run), through
   the VerifierPool the loop uses (worker processes -> sandbox), after a warm-up batch that starts the workers.
2. Sandbox overhead per call: the same small program run N times as a bare `python -I -B -S main.py` subprocess and
   N times through SubprocessSandbox.run_python, in the same run, interleaved so both see the same machine load.

    .venv/bin/python benchmarks/bench_verifiers.py [--attempts 40] [--calls 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdpo_core.problem import Problem
from sdpo_core.verification.pool import VerifierPool
from sdpo_core.verification.subprocess_sandbox import SubprocessSandbox

PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
ANSWER = f"Add the two numbers.\n```python\n{PROGRAM}```\n"


def ten_test_problem() -> Problem:
    tests = [{"input": f"{i} {i * 7}\n", "output": f"{i * 8}\n"} for i in range(10)]
    return Problem.model_validate({"id": "bench-sum", "prompt": "Print a + b.", "verifier": {
        "type": "code_io", "public_tests": tests[:5], "hidden_tests": tests[5:], "time_limit_s": 2.0}})


def verifications_per_second(attempts: int, workers: int) -> tuple[float, float]:
    """(verifications/s, sandbox runs/s) for `attempts` correct attempts of the 10-test problem."""
    problem = ten_test_problem()
    with VerifierPool(max_workers=workers) as pool:
        pool.verify_batch(problem, [ANSWER] * workers)  # warm-up: workers spawned, sandbox probed
        started = time.perf_counter()
        verdicts = pool.verify_batch(problem, [ANSWER] * attempts)
        elapsed = time.perf_counter() - started
    assert all(v.solved for v in verdicts), [v.feedback for v in verdicts if not v.solved][:1]
    return attempts / elapsed, attempts * 10 / elapsed


def bare_call(workdir: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-I", "-B", "-S", "main.py"], input=b"3 4\n", capture_output=True,
                          cwd=workdir, timeout=30)
    elapsed = time.perf_counter() - started
    assert done.stdout == b"7\n"
    return elapsed


def sandbox_call(sandbox: SubprocessSandbox) -> float:
    started = time.perf_counter()
    run = sandbox.run_python(PROGRAM, stdin="3 4\n", site_packages=False)  # as code_io runs programs
    elapsed = time.perf_counter() - started
    assert run.stdout == "7\n", run
    return elapsed


def overhead(calls: int) -> tuple[float, float, str]:
    """(median bare seconds, median sandbox seconds, isolation) over `calls` interleaved calls each."""
    sandbox = SubprocessSandbox()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "main.py").write_text(PROGRAM)
        bare_call(workdir), sandbox_call(sandbox)  # warm caches
        bare, boxed = [], []
        for _ in range(calls):
            bare.append(bare_call(workdir))
            boxed.append(sandbox_call(sandbox))
    return statistics.median(bare), statistics.median(boxed), sandbox.isolation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=40, help="attempts verified for the throughput figure")
    parser.add_argument("--calls", type=int, default=100, help="calls of each kind for the overhead figure")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="verifier pool processes")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, uid {os.geteuid()}, "
          f"load average {os.getloadavg()[0]:.2f} before")
    bare_s, boxed_s, isolation = overhead(args.calls)
    print(f"sandbox isolation: {isolation}")
    print(f"bare subprocess   : {bare_s * 1000:7.1f} ms per call (median of {args.calls})")
    print(f"sandboxed call    : {boxed_s * 1000:7.1f} ms per call (median of {args.calls})")
    print(f"sandbox overhead  : {(boxed_s - bare_s) * 1000:7.1f} ms per call, {boxed_s / bare_s:.2f}x a bare subprocess")
    per_s, runs_per_s = verifications_per_second(args.attempts, args.workers)
    print(f"code_io, 10 tests : {per_s:7.2f} verifications/s with {args.workers} workers "
          f"({runs_per_s:.1f} sandboxed runs/s, {args.attempts} attempts)")
    print(f"ideal from overhead figure: {args.workers / (10 * boxed_s):.2f} verifications/s "
          f"({args.workers} workers x 1 / (10 x {boxed_s * 1000:.1f} ms))")
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
