"""Worker-side metrics: what one step adds to the counters and the step-latency histogram.

The numbers live in Redis so that the API's /metrics sees every worker's; the store writes them in the same fenced
script as the step's attempts (workers.store.leases.WorkerQueue.publish), so a step is counted once.
"""

from __future__ import annotations

from collections.abc import Sequence

STEP_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def verifier_outcome(verdict: str) -> str:
    """The metric label of a verdict status: solved | rejected | error | timeout | not_run."""
    return "solved" if verdict == "ok" else verdict


def step_metrics(outcomes: Sequence[str], seconds: float) -> tuple[dict[str, int], dict[str, int]]:
    """(counters, histogram increments) of one step of one job: its attempts by verifier outcome, its latency."""
    counters = {"attempts": len(outcomes), "steps": 1}
    for outcome in outcomes:
        counters[f"verifier:{outcome}"] = counters.get(f"verifier:{outcome}", 0) + 1
    histogram = {str(bound): 1 for bound in STEP_BUCKETS if seconds <= bound}
    histogram["count"] = 1
    return counters, histogram
