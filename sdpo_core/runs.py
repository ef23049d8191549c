"""Many discovery runs stepped together, and a method's comparison with best-of-k, assembled in one place.

    runs = DiscoveryRuns(engine)
    runs.add("job-1", comparison_runs(problem, settings, policy, baseline_samples=512, name="job-1", verify=verify))
    runs.add("job-2", {"run": ProblemRun(other_problem, other_settings, policy, name="job-2")})
    while runs.active:
        failures = runs.step()          # one generation batch for every live run: {group: exception} for faults
        for group in runs.finished:     # read the results, then free the adapters (policy and engine)
            ...
            runs.close(group)

A group is what its caller owns: a job's method run and its baseline run, or one benchmark run. A joint step that
raises is retried group by group, so a fault fails only the group at fault and the others advance. The worker,
`sdpo solve` and the benchmarks all schedule through this class: attempts of different problems share generation
batches, each run sampling with its own adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sdpo_core.engine import GenerationEngine
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import EventSink, ignore_events
from sdpo_core.settings import RunSettings
from sdpo_core.verifiers import VerifyFn, verify_attempts

log = logging.getLogger(__name__)
METHOD, BASELINE = "method", "baseline"  # the two runs of a comparison


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
class DiscoveryRuns:
    """Groups of runs stepped in shared generation batches; closing a group frees its adapters everywhere."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.groups: dict[str, dict[str, ProblemRun]] = {}

    def add(self, group: str, runs: Mapping[str, ProblemRun] | ProblemRun) -> None:
        assert group not in self.groups, f"group {group!r} is already running"
        self.groups[group] = dict(runs) if isinstance(runs, Mapping) else {"run": runs}

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

    def step(self, groups: Sequence[str] | None = None) -> dict[str, Exception]:
        """One step of every live run of `groups` (default: all), their attempts in one generation call.

        If that raises, each group steps alone to find the one at fault: the result maps each failed group to its
        exception, and the other groups have advanced."""
        chosen = list(self.active if groups is None else groups)
        try:
            run_step(self._live(chosen), self.engine)
            return {}
        except Exception as exc:  # noqa: BLE001 - find the group at fault
            if len(chosen) == 1:
                return {chosen[0]: exc}
            log.exception("a joint step of %d groups failed; stepping them one by one", len(chosen))
        failures: dict[str, Exception] = {}
        for group in chosen:
            try:
                run_step(self._live([group]), self.engine)
            except Exception as exc:  # noqa: BLE001 - this group's fault
                failures[group] = exc
        return failures

    def close(self, group: str) -> None:
        """Free the group's adapters in the policy and in the engine, and forget the group."""
        for run in self.groups.pop(group, {}).values():
            try:
                run.close()
                if run.adapter is not None:
                    self.engine.drop_adapter(run.adapter)
            except Exception:  # noqa: BLE001 - freeing one run must not stop the others
                log.exception("closing run %s failed", run.name)

    def close_all(self) -> None:
        for group in list(self.groups):
            self.close(group)

    def _live(self, groups: Sequence[str]) -> list[ProblemRun]:
        return [run for g in groups for run in self.groups[g].values() if not run.done]
