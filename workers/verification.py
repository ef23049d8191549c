"""How a worker (or `sdpo solve`) verifies a batch of attempts: `verify(problem, completions) -> verdicts`.

Answer types (exact, numeric, regex, math, reasoning_gym) are plain functions of the text and run in the caller;
types that run untrusted code (code_io, code_functional, python) or call out (webhook) go to a VerifierPool, whose
processes run code only through the sandbox.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Sequence

from sdpo_core.problem import Problem
from sdpo_core.verifiers import Verdict, VerifyFn, verify_attempts
from workers.pool import VerifierPool

logger = logging.getLogger(__name__)

IN_PROCESS_TYPES = frozenset({"exact", "numeric", "regex", "math", "reasoning_gym"})
WORKERS_ENV = "SDPO_VERIFIER_WORKERS"

_shared: VerifierPool | None = None
_shared_lock = threading.Lock()


def verify_function(problem: Problem, *, pool: VerifierPool | None = None) -> VerifyFn:
    """The batch verify callable the loop uses for `problem`; `pool` defaults to one shared by the process."""
    if problem.verifier.type in IN_PROCESS_TYPES:
        return _in_process
    return (pool or shared_pool()).verify_batch


def _in_process(problem: Problem, completions: Sequence[str]) -> list[Verdict]:
    return verify_attempts(problem, completions)


def shared_pool() -> VerifierPool:
    """A process-wide pool, made on first use with SDPO_VERIFIER_WORKERS processes (default: one per core)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            workers = int(os.environ.get(WORKERS_ENV, "0")) or None
            _shared = VerifierPool(max_workers=workers)
            atexit.register(_shared.close)
        return _shared


def verify_answer(problem: Problem, answer: str) -> Verdict:
    """One verdict for one answer, with a pool of one process that is closed afterwards (the `sdpo verify` path)."""
    if problem.verifier.type in IN_PROCESS_TYPES:
        return verify_attempts(problem, [answer])[0]
    with VerifierPool(max_workers=1) as pool:
        return pool.verify_batch(problem, [answer])[0]
