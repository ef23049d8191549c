"""Verifier processes that check the attempts of a batch in parallel, in order, never in the caller.

The process that holds the model must not run verifiers of any type: their libraries parse untrusted text (a
user's regex can backtrack for ever, sympy can hang on a power tower) while holding the GIL, and code-running
types start sandboxes. Each verifier process is a fresh interpreter (spawned, not forked, so it holds no copy of
the model or CUDA state; ~0.3 s to start) that builds the verifier and calls it; code runs one level further
down, in the sandbox. A process that crashes or overruns its deadline is killed and replaced, and the attempt
gets reward 0 with feedback that says what happened. Messages cross as JSON, so a process can never make the
caller run code. The processes run at a lower CPU priority (`niceness`) than the model's threads.

Lanes: each job verifies on processes of its own (`lane=` its id; `max_workers` processes per lane, started when
first needed, stopped by `close_lane`). A tenant's verifier that sleeps, or a regex that backtracks for minutes,
holds only its own job's processes: another job's correct answers are never kept waiting by it, let alone scored
0. Calls without a lane share one. A call may carry a budget (seconds for the whole batch): attempts not verified
when it runs out are reported `not_run`, reward 0, never as wrong answers.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from sdpo_core.problem import Problem
from sdpo_core.verification.hardening import make_undumpable
from sdpo_core.verification.isolation import SandboxRefused
from sdpo_core.verification.settings import SandboxSettings, VerifierPoolSettings
from sdpo_core.verifiers import Verdict, VerdictStatus, Verifier, build_verifier, clip_feedback, verifier_failed

logger = logging.getLogger(__name__)

_CACHED_VERIFIERS = 8
_EXTRA_S = 30.0  # margin over a verifier's own worst case (and a fresh process's imports) before the pool gives up


def time_limit_s(problem: Problem) -> float:
    """How long the pool lets one verification of `problem` run: its spec's own worst case and a margin."""
    return problem.verifier.worst_case_seconds() + _EXTRA_S


def _broken(feedback: str, status: VerdictStatus = "error") -> Verdict:
    return verifier_failed(feedback, status)


class _WorkerProcess:
    """One verifier process, started on first use and again after it dies, is killed or failed to start."""

    def __init__(self, context: multiprocessing.context.SpawnContext, options: SandboxSettings | None,
                 niceness: int) -> None:
        self._context = context
        self._options = options
        self._niceness = niceness
        self._process: BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.closed = False  # its lane was closed: it starts no new process

    def verify(self, problem_json: str, completion: str, timeout_s: float) -> Verdict | None:
        """The verdict, or None when it did not come within `timeout_s` (the process is then stopped)."""
        if self.closed:
            return _broken("Not verified: the job's verification was stopped.", "not_run")
        try:
            conn = self._ensure_started()
        except OSError as exc:  # out of processes or memory: this attempt was not checked; the next call retries
            logger.warning("verifier pool: a verifier process could not start: %s", exc)
            return _broken(f"Not verified: the verifier process could not start ({exc}).", "not_run")
        try:
            conn.send_bytes(json.dumps([problem_json, completion]).encode())
            if not conn.poll(timeout_s):
                self.stop()
                return None
            reply = conn.recv_bytes()
        except (EOFError, OSError):
            exit_code = self._process.exitcode if self._process is not None else None
            self.stop()
            return _broken(f"The verifier process died (exit code {exit_code}) while checking this attempt.")
        try:
            return Verdict.model_validate_json(reply)
        except ValueError:
            return _broken("The verifier process sent an unreadable verdict.")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def _ensure_started(self) -> multiprocessing.connection.Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self.stop()
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(child, self._options, self._niceness), daemon=True)
        try:
            process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._process, self._conn = process, parent
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


class _Lane:
    """The processes of one lane, handed to the lane's verifying threads in turn."""

    def __init__(self, processes: list[_WorkerProcess]) -> None:
        self.processes = processes
        self.idle = _Handout(processes)

    def close(self) -> None:
        for process in self.processes:
            process.closed = True
            process.stop()


SHARED_LANE = "shared"


class VerifierPool:
    """`verify_batch(problem, completions, lane=...)`: the loop's verify callable, each lane on up to `max_workers`
    processes of its own.

    :param max_workers: processes per lane (default: one per core)
    :param task_timeout_s: longest one verification may take; None = from the verifier's own limits
        (time_limit_s), a number caps those
    :param niceness: added to the verifier processes' nice value (the model's threads come first)
    """

    def __init__(
        self,
        *,
        max_workers: int | None = None,
        task_timeout_s: float | None = None,
        sandbox: SandboxSettings | None = None,
        niceness: int = 10,
    ) -> None:
        self.max_workers = max_workers or os.cpu_count() or 2
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.task_timeout_s = task_timeout_s
        self.sandbox = sandbox  # None: each process reads SandboxSettings from the environment it inherits
        self._context = multiprocessing.get_context("spawn")
        self._niceness = niceness
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: VerifierPoolSettings, *, max_workers: int | None = None) -> VerifierPool:
        """The pool `settings` describe (`max_workers` overrides their process count)."""
        return cls(max_workers=max_workers or settings.verifier_workers or None,
                   task_timeout_s=settings.verify_attempt_timeout_s, sandbox=settings.sandbox)

    def _lane(self, name: str) -> _Lane:
        with self._lock:
            if name not in self._lanes:
                self._lanes[name] = _Lane([_WorkerProcess(self._context, self.sandbox, self._niceness)
                                           for _ in range(self.max_workers)])
            return self._lanes[name]

    @property
    def lanes(self) -> list[str]:
        with self._lock:
            return list(self._lanes)

    def process_ids(self, lane: str = SHARED_LANE) -> list[int]:
        """The pids of the lane's running verifier processes (for health probes and the isolation tests)."""
        return [p.pid for p in self._lane(lane).processes if p.pid is not None]

    def verify_batch(self, problem: Problem, completions: Sequence[str], *, budget_s: float | None = None,
                     lane: str = SHARED_LANE) -> list[Verdict]:
        """Verdicts for `completions` in their order, on `lane`'s processes; failures become reward 0 with
        feedback saying why.

        `budget_s` bounds the whole batch: what is not verified by then is `not_run`, with feedback saying so."""
        problem_json = problem.model_dump_json()
        timeout_s = min(time_limit_s(problem), self.task_timeout_s or float("inf"))
        deadline = None if budget_s is None else time.monotonic() + budget_s
        processes = self._lane(lane)
        todo: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        for item in enumerate(completions):
            todo.put(item)
        verdicts: list[Verdict | None] = [None] * len(completions)

        def drain() -> None:
            while True:
                try:
                    i, completion = todo.get_nowait()
                except queue.Empty:
                    return
                verdicts[i] = self._verify_one(processes, problem_json, completion, timeout_s, deadline, budget_s)

        threads = [threading.Thread(target=drain, name="verifier-pool", daemon=True)
                   for _ in range(min(len(completions), self.max_workers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        unverified = sum(v is not None and v.status == "not_run" for v in verdicts)
        if unverified:
            logger.warning("verifier pool: %d of %d attempts were not verified (budget %s s)", unverified,
                           len(completions), budget_s)
        return [v if v is not None else _broken("Verification failed.") for v in verdicts]

    def _verify_one(self, lane: _Lane, problem_json: str, completion: str, timeout_s: float,
                    deadline: float | None, budget_s: float | None) -> Verdict:
        worker = lane.idle.take(None if deadline is None else deadline - time.monotonic())
        if worker is None:
            return _out_of_budget(budget_s)
        try:
            limit = timeout_s
            if deadline is not None:
                limit = min(limit, max(deadline - time.monotonic(), 0.0))
            verdict = worker.verify(problem_json, completion, limit)
            if verdict is None:
                verdict = _out_of_budget(budget_s) if limit < timeout_s else _broken(
                    f"Verification did not finish within {timeout_s:g} s and was stopped.", "timeout")
        except Exception as exc:  # noqa: BLE001 - the pool outlives any one verification
            logger.exception("verifier pool: unexpected failure")
            verdict = _broken(f"Verification failed: {type(exc).__name__}: {exc}")
        finally:
            lane.idle.put(worker)
        return verdict.model_copy(update={"feedback": clip_feedback(verdict.feedback)})

    def close_lane(self, name: str) -> None:
        """Stop the lane's processes (its job ended); a verification still running on them ends as not run."""
        with self._lock:
            lane = self._lanes.pop(name, None)
        if lane is not None:
            lane.close()

    def close(self) -> None:
        with self._lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            lane.close()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Handout:
    """The idle processes, handed to waiting threads strictly in the order they asked (a thread that just gave one
    back cannot take it again ahead of the others), so concurrent batches take turns."""

    def __init__(self, workers: Sequence[_WorkerProcess]) -> None:
        self._lock = threading.Lock()
        self._free = list(workers)
        self._waiting: collections.deque[_Waiter] = collections.deque()

    def take(self, timeout_s: float | None) -> _WorkerProcess | None:
        """An idle process, waiting up to `timeout_s` (None: for ever); None when the time ran out."""
        with self._lock:
            if self._free and not self._waiting:
                return self._free.pop()
            waiter = _Waiter()
            self._waiting.append(waiter)
        if waiter.granted.wait(None if timeout_s is None else max(timeout_s, 0.0)):
            return waiter.worker
        with self._lock:
            if waiter.granted.is_set():  # handed over just as the wait ended
                return waiter.worker
            self._waiting.remove(waiter)
            return None

    def put(self, worker: _WorkerProcess) -> None:
        with self._lock:
            if self._waiting:
                waiter = self._waiting.popleft()
                waiter.worker = worker
                waiter.granted.set()
            else:
                self._free.append(worker)


class _Waiter:
    def __init__(self) -> None:
        self.granted = threading.Event()
        self.worker: _WorkerProcess | None = None


def _out_of_budget(budget_s: float | None) -> Verdict:
    return _broken(f"Not verified: the verification budget of this step ({budget_s:g} s) ran out before this "
                   "attempt was checked; whether it was right is unknown.", "not_run")


# ---------------------------------------------------------------------------------------------------------------
# Inside a worker process


def _serve(conn: multiprocessing.connection.Connection, options: SandboxSettings | None, niceness: int) -> None:
    """Answer verification requests until the pool closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if niceness:
        os.nice(niceness)  # the model's threads first; sandboxed programs inherit it
    make_undumpable()  # it inherited the worker's environment: keep it from processes of the same uid
    verifiers = _VerifierCache(options)
    while True:
        try:
            problem_json, completion = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            problem, verifier = verifiers.get(problem_json)
            verdict = verifier.verify(problem, completion)
        except SandboxRefused as exc:
            verdict = _broken(f"Not run: {exc}.")
        except Exception as exc:  # noqa: BLE001 - a verifier bug is reported on the attempt
            verdict = _broken(f"The verifier failed: {type(exc).__name__}: {exc}")
        conn.send_bytes(verdict.model_dump_json().encode())


class _VerifierCache:
    """Verifiers built in this worker, by problem, so a batch of one problem builds its verifier once."""

    def __init__(self, options: SandboxSettings | None) -> None:
        self._options = options
        self._sandbox: Any = None
        self._built: dict[str, tuple[Problem, Verifier]] = {}

    def get(self, problem_json: str) -> tuple[Problem, Verifier]:
        if problem_json not in self._built:
            problem = Problem.model_validate_json(problem_json)
            sandbox = self._sandbox_instance() if problem.verifier.runs_code else None
            if len(self._built) >= _CACHED_VERIFIERS:
                self._built.pop(next(iter(self._built)))
            self._built[problem_json] = (problem, build_verifier(problem.verifier, sandbox=sandbox))
        return self._built[problem_json]

    def _sandbox_instance(self) -> Any:
        if self._sandbox is None:
            from sdpo_core.verification.subprocess_sandbox import SubprocessSandbox

            self._sandbox = SubprocessSandbox(self._options)
        return self._sandbox
