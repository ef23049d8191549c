"""Discovery statistics: pass@k against brute-force enumeration, discovery@k, bootstrap, attempts ratio."""

import itertools
import math

import pytest

from sdpo_core.curves import (
    attempts_ratio,
    attempts_to_reach,
    average_curve,
    best_of_k_curve,
    compare_to_best_of_k,
    curve_grid,
    discovery_at_k,
    pass_at_k,
    sequential_curve,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_beyond_n_uses_plug_in():
    assert pass_at_k(3000, 3, 1) == pytest.approx(0.001)
    assert 0 < pass_at_k(3000, 1, 2750) < 1
    assert pass_at_k(10, 2, 20) == pytest.approx(1 - 0.8**20)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_discovery_at_k_counts_runs_found_within_k():
    runs = [3, None, 10, 1]
    assert [discovery_at_k(runs, k) for k in (1, 2, 3, 9, 10, 100)] == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75]


def test_sequential_curve_and_bootstrap_band_contain_the_mean():
    runs = [5, 17, None, 40, 2, None, 9]
    ks = curve_grid(64)
    curve = sequential_curve(runs, ks, label="sdpo", n_boot=300, seed=1)
    assert curve.mean == [discovery_at_k(runs, k) for k in ks]
    assert all(lo <= m <= hi for lo, m, hi in zip(curve.low, curve.mean, curve.high))
    assert curve.low[-1] < curve.mean[-1] < curve.high[-1]  # 5/7 with 7 runs has real uncertainty
    assert all(a <= b for a, b in zip(curve.mean, curve.mean[1:]))


def test_bootstrap_band_narrows_with_more_samples():
    ks = [1, 10]
    small = best_of_k_curve([i % 10 == 0 for i in range(50)], ks, n_boot=400)
    large = best_of_k_curve([i % 10 == 0 for i in range(5000)], ks, n_boot=400)
    assert (large.high[0] - large.low[0]) < (small.high[0] - small.low[0]) / 3
    assert large.mean[0] == pytest.approx(0.1)


def test_average_curve_over_problems():
    per_problem = [lambda k: 1.0 if k >= 4 else 0.0, lambda k: 0.5]
    curve = average_curve(per_problem, [1, 4], label="batch", n_boot=100)
    assert curve.mean == [0.25, 0.75]


def test_attempts_ratio_at_matched_probability():
    # method: every run solves by attempt 10; baseline reaches its level only at the budget 100
    method = lambda k: 1.0 if k >= 10 else 0.0  # noqa: E731
    baseline = lambda k: min(1.0, k / 100)  # noqa: E731
    assert attempts_to_reach(method, 1.0, 100) == 10
    assert attempts_ratio(method, baseline, 100) == pytest.approx(10.0)
    assert attempts_ratio(lambda k: 0.0, baseline, 100) is None  # the method never gets there
    assert attempts_ratio(method, lambda k: 0.0, 100) is None  # nothing to match


def test_compare_to_best_of_k_reports_ratio_and_curves():
    outcomes = [i % 50 == 0 for i in range(400)]  # p = 0.02
    comparison = compare_to_best_of_k("sdpo", [12], outcomes, 64)
    labels = [c.label for c in comparison.curves]
    assert labels == ["sdpo", "best-of-k"]
    target = pass_at_k(400, 8, 64)
    assert comparison.baseline_at_budget == pytest.approx(target)
    assert comparison.attempts_ratio == pytest.approx(64 / 12)
    assert "fewer attempts" in comparison.note
    none = compare_to_best_of_k("sdpo", [None], [False] * 20, 16)
    assert none.attempts_ratio is None and "no solution" in none.note


def test_curve_grid_is_increasing_and_ends_at_budget():
    grid = curve_grid(5000)
    assert grid[0] == 1 and grid[-1] == 5000 and grid == sorted(set(grid)) and len(grid) <= 201
    assert curve_grid(7) == list(range(1, 8))
    assert math.isclose(len(curve_grid(200)), 200)


def test_no_ratio_is_claimed_from_runs_that_solved_before_any_update():
    outcomes = [True] + [False] * 63
    lucky = compare_to_best_of_k("auto", [1, 3], outcomes, 32, first_step=8)
    assert lucky.attempts_ratio is None
    assert "solved only in the first step (attempt 1, 3), before any feedback or update" in lucky.note
    mixed = compare_to_best_of_k("auto", [2, 12, None], outcomes, 32, first_step=8)
    assert "1 of 3 runs solved in their first step, before any update" in mixed.note
    learned = compare_to_best_of_k("auto", [12], outcomes, 32, first_step=8)
    assert learned.attempts_ratio is not None and "first step" not in learned.note
