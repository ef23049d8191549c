"""The best-of-k bootstrap draws one success count per replicate (issue 12, item 8): its cost does not grow with the
number of baseline samples, and its band is the band of the old resample-every-outcome bootstrap."""

from __future__ import annotations

import random

from sdpo_core import curves
from sdpo_core.curves import _band, best_of_k_curve, curve_grid, pass_at_k


class CountingRandom(random.Random):
    """random.Random that counts the draws made through it."""

    draws = 0

    def random(self) -> float:
        CountingRandom.draws += 1
        return super().random()

    def randrange(self, *args, **kwargs) -> int:
        CountingRandom.draws += 1
        return super().randrange(*args, **kwargs)


def test_draws_per_replicate_do_not_grow_with_the_samples(monkeypatch):
    monkeypatch.setattr(curves.random, "Random", CountingRandom)
    n, successes, n_boot = 200_000, 37, 50
    curve = best_of_k_curve([True] * successes + [False] * (n - successes), curve_grid(100_000), n_boot=n_boot)
    assert CountingRandom.draws <= n_boot
    assert curve.low[-1] <= curve.mean[-1] <= curve.high[-1]


def test_the_band_matches_resampling_every_outcome():
    """Same percentiles as the textbook bootstrap (resample the n outcomes, count successes), within Monte Carlo
    error, on a case where the band is wide."""
    n, successes, ks = 60, 6, list(range(1, 31))
    outcomes = [True] * successes + [False] * (n - successes)
    fast = best_of_k_curve(outcomes, ks, n_boot=4000, seed=1)
    rng = random.Random(2)
    replicates = []
    for _ in range(4000):
        c = sum(outcomes[rng.randrange(n)] for _ in range(n))
        replicates.append([pass_at_k(n, c, k) for k in ks])
    low, high = _band(replicates, 0.9)
    for k in (1, 5, 30):
        assert abs(fast.low[k - 1] - low[k - 1]) < 0.04 and abs(fast.high[k - 1] - high[k - 1]) < 0.04, k
    assert fast.mean == [pass_at_k(n, successes, k) for k in ks]


def test_degenerate_outcomes_give_a_flat_band():
    assert best_of_k_curve([False] * 1000, [1, 10], n_boot=20).high == [0.0, 0.0]
    assert best_of_k_curve([True] * 1000, [1, 10], n_boot=20).low == [1.0, 1.0]
