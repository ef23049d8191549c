"""/metrics in the Prometheus text format, read from the numbers every worker keeps in Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from workers.jobs import STATUSES
from workers.keys import GROUP
from workers.metrics import STEP_BUCKETS
from workers.store import JobStore

RATE_WINDOW_S = 60


class _Snapshot:
    """A collector over metric families built beforehand (prometheus_client collectors are synchronous)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _d(mapping: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in mapping.items()}


async def render(store: JobStore, *, worker_stale_s: float) -> bytes:
    redis, keys = store.redis, store.keys
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.jobs_by_status)
        pipe.hgetall(keys.counters)
        pipe.hgetall(keys.step_seconds)
        pipe.xlen(keys.queue)
        pipe.xrange(keys.attempts_log, min=f"{int((time.time() - RATE_WINDOW_S) * 1000)}-0")
        pipe.hgetall(keys.workers)
        by_status, counters, steps, depth, recent, workers = await pipe.execute()
    by_status, counters, steps, workers = _d(by_status), _d(counters), _d(steps), _d(workers)
    pending = 0
    try:
        pending = next((g["pending"] for g in await redis.xinfo_groups(keys.queue) if g["name"] in (GROUP, GROUP.encode())), 0)
    except Exception:  # noqa: BLE001 - no queue yet
        pending = 0

    jobs = GaugeMetricFamily("sdpo_jobs", "Jobs by status (terminal ones counted since the Redis was created).",
                             labels=["status"])
    for status in STATUSES:
        jobs.add_metric([status], max(0, int(by_status.get(status, 0))))
    attempts = CounterMetricFamily("sdpo_attempts", "Attempts generated and verified.")
    attempts.add_metric([], int(counters.get("attempts", 0)))
    rate = GaugeMetricFamily("sdpo_attempts_per_second", f"Attempts per second over the last {RATE_WINDOW_S} s.")
    rate.add_metric([], sum(int(_d(fields).get("n", 0)) for _, fields in recent) / RATE_WINDOW_S)
    verdicts = CounterMetricFamily("sdpo_verifier_outcomes", "Verifier outcomes per attempt.", labels=["outcome"])
    for outcome in ("solved", "rejected", "error"):
        verdicts.add_metric([outcome], int(counters.get(f"verifier:{outcome}", 0)))
    finished = CounterMetricFamily("sdpo_jobs_finished", "Jobs that ended, by final status.", labels=["status"])
    for status in ("succeeded", "exhausted", "failed", "cancelled"):
        finished.add_metric([status], int(counters.get(f"finished:{status}", 0)))
    latency = HistogramMetricFamily("sdpo_step_seconds", "Wall time of one worker step per job.")
    latency.add_metric([], [(str(b), int(steps.get(str(b), 0))) for b in STEP_BUCKETS]
                       + [("+Inf", int(steps.get("count", 0)))], sum_value=float(steps.get("sum", 0.0)))
    queue = GaugeMetricFamily("sdpo_queue_depth", "Entries in the job queue: waiting or being run.")
    queue.add_metric([], depth)
    queue_pending = GaugeMetricFamily("sdpo_queue_pending", "Queue entries delivered to a worker and not yet done.")
    queue_pending.add_metric([], pending)
    live = GaugeMetricFamily("sdpo_workers", f"Workers seen in the last {worker_stale_s:g} s.")
    live.add_metric([], live_workers(workers, worker_stale_s))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot([jobs, attempts, rate, verdicts, finished, latency, queue, queue_pending, live]))
    return generate_latest(registry)


def live_workers(workers: dict[str, str], stale_s: float) -> int:
    cutoff = time.time() - stale_s
    return sum(1 for info in workers.values() if json.loads(info).get("seen_at", 0) >= cutoff)
