"""/metrics in the Prometheus text format, read from the numbers every worker keeps in Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from sdpo_core.statuses import FINISHED, STATUSES
from workers.metrics import STEP_BUCKETS
from workers.store import JobStore
from workers.store.jobs import RATE_WINDOW_S

VERIFIER_OUTCOMES = ("solved", "rejected", "error", "timeout", "not_run")  # a verdict status; ok is shown as solved


class _Snapshot:
    """A collector over metric families built beforehand (prometheus_client collectors are synchronous)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def render(store: JobStore, *, worker_stale_s: float) -> bytes:
    snap = await store.metrics()
    counters = snap.counters
    jobs = GaugeMetricFamily("sdpo_jobs", "Jobs by status (terminal ones counted since the Redis was created).",
                             labels=["status"])
    for status in STATUSES:
        jobs.add_metric([status], max(0, snap.by_status.get(status, 0)))
    attempts = CounterMetricFamily("sdpo_attempts", "Attempts generated and verified.")
    attempts.add_metric([], int(counters.get("attempts", 0)))
    rate = GaugeMetricFamily("sdpo_attempts_per_second", f"Attempts per second over the last {RATE_WINDOW_S} s.")
    rate.add_metric([], snap.recent_attempts / RATE_WINDOW_S)
    verdicts = CounterMetricFamily("sdpo_verifier_outcomes", "Verifier outcomes per attempt.", labels=["outcome"])
    for outcome in VERIFIER_OUTCOMES:
        verdicts.add_metric([outcome], int(counters.get(f"verifier:{outcome}", 0)))
    finished = CounterMetricFamily("sdpo_jobs_finished", "Jobs that ended, by final status.", labels=["status"])
    for status in sorted(FINISHED, key=STATUSES.index):
        finished.add_metric([status], int(counters.get(f"finished:{status}", 0)))
    steps = snap.step_seconds
    latency = HistogramMetricFamily("sdpo_step_seconds", "Wall time of one worker step per job.")
    latency.add_metric([], [(str(b), int(steps.get(str(b), 0))) for b in STEP_BUCKETS]
                       + [("+Inf", int(steps.get("count", 0)))], sum_value=steps.get("sum", 0.0))
    queue = GaugeMetricFamily("sdpo_queue_depth", "Entries in the job queue: waiting or being run.")
    queue.add_metric([], snap.queue_depth)
    queue_pending = GaugeMetricFamily("sdpo_queue_pending", "Queue entries delivered to a worker and not yet done.")
    queue_pending.add_metric([], snap.queue_pending)
    live = GaugeMetricFamily("sdpo_workers", f"Workers seen in the last {worker_stale_s:g} s.")
    live.add_metric([], live_workers(snap.workers, worker_stale_s))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot([jobs, attempts, rate, verdicts, finished, latency, queue, queue_pending, live]))
    return generate_latest(registry)


def live_workers(workers: dict[str, dict[str, Any]], stale_s: float) -> int:
    cutoff = time.time() - stale_s
    return sum(1 for info in workers.values() if info.get("seen_at", 0) >= cutoff)
