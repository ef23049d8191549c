"""Many discovery runs stepped together, and a method's comparison with best-of-k, assembled in one place.

    runs = DiscoveryRuns(engine)
    runs.add("job-1", comparison_runs(problem, settings, policy, baseline_samples=512, name="job-1", verify=verify))
    runs.add("job-2", {"run": ProblemRun(other_problem, other_settings, policy, name="job-2")})
    runs.run_until_done(on_step)        # each step: one generation batch for every run not waiting for verdicts;
                                        # on_step(report) sees report.advanced (groups that finished a step)
    for group in runs.finished:         # read the results, then free the adapters (policy and engine)
        ...
        runs.close(group)

A group is what its caller owns: a job's method run and its baseline run, or one benchmark run. A joint generation
that raises is retried group by group, so a fault fails only the group at fault and the others advance; runs are
verified while the next batch samples, so no run waits for another's verifier. The worker,
`sdpo solve` and the benchmarks all schedule through this class: attempts of different problems share generation
batches, each run sampling with its own adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from sdpo_core.curves import baseline_settled
from sdpo_core.engine import Completion, GenerationEngine, GenerationRequest
from sdpo_core.failures import RunFailure
from sdpo_core.loop import GeneratedStep, ProblemRun, generate_steps
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import EventSink, ProgressEvent, ignore_events
from sdpo_core.settings import RunSettings
from sdpo_core.verifiers import VerifyFn, verify_attempts

log = logging.getLogger(__name__)
METHOD, BASELINE = "method", "baseline"  # the two runs of a comparison
VERIFYING_THREADS = 256  # each verifying run holds one (it waits on verifier processes, it does not compute)
IDLE_WAIT_S = 1.0  # a step with nothing to sample waits at most this long for verdicts, then returns


# ---- the comparison with best-of-k -------------------------------------------------------------------------------
def baseline_settings(settings: RunSettings, samples: int, *, seed: int | None = None,
                      attempts_per_step: int | None = None) -> RunSettings:
    """best-of-k samples of the frozen model that never stop early: the comparison's i.i.d. outcomes.

    `seed` and `attempts_per_step` default to the method's; a benchmark may take larger steps (the estimate is the
    same) and a seed apart from its sequential runs."""
    step = attempts_per_step or settings.attempts_per_step
    return settings.model_copy(update={
        "method": "best-of-k", "max_attempts": max(samples, step), "attempts_per_step": step,
        "stop_at_first_success": False, "seed": settings.seed if seed is None else seed,
    })


def baseline_key(problem: Problem, settings: RunSettings, model: str) -> str:
    """What a baseline's samples are samples of: the question and verifier (not the problem's label), the model
    and the sampling settings. Jobs with the same key may share their samples; a different seed is not a different
    distribution."""
    what = {"problem": problem.model_dump(mode="json", exclude={"id"}), "model": model,
            "temperature": settings.temperature, "max_new_tokens": settings.max_new_tokens}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def continuation_seed(key: str, drawn: int) -> int:
    """The seed of samples drawn after `drawn` earlier ones of `key`: a stream of its own, so that a continuation
    never repeats a sample (each attempt's stream is keyed by (seed, attempt index))."""
    return int(hashlib.sha256(f"{key}:{drawn}".encode()).hexdigest()[:15], 16)


def settle_when_enough(baseline: ProblemRun, budget: int) -> None:
    """End a best-of-k baseline run whose samples already pin best-of-k's P(solved within `budget`)."""
    if not baseline.done and baseline_settled(len(baseline.attempts), sum(a.solved for a in baseline.attempts),
                                              budget):
        baseline.settle()


def self_baseline(settings: RunSettings) -> bool:
    """A full-budget best-of-k run is its own baseline."""
    return settings.method == "best-of-k" and not settings.stop_at_first_success


def comparison_settings(settings: RunSettings, baseline_samples: int) -> dict[str, RunSettings]:
    """The settings of each run of a comparison: the method's and, unless it is its own baseline or
    `baseline_samples` is 0, the best-of-k baseline's."""
    wanted = {METHOD: settings}
    if baseline_samples > 0 and not self_baseline(settings):
        wanted[BASELINE] = baseline_settings(settings, baseline_samples)
    return wanted


def comparison_runs(
    problem: Problem, settings: RunSettings, policy: LoraPolicy, *, baseline_samples: int, name: str,
    verify: VerifyFn = verify_attempts, sink_for: Callable[[str], EventSink] = lambda key: ignore_events,
    states: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, ProblemRun]:
    """The method's run and, unless it is its own baseline or `baseline_samples` is 0, a best-of-k baseline run;
    fresh, or restored from checkpointed `states`. Adapter names: `name` and `name`-baseline."""
    wanted = comparison_settings(settings, baseline_samples)
    names = {METHOD: name, BASELINE: f"{name}-baseline"}
    runs: dict[str, ProblemRun] = {}
    try:
        for key, run_settings in wanted.items():
            options = {"name": names[key], "verify": verify, "on_event": sink_for(key)}
            if states and key in states:
                runs[key] = ProblemRun.restore(states[key], policy, **options)
            else:
                runs[key] = ProblemRun(problem, run_settings, policy, **options)
    except BaseException:
        for run in runs.values():
            run.close()
        raise
    return runs


def baseline_of(runs: Mapping[str, ProblemRun]) -> ProblemRun | None:
    """The run whose attempts are the best-of-k samples of a comparison, if it has one."""
    method = runs[METHOD]
    return runs.get(BASELINE) or (method if self_baseline(method.settings) else None)


# ---- stepping many runs together ---------------------------------------------------------------------------------
@dataclass
class StepReport:
    """What one DiscoveryRuns.step did: the groups with a run that finished a step (and those steps' events), and
    the groups that failed, each with its exception."""

    advanced: set[str] = field(default_factory=set)
    runs: set[int] = field(default_factory=set)  # id() of each run that finished a step
    events: list[ProgressEvent] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)


@dataclass
class _Verifying:
    group: str
    step: GeneratedStep
    verdicts: Future


@dataclass
class _Sampling:
    """A run's step sampled in pieces (chunk_attempts at a time): what it has so far."""

    group: str
    request: GenerationRequest  # the whole step
    deadline: float | None
    completions: list[Completion] = field(default_factory=list)
    seconds: float = 0.0

    def next_piece(self, chunk: int | None, should_stop: Callable[[], bool]) -> GenerationRequest:
        done = len(self.completions)
        indices = self.request.attempt_indices[done: done + chunk if chunk else None]
        return replace(self.request, attempt_indices=indices, should_stop=should_stop, stopped=False)


class DiscoveryRuns:
    """Groups of runs stepped in shared generation batches; closing a group frees its adapters everywhere.

    Verification runs beside generation, one thread per verifying run: a run whose verdicts are in takes its next
    step without waiting for other runs' verifiers (a tenant's slow verifier delays only its own job; the model
    samples while verifiers run). `patience_s` is how long a step waits for the verdicts of the attempts it
    sampled, so that runs verified quickly share the next batch (None: for all of them, so that every call advances
    every run by one step, as a trace wants). `chunk_attempts` bounds what one run adds to a generation call: a
    step of more attempts is sampled over several calls, so that a job of 1024 attempts a step does not hold every
    job sharing its batches for the whole of it. `step_seconds` bounds a step's generation: a run
    whose generation runs past it fails (RunFailure step_timeout); `stop(group)` ends a group's generation within a
    few tokens (its job was cancelled). A group's `background` runs (a job's best-of-k baseline) sample only in the
    room the others leave: up to `chunk_attempts` with them, or alone when no other run is ready."""

    def __init__(self, engine: GenerationEngine, *, patience_s: float | None = 1.0,
                 step_seconds: float | None = None, chunk_attempts: int | None = None) -> None:
        self.engine = engine
        self.patience_s, self.step_seconds, self.chunk_attempts = patience_s, step_seconds, chunk_attempts
        self.groups: dict[str, dict[str, ProblemRun]] = {}
        self._background: dict[str, frozenset[str]] = {}  # group -> keys of its background runs
        self._freed: set[int] = set()  # id(run) of runs closed before their group
        self._sampling: dict[int, _Sampling] = {}  # by id(run): a step sampled in pieces
        self._verifying: dict[int, _Verifying] = {}  # by id(run)
        self._stopping: set[str] = set()  # groups whose generation must stop (read from the generation thread)
        self._threads = ThreadPoolExecutor(max_workers=VERIFYING_THREADS, thread_name_prefix="verify")

    def add(self, group: str, runs: dict[str, ProblemRun] | ProblemRun, *, background: Sequence[str] = ()) -> None:
        """Step `runs` as one group. A dict is kept, not copied: a run its owner adds later (a baseline that starts
        drawing) is stepped too; keys in `background` are sampled at lower priority."""
        assert group not in self.groups, f"group {group!r} is already running"
        self.groups[group] = runs if isinstance(runs, dict) else {"run": runs}
        self._background[group] = frozenset(background)

    def runs(self, group: str) -> dict[str, ProblemRun]:
        return self.groups[group]

    @property
    def active(self) -> list[str]:
        """Groups with a run still going."""
        return [g for g, runs in self.groups.items() if any(not run.done for run in runs.values())]

    @property
    def finished(self) -> list[str]:
        """Groups whose runs have all ended (not yet closed)."""
        return [g for g, runs in self.groups.items() if all(run.done for run in runs.values())]

    def stop(self, group: str) -> None:
        """End the group's generation now (its attempts in flight are dropped); thread-safe."""
        self._stopping.add(group)

    def step(self, groups: Sequence[str] | None = None) -> StepReport:
        """Sample the next step of every run of `groups` (default: all) that is not waiting for its verdicts, in one
        generation call, and finish every run whose verdicts are in. If the joint generation raises, each group
        samples alone to find the one at fault; a group whose step raises fails alone: the others advance."""
        chosen = [g for g in (self.active if groups is None else groups) if g in self.groups]
        report = StepReport()
        ready = self._pieces(chosen)
        if ready:
            started = self._generate(ready, report)
            wait(started, timeout=self.patience_s)
        else:
            waiting = [v.verdicts for v in self._verifying.values() if v.group in chosen]
            if waiting:
                wait(waiting, timeout=IDLE_WAIT_S, return_when=FIRST_COMPLETED)
        self._finish_verified(chosen, report)
        return report

    def run_until_done(self, on_step: Callable[[StepReport], None] = lambda report: None, *,
                       admit: Callable[[], bool] = lambda: False) -> None:
        """Step every group to its end: how `sdpo solve`, the benchmarks and the tests drive runs. `admit` is
        called before each step to add groups (a benchmark's next runs, as room frees up) and says whether it still
        has some to add; `on_step` sees each step's report. The first failure is raised: the worker, which must
        outlive a job's fault and never ends, steps through `step` itself."""
        while admit() or self.active:
            report = self.step()
            if report.failures:
                raise next(iter(report.failures.values()))
            on_step(report)

    def _pieces(self, chosen: Sequence[str]) -> list[tuple[str, ProblemRun, GenerationRequest]]:
        """The next piece of every ready run's step: foreground runs first, then background runs in the room left
        under `chunk_attempts` (all of it when no foreground run is ready)."""
        foreground, background = [], []
        for g in chosen:
            for key, run in self.groups[g].items():
                if not run.done and id(run) not in self._verifying:
                    (background if key in self._background[g] else foreground).append((g, run))
        pieces = []
        for g, run in foreground:
            if (sampling := self._sampling_of(g, run)) is not None:
                pieces.append((g, run, sampling.next_piece(self.chunk_attempts, self._stop_check(g, sampling.deadline))))
        room = None if not pieces else (self.chunk_attempts or 0) - sum(len(p.attempt_indices) for *_, p in pieces)
        for g, run in background:
            if room is not None and room <= 0:
                break
            if (sampling := self._sampling_of(g, run, timed=False)) is not None:
                chunk = self.chunk_attempts if room is None else room  # room never exceeds chunk_attempts
                piece = sampling.next_piece(chunk, self._stop_check(g, None))
                pieces.append((g, run, piece))
                room = None if room is None else room - len(piece.attempt_indices)
        return pieces

    def _sampling_of(self, group: str, run: ProblemRun, *, timed: bool = True) -> _Sampling | None:
        """The step the run is sampling: the one begun, or its next one (its wall clock starts now, unless it is
        a background run's, whose pieces wait for room)."""
        if id(run) not in self._sampling:
            request = run.next_request()
            if request is None:
                return None
            deadline = None if self.step_seconds is None or not timed else time.monotonic() + self.step_seconds
            self._sampling[id(run)] = _Sampling(group, request, deadline)
        return self._sampling[id(run)]

    def _generate(self, ready: list[tuple[str, ProblemRun, GenerationRequest]], report: StepReport) -> list[Future]:
        """Sample a piece of each ready run's step; start verifying the steps that are whole. Returns the
        verifications started."""
        try:
            steps = generate_steps([(run, request) for _, run, request in ready], self.engine)
            groups = [group for group, _, _ in ready]
        except Exception as exc:  # noqa: BLE001 - find the group at fault
            by_group: dict[str, list] = {}
            for item in ready:
                by_group.setdefault(item[0], []).append(item)
            if len(by_group) == 1:
                report.failures[ready[0][0]] = exc
                return []
            log.exception("a joint generation of %d groups failed; sampling them one by one", len(by_group))
            steps, groups = [], []
            for group, items in by_group.items():
                try:
                    steps += generate_steps([(run, request) for _, run, request in items], self.engine)
                    groups += [group] * len(items)
                except Exception as group_exc:  # noqa: BLE001 - this group's fault
                    report.failures[group] = group_exc
        started = []
        for group, piece in zip(groups, steps, strict=True):
            sampling = self._sampling[id(piece.run)]
            if piece.request.stopped:  # cancelled (the caller ends the run) or past its wall clock
                del self._sampling[id(piece.run)]
                past_clock = sampling.deadline is not None and time.monotonic() > sampling.deadline
                if past_clock and group not in self._stopping:
                    report.failures[group] = step_timeout(piece.run, self.step_seconds)
                continue
            sampling.completions += piece.completions
            sampling.seconds += piece.generate_seconds
            if len(sampling.completions) < sampling.request.n:
                continue  # more pieces to sample
            del self._sampling[id(piece.run)]
            step = GeneratedStep(piece.run, sampling.request, sampling.completions, sampling.seconds)
            future = self._threads.submit(step.run.verify_step, step.completions)
            self._verifying[id(step.run)] = _Verifying(group, step, future)
            started.append(future)
        for failed in report.failures:  # a group that failed samples nothing more
            for run in self.groups[failed].values():
                self._sampling.pop(id(run), None)
        return started

    def _stop_check(self, group: str, deadline: float | None) -> Callable[[], bool]:
        return lambda: group in self._stopping or (deadline is not None and time.monotonic() > deadline)

    def _finish_verified(self, chosen: Sequence[str], report: StepReport) -> None:
        for key, verifying in list(self._verifying.items()):
            if verifying.group not in chosen or not verifying.verdicts.done():
                continue
            del self._verifying[key]
            if verifying.step.run.done or verifying.group in report.failures:
                continue  # cancelled meanwhile, or its group failed: the step is dropped
            try:
                report.events.append(verifying.step.finish(self.engine, verifying.verdicts.result()))
                report.advanced.add(verifying.group)
                report.runs.add(id(verifying.step.run))
            except Exception as exc:  # noqa: BLE001 - this group's fault
                report.failures[verifying.group] = exc

    def close(self, group: str) -> None:
        """Free the group's adapters in the policy and in the engine, and forget the group (a verification still
        running for it is ignored when it ends)."""
        runs = self.groups.pop(group, {})
        for run in runs.values():
            self._free(run)
            self._freed.discard(id(run))
        self._stopping.discard(group)
        self._background.pop(group, None)

    def free(self, group: str, key: str) -> None:
        """Free one run's adapter and state before its group ends (a job's method is over, its baseline goes on);
        the run stays in the group, finished."""
        run = self.groups[group][key]
        run.cancel()  # a finished run stays finished; a running one samples no more
        self._free(run)

    def _free(self, run: ProblemRun) -> None:
        self._verifying.pop(id(run), None)
        self._sampling.pop(id(run), None)
        if id(run) in self._freed:
            return
        self._freed.add(id(run))
        try:
            adapter = run.adapter
            run.close()
            if adapter is not None:
                self.engine.drop_adapter(adapter)
        except Exception:  # noqa: BLE001 - freeing one run must not stop the others
            log.exception("closing run %s failed", run.name)

    def close_all(self) -> None:
        for group in list(self.groups):
            self.close(group)


def step_timeout(run: ProblemRun, seconds: float | None) -> RunFailure:
    settings = run.settings
    return RunFailure("step_timeout", f"a step's generation ran past the worker's limit of {seconds:g} s and was "
                      f"stopped; lower settings.attempts_per_step ({settings.attempts_per_step}) or "
                      f"settings.max_new_tokens ({settings.max_new_tokens})")
