"""A pool of verifier processes that checks the attempts of one batch in parallel, in order, never in the caller.

The process that holds the model must not run verifiers: their libraries parse untrusted text (sympy can hang),
and code-running types start sandboxes. Each worker is a fresh interpreter (spawned, not forked, so it holds no
copy of the model or CUDA state) that builds the verifier and calls it; code runs one level further down, in the
sandbox. A worker that crashes or overruns its deadline is killed and replaced, and the attempt gets reward 0
with feedback that says what happened. Messages cross as JSON, so a worker can never make the caller run code.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from sdpo_core.problem import Problem
from sdpo_core.verifiers import (
    SANDBOXED_TYPES,
    CodeFunctionalSpec,
    CodeIOSpec,
    MathSpec,
    PythonSpec,
    Verdict,
    VerdictStatus,
    Verifier,
    WebhookSpec,
    build_verifier,
    clip_feedback,
    verifier_failed,
)
from workers.isolation import SandboxOptions

logger = logging.getLogger(__name__)

_CACHED_VERIFIERS = 8
_EXTRA_S = 30.0  # margin over a verifier's own worst case before the pool gives up on it


def worst_case_seconds(problem: Problem) -> float:
    """How long one verification of `problem` may legitimately take, from its verifier's own limits."""
    spec = problem.verifier
    if isinstance(spec, CodeIOSpec):
        tests = len(spec.public_tests) + len(spec.hidden_tests)
        return tests * (spec.time_limit_s + 1.0) * 1.5 + _EXTRA_S
    if isinstance(spec, CodeFunctionalSpec | PythonSpec):
        return spec.timeout_s * 1.5 + 5.0 + _EXTRA_S
    if isinstance(spec, WebhookSpec):
        return (spec.max_retries + 1) * (spec.timeout_s + 2.0**spec.max_retries) + _EXTRA_S
    if isinstance(spec, MathSpec):
        return 4.0 * spec.timeout_s + _EXTRA_S
    return 60.0 + _EXTRA_S


def _broken(feedback: str, status: VerdictStatus = "error") -> Verdict:
    return verifier_failed(feedback, status)


class _WorkerProcess:
    """One verifier process, started on first use and again after it dies or is killed."""

    def __init__(self, context: multiprocessing.context.SpawnContext, options: SandboxOptions | None) -> None:
        self._context = context
        self._options = options
        self._process: BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None

    def verify(self, problem_json: str, completion: str, timeout_s: float) -> Verdict:
        conn = self._ensure_started()
        try:
            conn.send_bytes(json.dumps([problem_json, completion]).encode())
            if not conn.poll(timeout_s):
                self.stop()
                return _broken(f"Verification did not finish within {timeout_s:g} s and was stopped.", "timeout")
            reply = conn.recv_bytes()
        except (EOFError, OSError):
            exit_code = self._process.exitcode if self._process is not None else None
            self.stop()
            return _broken(f"The verifier process died (exit code {exit_code}) while checking this attempt.")
        try:
            return Verdict.model_validate_json(reply)
        except ValueError:
            return _broken("The verifier process sent an unreadable verdict.")

    def _ensure_started(self) -> multiprocessing.connection.Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self.stop()
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self._options), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        return parent

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=10)
            self._process = None


class VerifierPool:
    """`verify_batch(problem, completions)`: the loop's verify callable, run on up to `max_workers` processes."""

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        task_timeout_s: float | None = None,
        sandbox_options: SandboxOptions | None = None,
    ) -> None:
        self.max_workers = max_workers or os.cpu_count() or 2
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.task_timeout_s = task_timeout_s  # None: from the verifier's own limits (worst_case_seconds)
        context = multiprocessing.get_context("spawn")
        self._idle: queue.LifoQueue[_WorkerProcess] = queue.LifoQueue()
        self._workers = [_WorkerProcess(context, sandbox_options) for _ in range(self.max_workers)]
        for worker in self._workers:
            self._idle.put(worker)
        self._threads = ThreadPoolExecutor(self.max_workers, thread_name_prefix="verifier-pool")

    def verify_batch(self, problem: Problem, completions: Sequence[str]) -> list[Verdict]:
        """Verdicts for `completions` in their order; failures become reward 0 with feedback saying why."""
        problem_json = problem.model_dump_json()
        timeout_s = self.task_timeout_s or worst_case_seconds(problem)
        futures = [self._threads.submit(self._verify_one, problem_json, c, timeout_s) for c in completions]
        return [future.result() for future in futures]

    def _verify_one(self, problem_json: str, completion: str, timeout_s: float) -> Verdict:
        worker = self._idle.get()
        try:
            verdict = worker.verify(problem_json, completion, timeout_s)
        except Exception as exc:  # noqa: BLE001 - the pool outlives any one verification
            logger.exception("verifier pool: unexpected failure")
            verdict = _broken(f"Verification failed: {type(exc).__name__}: {exc}")
        finally:
            self._idle.put(worker)
        return verdict.model_copy(update={"feedback": clip_feedback(verdict.feedback)})

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            worker.stop()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Inside a worker process


def _serve(conn: multiprocessing.connection.Connection, options: SandboxOptions | None) -> None:
    """Answer verification requests until the pool closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    verifiers = _VerifierCache(options)
    while True:
        try:
            problem_json, completion = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            problem, verifier = verifiers.get(problem_json)
            verdict = verifier.verify(problem, completion)
        except Exception as exc:  # noqa: BLE001 - a verifier bug is reported on the attempt
            verdict = _broken(f"The verifier failed: {type(exc).__name__}: {exc}")
        conn.send_bytes(verdict.model_dump_json().encode())


class _VerifierCache:
    """Verifiers built in this worker, by problem, so a batch of one problem builds its verifier once."""

    def __init__(self, options: SandboxOptions | None) -> None:
        self._options = options
        self._sandbox: Any = None
        self._built: dict[str, tuple[Problem, Verifier]] = {}

    def get(self, problem_json: str) -> tuple[Problem, Verifier]:
        if problem_json not in self._built:
            problem = Problem.model_validate_json(problem_json)
            sandbox = self._sandbox_instance() if problem.verifier.type in SANDBOXED_TYPES else None
            if len(self._built) >= _CACHED_VERIFIERS:
                self._built.pop(next(iter(self._built)))
            self._built[problem_json] = (problem, build_verifier(problem.verifier, sandbox=sandbox))
        return self._built[problem_json]

    def _sandbox_instance(self) -> Any:
        if self._sandbox is None:
            from workers.sandbox import SubprocessSandbox

            self._sandbox = SubprocessSandbox(self._options)
        return self._sandbox
