"""How a worker (or `sdpo solve`, `sdpo verify`) verifies a batch of attempts: `verify(problem, completions) -> verdicts`.

Every verifier type runs in a VerifierPool process under a hard time limit, never in the caller: answer types parse
untrusted text with user-supplied patterns (a backtracking regex or a sympy power tower holds the GIL, so in the
worker it would stall generation and the lease heartbeat alike), code-running types start sandboxes, webhooks wait
on the network. A type that runs code is refused up front where the sandbox is below its settings' min_isolation
(isolation.py). The pool's size, time limits and sandbox are VerifierPoolSettings (settings.py): a worker's come
from its WorkerSettings, everyone else's from the environment.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading

from sdpo_core.problem import Problem
from sdpo_core.verification.isolation import checked_isolation
from sdpo_core.verification.pool import SHARED_LANE, VerifierPool
from sdpo_core.verification.settings import SandboxSettings, VerifierPoolSettings
from sdpo_core.verifiers import Verdict, VerifyFn

logger = logging.getLogger(__name__)

DEFAULT_STEP_BUDGET_S = VerifierPoolSettings.model_fields["verify_step_budget_s"].default

_shared: VerifierPool | None = None
_shared_settings: VerifierPoolSettings | None = None
_shared_lock = threading.Lock()


def verify_function(problem: Problem, *, pool: VerifierPool | None = None, lane: str = SHARED_LANE,
                    settings: VerifierPoolSettings | None = None) -> VerifyFn:
    """The batch verify callable the loop uses for `problem`: the pool's (default: the shared one), on `lane` (a
    worker gives each job its own, `close_lane` when the job leaves), with the step budget of `settings` (default:
    the shared pool's, else the environment's).

    For a type that runs code, SandboxRefused (logged) when this machine's sandbox is below the required isolation:
    the job fails with that message before any of its code runs."""
    if pool is None:
        pool = shared_pool(settings)
        settings = settings or _shared_settings
    settings = settings or VerifierPoolSettings()
    if problem.verifier.runs_code:
        checked_isolation(pool.sandbox or SandboxSettings())
    return functools.partial(pool.verify_batch, budget_s=settings.verify_step_budget_s, lane=lane)


def shared_pool(settings: VerifierPoolSettings | None = None) -> VerifierPool:
    """A process-wide pool, made on first use from `settings` (default: the environment); later calls get the same
    pool whatever they pass."""
    global _shared, _shared_settings
    with _shared_lock:
        if _shared is None:
            _shared_settings = settings or VerifierPoolSettings()
            _shared = VerifierPool.from_settings(_shared_settings)
            atexit.register(_shared.close)
        return _shared


def verify_answer(problem: Problem, answer: str, settings: VerifierPoolSettings | None = None) -> Verdict:
    """One verdict for one answer, with a pool of one process that is closed afterwards (the `sdpo verify` path)."""
    with VerifierPool.from_settings(settings or VerifierPoolSettings(), max_workers=1) as pool:
        return pool.verify_batch(problem, [answer])[0]
