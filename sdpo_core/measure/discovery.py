"""`sdpo bench discovery`: SDPO against best-of-k and multi-turn on a problem set, under one attempt budget.

For every problem:
- sdpo and multi-turn: `seeds` independent runs each (stop at the first solution): discovery@k over runs;
- best-of-k: `baseline_samples` i.i.d. samples of the frozen model: the unbiased pass@k estimator.
All runs of all problems go through one worker-style scheduler, `concurrency` runs at a time, their attempts
sharing generation batches. Reported, per problem and averaged over problems (as the paper does): the curves
with bootstrap confidence bands, the mean attempts to first success (unsolved runs counted at the budget, as
the paper's Table 10), and the attempts ratio at matched discovery probability with a bootstrap interval over
problems.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from sdpo_core.discovery import (
    DiscoveryCurve,
    attempts_ratio,
    average_curve,
    best_of_k_curve,
    curve_grid,
    discovery_at_k,
    pass_at_k,
    sequential_curve,
)
from sdpo_core.engine import GenerationEngine
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.measure.plot import discovery_svg
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import EventSink, ignore_events
from sdpo_core.settings import RunSettings
from sdpo_core.verifiers import VerifyFn, verify_attempts

DATA = Path(__file__).parent.parent / "data"
FAMILIES = {"binary": DATA / "hard_problems.jsonl", "informative": DATA / "informative.jsonl"}
BUILTIN_SET = FAMILIES["binary"]
BASELINE_SEED = 10_000  # best-of-k samples are independent of the sequential runs (seeds 0..S-1)


class MethodOutcome(BaseModel):
    """One method on one problem: first-success attempt per seed (sequential) or sample outcomes (best-of-k)."""

    first_success: list[int | None] = []
    sample_solved: list[bool] = []

    def discovery(self, budget: int) -> Callable[[int], float]:
        if self.sample_solved:
            n, c = len(self.sample_solved), sum(self.sample_solved)
            return lambda k: pass_at_k(n, c, min(k, budget))
        return lambda k: discovery_at_k(self.first_success, min(k, budget))

    def mean_attempts_to_success(self, budget: int) -> float:
        """Expected attempts to the first solution, truncated at the budget (Table 10's convention)."""
        if self.sample_solved:  # geometric with p = c/n, truncated: sum_{k=0}^{budget-1} P(T > k)
            p = sum(self.sample_solved) / len(self.sample_solved)
            return sum((1 - p) ** k for k in range(budget))
        return statistics.mean(t if t is not None else budget for t in self.first_success)


class ProblemReport(BaseModel):
    problem_id: str
    outcomes: dict[str, MethodOutcome]
    curves: list[DiscoveryCurve]
    mean_attempts: dict[str, float]
    attempts_ratio: float | None


class DiscoveryReport(BaseModel):
    budget: int
    seeds: int
    baseline_samples: int
    methods: list[str]
    problems: list[ProblemReport]
    average_curves: list[DiscoveryCurve]
    mean_attempts: dict[str, float]
    attempts_ratio: float | None
    attempts_ratio_ci: tuple[float, float] | None
    attempts_ratio_defined: float  # share of bootstrap replicates in which the ratio exists
    note: str

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "discovery.json").write_text(self.model_dump_json(indent=2))
        (out_dir / "discovery.svg").write_text(discovery_svg(self.average_curves, "Discovery, averaged over problems",
                                                             self.note))
        for p in self.problems:
            (out_dir / f"discovery-{p.problem_id}.svg").write_text(discovery_svg(p.curves, f"Discovery: {p.problem_id}"))


def load_problems(path: str | Path | None) -> list[Problem]:
    """Problems from a JSONL file (one Problem per line) or a built-in family by name (default: binary)."""
    lines = Path(FAMILIES.get(str(path), path) if path else BUILTIN_SET).read_text().splitlines()
    problems = [Problem.model_validate_json(line) for line in lines if line.strip()]
    for i, p in enumerate(problems):
        if p.id is None:
            problems[i] = p.model_copy(update={"id": f"problem-{i + 1}"})
    return problems


def run_all(runs: list[ProblemRun], engine: GenerationEngine, concurrency: int, on_progress: Callable[[], None]) -> None:
    """Advance runs `concurrency` at a time, their attempts sharing generation batches; free each when done."""
    waiting, active = list(runs), []
    while waiting or active:
        while waiting and len(active) < concurrency:
            active.append(waiting.pop(0))
        run_step(active, engine)
        on_progress()
        for run in [r for r in active if r.done]:
            run.close()
            active.remove(run)


def bench_discovery(
    problems: Sequence[Problem], policy: LoraPolicy, engine: GenerationEngine, *, methods: Sequence[str],
    seeds: int, settings: RunSettings, baseline_samples: int, concurrency: int = 8,
    verify_for: Callable[[Problem], VerifyFn] = lambda problem: verify_attempts,
    on_progress: Callable[[], None] = lambda: None,
    on_event: EventSink = ignore_events,
) -> DiscoveryReport:
    budget = settings.max_attempts
    runs: dict[tuple[str, str], list[ProblemRun]] = {}
    for p in problems:
        verify = verify_for(p)  # each problem its own verifier (answer types in-process, code in the sandbox pool)
        for method in methods:
            if method == "best-of-k":  # i.i.d. samples: big steps finish sooner, the estimate is the same
                cfg = settings.model_copy(update={
                    "method": method, "max_attempts": baseline_samples, "stop_at_first_success": False,
                    "seed": BASELINE_SEED, "attempts_per_step": min(baseline_samples, max(settings.attempts_per_step, 64)),
                })
                runs[(p.id, method)] = [ProblemRun(p, cfg, policy, name=f"{p.id}-bok", verify=verify,
                                                   on_event=on_event)]
            else:
                runs[(p.id, method)] = [
                    ProblemRun(p, settings.model_copy(update={"method": method, "seed": seed}), policy,
                               name=f"{p.id}-{method}-{seed}", verify=verify, on_event=on_event)
                    for seed in range(seeds)
                ]
    run_all([r for group in runs.values() for r in group], engine, concurrency, on_progress)

    ks = curve_grid(budget)
    reports = []
    for p in problems:
        outcomes = {}
        for method in methods:
            results = [r.result() for r in runs[(p.id, method)]]
            outcomes[method] = (MethodOutcome(sample_solved=[a.solved for a in results[0].attempts])
                                if method == "best-of-k" else
                                MethodOutcome(first_success=[r.first_success_attempt for r in results]))
        curves = [
            best_of_k_curve(o.sample_solved, ks) if m == "best-of-k" else sequential_curve(o.first_success, ks, label=m)
            for m, o in outcomes.items()
        ]
        ratio = (attempts_ratio(outcomes["sdpo"].discovery(budget), outcomes["best-of-k"].discovery(budget), budget)
                 if {"sdpo", "best-of-k"} <= outcomes.keys() else None)
        reports.append(ProblemReport(problem_id=p.id, outcomes=outcomes, curves=curves, attempts_ratio=ratio,
                                     mean_attempts={m: o.mean_attempts_to_success(budget) for m, o in outcomes.items()}))
    return summarize(reports, list(methods), budget, seeds, baseline_samples)


def summarize(reports: list[ProblemReport], methods: list[str], budget: int, seeds: int,
              baseline_samples: int, n_boot: int = 1000) -> DiscoveryReport:
    """Average curves over problems, and the attempts ratio with a bootstrap interval over problems."""
    ks = curve_grid(budget)
    average = [average_curve([r.outcomes[m].discovery(budget) for r in reports], ks, label=m) for m in methods]

    def ratio_of(sample: Sequence[ProblemReport]) -> float | None:
        if not {"sdpo", "best-of-k"} <= set(methods):
            return None
        sdpo = [r.outcomes["sdpo"].discovery(budget) for r in sample]
        bok = [r.outcomes["best-of-k"].discovery(budget) for r in sample]
        return attempts_ratio(lambda k: sum(f(k) for f in sdpo) / len(sdpo),
                              lambda k: sum(f(k) for f in bok) / len(bok), budget)

    ratio = ratio_of(reports)
    rng = random.Random(0)
    replicates = [ratio_of([reports[rng.randrange(len(reports))] for _ in reports]) for _ in range(n_boot)]
    defined = sorted(r for r in replicates if r is not None)
    ci = (defined[int(0.05 * (len(defined) - 1))], defined[int(0.95 * (len(defined) - 1))]) if defined else None
    mean_attempts = {m: statistics.mean(r.mean_attempts[m] for r in reports) for m in methods}
    by_label = {c.label: c for c in average}
    if ratio is None and {"sdpo", "best-of-k"} <= set(methods):
        target, reached = by_label["best-of-k"].mean[-1], by_label["sdpo"].mean[-1]
        note = ("attempts ratio undefined: best-of-k found no solution" if target == 0 else
                f"attempts ratio undefined: SDPO reached P={reached:.2f} at {budget} attempts, short of "
                f"best-of-k's P={target:.2f}")
    elif ratio is None:
        note = "attempts ratio needs both sdpo and best-of-k"
    else:
        note = f"SDPO needs {ratio:.2f}x fewer attempts than best-of-k for its P at {budget}"
        if ci:
            note += f" (90% CI {ci[0]:.2f}-{ci[1]:.2f} over problems)"
    return DiscoveryReport(
        budget=budget, seeds=seeds, baseline_samples=baseline_samples, methods=methods, problems=reports,
        average_curves=average, mean_attempts=mean_attempts, attempts_ratio=ratio, attempts_ratio_ci=ci,
        attempts_ratio_defined=len(defined) / n_boot, note=note,
    )

