"""Discovery statistics: how likely a method is to have found a verified solution within k attempts.

- best-of-k: the unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) from n i.i.d. samples with c successes
  (Chen et al. 2021). Beyond k = n the estimator does not exist; there the plug-in 1 - (1 - c/n)^k is used.
- sequential methods (SDPO, multi-turn): discovery@k = fraction of independent runs whose first verified solution
  came within k attempts (paper Def. 5.1). One run gives a step function.
- a set of problems: the average of the per-problem curves; confidence intervals by bootstrap over runs (one
  problem) or over problems (a set).

Pure Python, so the client SDK can use it without numpy.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

# Default best-of-k samples per attempt of budget: pass@k from n samples is 1 at k = n whenever one sample
# succeeded, so a baseline of exactly the budget says nothing at the budget. Twice the budget does.
BASELINE_SAMPLES_PER_BUDGET = 2


def default_baseline_samples(budget: int) -> int:
    """The most samples a baseline draws by default; it stops sooner once `baseline_settled`."""
    return BASELINE_SAMPLES_PER_BUDGET * budget


# A baseline stops drawing once the 90% interval of best-of-k's P(solved within the budget) is this narrow.
BASELINE_PRECISION = 0.10
BASELINE_CONFIDENCE = 0.9


def _binomial_pmfs(n: int, p: float, ks: range) -> list[float]:
    """P(X = k) for X ~ Binomial(n, p), 0 < p < 1, at each k of `ks` (through log-gamma: no overflow at large n)."""
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return [math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q) for k in ks]


def _binomial_tail(n: int, c: int, p: float) -> float:
    """P(X >= c) for X ~ Binomial(n, p)."""
    if c <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, sum(_binomial_pmfs(n, p, range(c, n + 1))))


@functools.lru_cache(maxsize=4096)  # a baseline asks after every step, and waiting jobs on every poll
def success_rate_interval(n: int, c: int, confidence: float = BASELINE_CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a per-sample success rate from c successes in n samples: it never
    collapses to a point, so 0 of 20 says "at most ~14%", not "0%"."""
    if n < 1:
        return 0.0, 1.0
    alpha = (1 - confidence) / 2

    def solve(c_tail: int, target: float) -> float:  # the p at which P(X >= c_tail) = target (increasing in p)
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _binomial_tail(n, c_tail, mid) < target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if c == 0 else solve(c, alpha)
    high = 1.0 if c == n else solve(c + 1, 1 - alpha)
    return low, high


def best_of_k_interval(n: int, c: int, k: int, confidence: float = BASELINE_CONFIDENCE) -> tuple[float, float]:
    """The interval of best-of-k's P(solved within k) = 1 - (1 - p)^k, from the exact interval of p."""
    low, high = success_rate_interval(n, c, confidence)
    return 1.0 - (1.0 - low) ** k, 1.0 - (1.0 - high) ** k


def baseline_settled(n: int, c: int, budget: int, precision: float = BASELINE_PRECISION) -> bool:
    """Whether n samples with c successes pin best-of-k's P(solved within `budget`) to an interval of at most
    `precision`: more samples would not change what the comparison says."""
    low, high = best_of_k_interval(n, c, budget)
    return n > 0 and high - low <= precision


class DiscoveryCurve(BaseModel):
    """discovery@k at the attempt counts `ks`, with a confidence band."""

    label: str
    ks: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    runs: int = Field(description="Independent runs (or samples for best-of-k) behind the curve.")
    confidence: float = 0.9

    def at(self, k: int) -> float:
        """The curve's value at k (the last point at or before k)."""
        i = bisect.bisect_right(self.ks, k) - 1
        return self.mean[i] if i >= 0 else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one success among k of n samples with c successes); unbiased for k <= n."""
    if not 0 <= c <= n or n < 1 or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, n >= 1 and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        return 1.0 - (1.0 - c / n) ** k
    if n - c < k:
        return 1.0
    # log C(n-c, k) - log C(n, k), in O(1) through log-gamma
    log_ratio = math.lgamma(n - c + 1) - math.lgamma(n - c - k + 1) - math.lgamma(n + 1) + math.lgamma(n - k + 1)
    return -math.expm1(log_ratio) + 0.0  # + 0.0 turns -0.0 into 0.0


def discovery_at_k(first_success: Sequence[int | None], k: int) -> float:
    """Fraction of runs that found a solution within k attempts (None = never found)."""
    if not first_success:
        raise ValueError("discovery_at_k needs at least one run")
    return sum(1 for t in first_success if t is not None and t <= k) / len(first_success)


def curve_grid(budget: int, points: int = 200) -> list[int]:
    """Attempt counts to evaluate a curve at: every k for small budgets, else a geometric grid ending at budget."""
    if budget <= points:
        return list(range(1, budget + 1))
    grid = {max(1, round(budget ** (i / (points - 1)))) for i in range(points)}
    return sorted(grid | {budget})


def _band(samples: list[list[float]], confidence: float) -> tuple[list[float], list[float]]:
    """Per-point percentile interval of bootstrap replicate curves."""
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    low, high = [], []
    for column in zip(*samples, strict=True):
        ordered = sorted(column)
        low.append(ordered[int(lo_q * (len(ordered) - 1))])
        high.append(ordered[math.ceil(hi_q * (len(ordered) - 1))])
    return low, high


def bootstrap_band(
    units: Sequence, curve: Callable[[Sequence], list[float]], *, n_boot: int = 1000, confidence: float = 0.9,
    seed: int = 0,
) -> tuple[list[float], list[float]]:
    """Percentile bootstrap band of `curve(units)`, resampling the units with replacement."""
    rng = random.Random(seed)
    replicates = [curve([units[rng.randrange(len(units))] for _ in units]) for _ in range(n_boot)]
    return _band(replicates, confidence)


def best_of_k_curve(
    outcomes: Sequence[bool], ks: Sequence[int], *, label: str = "best-of-k", n_boot: int = 1000,
    confidence: float = 0.9, seed: int = 0,
) -> DiscoveryCurve:
    """pass@k at `ks` from i.i.d. sample outcomes, with a bootstrap band over the samples."""

    @functools.cache
    def curve_for(n: int, c: int) -> tuple[float, ...]:
        return tuple(pass_at_k(n, c, k) for k in ks)

    # pass@k depends on a resample only through its success count, which is Binomial(n, c/n): drawing that count
    # is the same bootstrap as resampling the n outcomes, at a cost that does not grow with n.
    n, c = len(outcomes), sum(outcomes)
    rng = random.Random(seed)
    draw = _binomial_draw(n, c / n)
    low, high = _band([list(curve_for(n, draw(rng))) for _ in range(n_boot)], confidence)
    return DiscoveryCurve(
        label=label, ks=list(ks), mean=list(curve_for(n, c)), low=low, high=high, runs=n, confidence=confidence
    )


def _binomial_draw(n: int, p: float) -> Callable[[random.Random], int]:
    """A sampler of Binomial(n, p) by inverse CDF over mean +- 12 sd (the mass outside is below 1e-30)."""
    if p <= 0.0 or p >= 1.0:
        return lambda rng: round(n * p)
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    lo, hi = max(0, math.floor(mean - 12 * sd - 12)), min(n, math.ceil(mean + 12 * sd + 12))
    cdf = list(itertools.accumulate(_binomial_pmfs(n, p, range(lo, hi + 1))))
    total = cdf[-1]
    return lambda rng: lo + min(bisect.bisect_right(cdf, rng.random() * total), hi - lo)


def sequential_curve(
    first_success: Sequence[int | None], ks: Sequence[int], *, label: str, n_boot: int = 1000,
    confidence: float = 0.9, seed: int = 0,
) -> DiscoveryCurve:
    """discovery@k at `ks` from the first-success attempt of independent runs, bootstrap band over runs."""

    def curve(runs: Sequence[int | None]) -> list[float]:
        return [discovery_at_k(runs, k) for k in ks]

    low, high = bootstrap_band(list(first_success), curve, n_boot=n_boot, confidence=confidence, seed=seed)
    return DiscoveryCurve(
        label=label, ks=list(ks), mean=curve(first_success), low=low, high=high, runs=len(first_success),
        confidence=confidence,
    )


def average_curve(
    per_problem: Sequence[Callable[[int], float]], ks: Sequence[int], *, label: str, n_boot: int = 1000,
    confidence: float = 0.9, seed: int = 0,
) -> DiscoveryCurve:
    """The average over problems of per-problem discovery functions, bootstrap band over problems.

    Each function is evaluated at `ks` once and the replicates resample those rows: evaluating them again in every
    replicate (a pass@k per point, per problem, per replicate) cost seconds for a batch of a thousand problems."""
    rows = [tuple(f(k) for k in ks) for f in per_problem]

    def curve(problems: Sequence[tuple[float, ...]]) -> list[float]:
        return [sum(column) / len(problems) for column in zip(*problems, strict=True)]

    low, high = bootstrap_band(rows, curve, n_boot=n_boot, confidence=confidence, seed=seed)
    return DiscoveryCurve(
        label=label, ks=list(ks), mean=curve(rows), low=low, high=high, runs=len(rows), confidence=confidence,
    )


def attempts_to_reach(curve: Callable[[int], float], target: float, budget: int) -> int | None:
    """The fewest attempts k <= budget at which `curve(k) >= target` (curves are non-decreasing)."""
    if curve(budget) < target:
        return None
    lo, hi = 1, budget
    while lo < hi:
        mid = (lo + hi) // 2
        if curve(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def attempts_ratio(method: Callable[[int], float], baseline: Callable[[int], float], budget: int) -> float | None:
    """How many times fewer attempts `method` needs to reach the probability `baseline` reaches at `budget`.

    None when the baseline never succeeds within the budget, or the method does not reach its level.
    """
    target = baseline(budget)
    if target <= 0:
        return None
    needed = attempts_to_reach(method, target, budget)
    return budget / needed if needed else None


class Comparison(BaseModel):
    """A method's discovery curve against best-of-k under one budget."""

    budget: int
    curves: list[DiscoveryCurve]
    attempts_ratio: float | None = Field(
        description="Attempts best-of-k needs for its discovery probability at the budget, divided by the "
        "attempts the method needs for the same probability (None: undefined, see note)."
    )
    baseline_at_budget: float | None = None
    baseline_interval: tuple[float, float] | None = Field(
        default=None, description=f"The {BASELINE_CONFIDENCE:.0%} interval of best-of-k's P(solved within the "
        "budget) from its samples (exact binomial): wide when it rests on few samples.")
    baseline_samples: int = 0
    method_at_budget: float
    note: str


def compare_to_best_of_k(
    method: str, first_success: Sequence[int | None], baseline_outcomes: Sequence[bool], budget: int,
    *, first_step: int | None = None, n_boot: int = 1000, confidence: float = 0.9, seed: int = 0,
) -> Comparison:
    """discovery@k of `method` (independent runs) against pass@k of best-of-k from base-model samples.

    `first_step`: the attempts of a run's first step, sampled before any feedback or update exists. A run that
    solved there shows the base model's luck, not the method: if every solved run did, no ratio is claimed."""
    ks = curve_grid(budget)
    curves = [sequential_curve(first_success, ks, label=method, n_boot=n_boot, confidence=confidence, seed=seed)]
    method_at = discovery_at_k(first_success, budget)
    if not baseline_outcomes:
        return Comparison(budget=budget, curves=curves, attempts_ratio=None, method_at_budget=method_at,
                          note="no best-of-k samples to compare against")
    curves.append(best_of_k_curve(baseline_outcomes, ks, n_boot=n_boot, confidence=confidence, seed=seed))
    n, c = len(baseline_outcomes), sum(baseline_outcomes)
    baseline_at = pass_at_k(n, c, budget)
    interval = best_of_k_interval(n, c, budget)
    ratio = attempts_ratio(lambda k: discovery_at_k(first_success, k), lambda k: pass_at_k(n, c, k), budget)
    runs = f"{len(first_success)} run" + ("s" if len(first_success) > 1 else "")
    solved = [t for t in first_success if t is not None]
    lucky = [t for t in solved if first_step is not None and t <= first_step]
    if solved and len(lucky) == len(solved):
        ratio = None
        at = ", ".join(str(t) for t in lucky)
        note = (f"{method} ({runs}) solved only in the first step (attempt {at}), before any feedback or update: "
                f"that is the base model sampling, as best-of-k does; no ratio is claimed")
    elif c == 0:
        note = (f"best-of-k found no solution in {n} samples (its P@{budget} is at most {interval[1]:.2f}): the "
                "ratio is undefined")
    elif ratio is None:
        note = f"{method} ({runs}) did not reach best-of-k's {baseline_at:.2f} at {budget} attempts"
    else:
        note = f"{method} ({runs}) reaches best-of-k's P={baseline_at:.2f}@{budget} with {ratio:.2f}x fewer attempts"
    if lucky and len(lucky) < len(solved):
        note += f"; {len(lucky)} of {len(first_success)} runs solved in their first step, before any update"
    if len(first_success) == 1:
        note += "; one run is a step curve, not an estimate: run several seeds (sdpo bench discovery)"
    if budget > n:
        note += f"; best-of-k beyond {n} samples uses the plug-in 1-(1-c/n)^k"
    elif budget == n and c > 0:
        note += f"; pass@{n} from {n} samples is 1 whenever one succeeded: sample more than the budget"
    return Comparison(budget=budget, curves=curves, attempts_ratio=ratio, baseline_at_budget=baseline_at,
                      baseline_interval=interval, baseline_samples=n, method_at_budget=method_at, note=note)
