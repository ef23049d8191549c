"""`sdpo bench discovery`: every method against best-of-k on a problem family, per attempt, per second, per token.

For every problem:
- sequential methods (sdpo, auto, multi-turn, named SDPO variants): `seeds` independent runs each, stopped at the
  first solution; discovery over runs;
- best-of-k: `baseline_samples` i.i.d. samples of the frozen model: the unbiased pass@k estimator.
All runs of all problems share one engine and its generation batches, `concurrency` runs at a time. Each run pays
for what it used (loop.run_step: its share of a shared batch by generated tokens, its verification, its updates
and signals), so the three cost axes are measured in the same process:
- attempts: discovery@k;
- seconds: a sequential run's compute time to its first solution; best-of-k's seconds per sample times k;
- tokens: generated plus scored by updates (and auto's signal), the same way.
Reported per problem and averaged over problems (as the paper does): curves with 90% bootstrap bands (attempts),
mean cost to the first success (unsolved runs counted at their whole cost, the paper's Table 10 convention), and
per method and axis the ratio at matched discovery probability: the cost best-of-k needs to reach its own
P@budget divided by the cost the method needs to reach the same P, with a bootstrap interval over problems.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from sdpo_core.curves import (
    DiscoveryCurve,
    average_curve,
    best_of_k_curve,
    curve_grid,
    pass_at_k,
    sequential_curve,
)
from sdpo_core.engine import GenerationEngine
from sdpo_core.loop import ProblemRun
from sdpo_core.measure.plot import discovery_svg
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import EventSink, ignore_events
from sdpo_core.reprompt import multi_turn_prompt
from sdpo_core.runs import DiscoveryRuns, StepReport, baseline_settings
from sdpo_core.settings import RunSettings, SDPOSettings
from sdpo_core.verifiers import VerifyFn, verify_attempts

DATA = Path(__file__).parent.parent / "data"
FAMILIES = {"binary": DATA / "binary.jsonl", "informative": DATA / "informative.jsonl",
            "accumulate": DATA / "accumulate.jsonl"}
BUILTIN_SET = FAMILIES["binary"]
BASELINE_SEED = 10_000  # best-of-k samples are independent of the sequential runs (seeds 0..S-1)
BASELINE = "best-of-k"
Axis = Literal["attempts", "seconds", "tokens"]
AXES: tuple[Axis, ...] = ("attempts", "seconds", "tokens")


class MethodOutcome(BaseModel):
    """One method on one problem: per run its first success and costs (sequential), or sample outcomes (best-of-k)."""

    first_success: list[int | None] = []
    run_seconds: list[float] = []  # sequential: each run's whole cost (to its first success, or the budget)
    run_tokens: list[int] = []
    sample_solved: list[bool] = []
    seconds_per_sample: float = 0.0  # best-of-k
    tokens_per_sample: float = 0.0

    @property
    def is_baseline(self) -> bool:
        return bool(self.sample_solved)

    def _per_sample(self, axis: Axis) -> float:
        return {"attempts": 1.0, "seconds": self.seconds_per_sample, "tokens": self.tokens_per_sample}[axis]

    def _run_costs(self, axis: Axis) -> list[float]:
        if axis == "attempts":
            return [float(t) if t is not None else math.inf for t in self.first_success]
        costs = self.run_seconds if axis == "seconds" else self.run_tokens
        return [float(c) if t is not None else math.inf for t, c in zip(self.first_success, costs, strict=True)]

    def discovery(self, budget: int, axis: Axis = "attempts") -> Callable[[float], float]:
        """P(solved within cost c) on `axis`, best-of-k capped at `budget` samples."""
        if self.is_baseline:
            n, c, unit = len(self.sample_solved), sum(self.sample_solved), self._per_sample(axis)

            def baseline(cost: float) -> float:
                k = min(math.floor(cost / unit + 1e-9), budget) if unit > 0 else budget
                return pass_at_k(n, c, k) if k >= 1 else 0.0

            return baseline
        costs = sorted(self._run_costs(axis))
        return lambda cost: bisect.bisect_right(costs, cost) / len(costs)

    def breakpoints(self, budget: int, axis: Axis) -> list[float]:
        """The costs at which the discovery function can step up."""
        if self.is_baseline:
            unit = self._per_sample(axis)
            return [k * unit for k in range(1, budget + 1)]
        return sorted(c for c in self._run_costs(axis) if math.isfinite(c))

    def mean_cost_to_success(self, budget: int, axis: Axis = "attempts") -> float:
        """Expected cost to the first solution, truncated at the budget (Table 10's convention)."""
        if self.is_baseline:  # geometric with p = c/n, truncated: sum_{k=0}^{budget-1} P(T > k)
            p = sum(self.sample_solved) / len(self.sample_solved)
            return self._per_sample(axis) * sum((1 - p) ** k for k in range(budget))
        if axis == "attempts":
            return statistics.mean(t if t is not None else budget for t in self.first_success)
        return statistics.mean(self.run_seconds if axis == "seconds" else self.run_tokens)

    def mean_attempts_to_success(self, budget: int) -> float:
        return self.mean_cost_to_success(budget, "attempts")


class Ratio(BaseModel):
    """Cost best-of-k needs for its P@budget over the cost the method needs for the same P."""

    value: float | None
    ci: tuple[float, float] | None = None
    defined: float = 1.0  # share of bootstrap replicates in which the ratio exists


class ProblemReport(BaseModel):
    problem_id: str
    outcomes: dict[str, MethodOutcome]
    curves: list[DiscoveryCurve]
    mean_cost: dict[str, dict[str, float]]  # method -> axis -> mean cost to the first success
    ratios: dict[str, dict[str, float | None]]  # method -> axis -> ratio against best-of-k


class DiscoveryReport(BaseModel):
    family: str
    budget: int
    seeds: int
    baseline_samples: int
    methods: list[str]
    problems: list[ProblemReport]
    average_curves: list[DiscoveryCurve]
    mean_cost: dict[str, dict[str, float]]
    ratios: dict[str, dict[str, Ratio]]
    # method -> axis -> the same matched ratio against another reference method (`against`), e.g. the best
    # in-context arm: that method's cost for its own P@budget over the method's cost for the same P
    ratios_against: dict[str, dict[str, dict[str, Ratio]]] = {}
    max_prompt_tokens: int | None = None  # the in-context methods' context budget in this run, in tokens
    context_feedbacks: int | None = None  # or: each problem's budget holds this many of its feedbacks
    note: str

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "discovery.json").write_text(self.model_dump_json(indent=2))
        (out_dir / "discovery.svg").write_text(discovery_svg(
            self.average_curves, f"Discovery on {self.family}, averaged over {len(self.problems)} problems", self.note))
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


def family_name(path: str | Path | None) -> str:
    return str(path) if str(path) in FAMILIES else Path(path).stem if path else "binary"


def run_all(pending: list[Callable[[], ProblemRun]], engine: GenerationEngine, concurrency: int,
            on_progress: Callable[[], None]) -> list[ProblemRun]:
    """Start runs `concurrency` at a time (each made only when admitted: a run owns an adapter from its start, and
    every adapter loaded slows adding the next) and advance them through the one scheduler (sdpo_core.runs),
    their attempts sharing generation batches; free each (policy and engine) when done. Returns the runs in the
    order given. A run that raises fails the benchmark."""
    scheduler, waiting, started = DiscoveryRuns(engine), list(pending), []

    def admit() -> bool:
        while waiting and len(scheduler.active) < concurrency:
            started.append(waiting.pop(0)())
            scheduler.add(started[-1].name, started[-1])
        return bool(waiting)

    def after_step(report: StepReport) -> None:
        on_progress()
        for group in scheduler.finished:
            scheduler.close(group)

    scheduler.run_until_done(after_step, admit=admit)
    return started


def method_settings(settings: RunSettings, method: str, variants: dict[str, dict[str, Any]]) -> RunSettings:
    """A method by name: a built-in one, or a named variant {'method': ..., SDPO overrides} (default method sdpo)."""
    if method not in variants:
        return settings.model_copy(update={"method": method})
    overrides = dict(variants[method])
    base = overrides.pop("method", "sdpo")
    return settings.model_copy(update={"method": base, "sdpo": SDPOSettings(**{**settings.sdpo.model_dump(),
                                                                                **overrides})})


def bench_discovery(
    problems: Sequence[Problem], policy: LoraPolicy, engine: GenerationEngine, *, methods: Sequence[str],
    seeds: int, settings: RunSettings, baseline_samples: int, concurrency: int = 8, family: str = "problems",
    variants: dict[str, dict[str, Any]] | None = None,
    verify_for: Callable[[Problem], VerifyFn] = lambda problem: verify_attempts,
    on_progress: Callable[[], None] = lambda: None,
    on_event: EventSink = ignore_events, against: Sequence[str] = (), context_feedbacks: int | None = None,
) -> DiscoveryReport:
    """`context_feedbacks`: instead of settings.max_prompt_tokens, each problem's context budget holds that many of
    its own feedbacks (feedback_budget): the same share of the context whatever a problem's feedback length."""
    budget, variants = settings.max_attempts, variants or {}
    pending: list[tuple[tuple[str, str], Callable[[], ProblemRun]]] = []  # (problem, method) -> a run to start
    base_settings = settings
    for p in problems:
        verify = verify_for(p)  # each problem its own verifier (answer types in-process, code in the sandbox pool)
        if context_feedbacks is not None:
            settings = base_settings.model_copy(update={
                "max_prompt_tokens": feedback_budget(p, policy, verify, context_feedbacks)})
        for method in methods:
            if method == BASELINE:  # i.i.d. samples: big steps finish sooner, the estimate is the same
                cfg = baseline_settings(settings, baseline_samples, seed=BASELINE_SEED, attempts_per_step=min(
                    baseline_samples, max(settings.attempts_per_step, 64)))
                pending.append(((p.id, method), partial(ProblemRun, p, cfg, policy, name=f"{p.id}-bok",
                                                        verify=verify, on_event=on_event)))
            else:
                cfg = method_settings(settings, method, variants)
                pending += [((p.id, method), partial(ProblemRun, p, cfg.model_copy(update={"seed": seed}), policy,
                                                     name=f"{p.id}-{method}-{seed}", verify=verify,
                                                     on_event=on_event))
                            for seed in range(seeds)]
    finished = run_all([start for _, start in pending], engine, concurrency, on_progress)
    runs: dict[tuple[str, str], list[ProblemRun]] = {key: [] for key, _ in pending}
    for (key, _), run in zip(pending, finished, strict=True):
        runs[key].append(run)

    reports = []
    for p in problems:
        outcomes = {}
        for method in methods:
            results = [r.result() for r in runs[(p.id, method)]]
            if method == BASELINE:
                samples = results[0]
                outcomes[method] = MethodOutcome(
                    sample_solved=[a.solved for a in samples.attempts],
                    seconds_per_sample=samples.seconds / len(samples.attempts),
                    tokens_per_sample=samples.tokens / len(samples.attempts))
            else:
                outcomes[method] = MethodOutcome(first_success=[r.first_success_attempt for r in results],
                                                 run_seconds=[r.seconds for r in results],
                                                 run_tokens=[r.tokens for r in results])
        reports.append(problem_report(p.id, outcomes, budget))
    report = summarize(reports, list(methods), budget, seeds, baseline_samples, family, against=against)
    report.max_prompt_tokens = None if context_feedbacks is not None else base_settings.max_prompt_tokens
    report.context_feedbacks = context_feedbacks
    return report


FEEDBACK_SLACK_TOKENS = 16  # a later feedback a few tokens longer than the first still fits alone


def feedback_budget(problem: Problem, policy: LoraPolicy, verify: VerifyFn, feedbacks: int) -> int:
    """A context budget that holds `feedbacks` feedbacks of this problem: the multi-turn prompt's length with that
    many copies of the feedback on an empty answer (plus a little slack); at least the settings' minimum."""
    feedback = verify(problem, [""])[0].feedback or "x"
    ids = multi_turn_prompt(problem, policy.chat_ids, [feedback] * feedbacks, 10**9)
    return max(64, len(ids) + FEEDBACK_SLACK_TOKENS)


def problem_report(problem_id: str, outcomes: dict[str, MethodOutcome], budget: int) -> ProblemReport:
    ks = curve_grid(budget)
    curves = [best_of_k_curve(o.sample_solved, ks) if o.is_baseline else sequential_curve(o.first_success, ks, label=m)
              for m, o in outcomes.items()]
    ratios = {m: {axis: matched_ratio([o], [outcomes[BASELINE]], budget, axis) for axis in AXES}
              for m, o in outcomes.items() if not o.is_baseline and BASELINE in outcomes}
    return ProblemReport(problem_id=problem_id, outcomes=outcomes, curves=curves, ratios=ratios,
                         mean_cost={m: {axis: o.mean_cost_to_success(budget, axis) for axis in AXES}
                                    for m, o in outcomes.items()})


def cost_to_reach(per_problem: Sequence[Callable[[float], float]], breakpoints: Sequence[float],
                  target: float) -> float | None:
    """The least cost at which the average of the problems' discovery functions reaches `target`."""
    points = sorted(set(breakpoints))

    def average(cost: float) -> float:
        return sum(f(cost) for f in per_problem) / len(per_problem)

    lo, hi = 0, len(points)  # binary search: the average is non-decreasing in the cost
    while lo < hi:
        mid = (lo + hi) // 2
        if average(points[mid]) >= target - 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return points[lo] if lo < len(points) else None


def matched_ratio(method: Sequence[MethodOutcome], baseline: Sequence[MethodOutcome], budget: int,
                  axis: Axis) -> float | None:
    """The baseline's (best-of-k's, or another reference method's) cost for its (averaged) P@budget over the
    method's cost for the same P; None if undefined."""
    target = sum(b.discovery(budget)(budget) for b in baseline) / len(baseline)
    if target <= 0:
        return None
    base_cost = cost_to_reach([b.discovery(budget, axis) for b in baseline],
                              [c for b in baseline for c in b.breakpoints(budget, axis)], target)
    method_cost = cost_to_reach([m.discovery(budget, axis) for m in method],
                                [c for m in method for c in m.breakpoints(budget, axis)], target)
    return base_cost / method_cost if base_cost and method_cost else None


def summarize(reports: list[ProblemReport], methods: list[str], budget: int, seeds: int, baseline_samples: int,
              family: str = "problems", n_boot: int = 1000, against: Sequence[str] = ()) -> DiscoveryReport:
    """Average curves over problems, the matched ratios (against best-of-k, and against each method of `against`)
    with a bootstrap interval over problems, a note."""
    ks = curve_grid(budget)
    average = [average_curve([r.outcomes[m].discovery(budget) for r in reports], ks, label=m) for m in methods]
    rng = random.Random(0)
    samples = [[reports[rng.randrange(len(reports))] for _ in reports] for _ in range(n_boot)]
    ratios = ratio_table(reports, samples, methods, BASELINE, budget) if BASELINE in methods else {}
    others = {ref: ratio_table(reports, samples, methods, ref, budget)
              for ref in against if ref != BASELINE and ref in methods}
    mean_cost = {m: {axis: statistics.mean(r.mean_cost[m][axis] for r in reports) for axis in AXES} for m in methods}
    return DiscoveryReport(family=family, budget=budget, seeds=seeds, baseline_samples=baseline_samples,
                           methods=methods, problems=reports, average_curves=average, mean_cost=mean_cost,
                           ratios=ratios, ratios_against=others, note=_note(ratios, average, budget))


def ratio_table(reports: Sequence[ProblemReport], samples: Sequence[Sequence[ProblemReport]], methods: Sequence[str],
                reference: str, budget: int) -> dict[str, dict[str, Ratio]]:
    """Per method (but the reference) and axis: the matched ratio against `reference` over all problems, with its
    90% interval over the bootstrap `samples` of problems."""
    table: dict[str, dict[str, Ratio]] = {}
    for m in (m for m in methods if m != reference):
        table[m] = {}
        for axis in AXES:
            def ratio_of(sample: Sequence[ProblemReport], m: str = m, axis: Axis = axis) -> float | None:
                return matched_ratio([r.outcomes[m] for r in sample], [r.outcomes[reference] for r in sample],
                                     budget, axis)

            defined = sorted(r for r in (ratio_of(s) for s in samples) if r is not None)
            ci = (defined[int(0.05 * (len(defined) - 1))], defined[math.ceil(0.95 * (len(defined) - 1))]) \
                if defined else None
            table[m][axis] = Ratio(value=ratio_of(reports), ci=ci, defined=len(defined) / len(samples))
    return table


def _note(ratios: dict[str, dict[str, Ratio]], average: list[DiscoveryCurve], budget: int) -> str:
    by_label = {c.label: c for c in average}
    if BASELINE not in by_label:
        return "ratios need best-of-k among the methods"
    target = by_label[BASELINE].mean[-1]
    if target == 0:
        return "ratios undefined: best-of-k found no solution"
    parts = []
    for m, per_axis in ratios.items():
        r = per_axis["attempts"]
        if r.value is None:
            parts.append(f"{m} did not reach best-of-k's P={target:.2f} (it reached {by_label[m].mean[-1]:.2f})")
        else:
            s = per_axis["seconds"].value
            parts.append(f"{m} {r.value:.2f}x fewer attempts" + (f", {s:.2f}x fewer seconds" if s else ""))
    return f"to reach best-of-k's P={target:.2f}@{budget}: " + "; ".join(parts)
