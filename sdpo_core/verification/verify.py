"""How a worker (or `sdpo solve`) verifies a batch of attempts: `verify(problem, completions) -> verdicts`.

Every verifier type runs in a VerifierPool process under a hard time limit, never in the caller: answer types parse
untrusted text with user-supplied patterns (a backtracking regex or a sympy power tower holds the GIL, so in the
worker it would stall generation and the lease heartbeat alike), code-running types start sandboxes, webhooks wait
on the network. A type that runs code is refused up front where the sandbox is below SDPO_SANDBOX_MIN_ISOLATION
(sdpo_core/verification/isolation.py). Operator settings (environment):

    SDPO_VERIFIER_WORKERS          processes of each lane of the shared pool (default: one per core); a worker
                                   gives each job a lane of its own
    SDPO_VERIFY_ATTEMPT_TIMEOUT_S  cap on one verification (default: from the verifier's own limits)
    SDPO_VERIFY_STEP_BUDGET_S      budget of one job's step (default 600): attempts not verified by then are
                                   `not_run` and say so, so a slow verifier cannot hold its batch for hours
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading

from sdpo_core.problem import Problem
from sdpo_core.verification.isolation import SandboxOptions, checked_isolation
from sdpo_core.verification.pool import SHARED_LANE, VerifierPool
from sdpo_core.verifiers import Verdict, VerifyFn

logger = logging.getLogger(__name__)

WORKERS_ENV = "SDPO_VERIFIER_WORKERS"
ATTEMPT_TIMEOUT_ENV = "SDPO_VERIFY_ATTEMPT_TIMEOUT_S"
STEP_BUDGET_ENV = "SDPO_VERIFY_STEP_BUDGET_S"
DEFAULT_STEP_BUDGET_S = 600.0

_shared: VerifierPool | None = None
_shared_lock = threading.Lock()


def _seconds(name: str, default: float | None) -> float | None:
    value = os.environ.get(name)
    if not value:
        return default
    seconds = float(value)
    if seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds


def verify_function(problem: Problem, *, pool: VerifierPool | None = None, lane: str = SHARED_LANE) -> VerifyFn:
    """The batch verify callable the loop uses for `problem`: the pool's, on `lane` (a worker gives each job its
    own, `close_lane` when the job leaves), with the step budget.

    For a type that runs code, SandboxRefused (logged) when this machine's sandbox is below the required isolation:
    the job fails with that message before any of its code runs."""
    if problem.verifier.runs_code:
        checked_isolation(SandboxOptions.from_env())
    pool = pool or shared_pool()
    return functools.partial(pool.verify_batch, budget_s=_seconds(STEP_BUDGET_ENV, DEFAULT_STEP_BUDGET_S),
                             lane=lane)


def shared_pool() -> VerifierPool:
    """A process-wide pool, made on first use with SDPO_VERIFIER_WORKERS processes per lane (default: one per
    core)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            workers = int(os.environ.get(WORKERS_ENV, "0")) or None
            _shared = VerifierPool(max_workers=workers, task_timeout_s=_seconds(ATTEMPT_TIMEOUT_ENV, None))
            atexit.register(_shared.close)
        return _shared


def verify_answer(problem: Problem, answer: str) -> Verdict:
    """One verdict for one answer, with a pool of one process that is closed afterwards (the `sdpo verify` path)."""
    with VerifierPool(max_workers=1, task_timeout_s=_seconds(ATTEMPT_TIMEOUT_ENV, None)) as pool:
        return pool.verify_batch(problem, [answer])[0]
