"""A batch's curve is computed once, when the batch has finished, and kept with it (issue 17, item 5): a GET of a
finished batch, or the listing, reads it instead of bootstrapping over up to a thousand jobs again (that cost
seconds of CPU per request and slowed every other request down). Through the real API on a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import random

import httpx
import pytest
import redis
from service_env import KEYS, ApiServer, api_settings

from service import views
from service.api.routes.jobs import read_summaries
from service.schemas import Batch
from workers.jobs import JobPatch
from workers.store import open_store

PROBLEM = {"prompt": "What is 2 + 2?", "verifier": {"type": "numeric", "answer": 4}}
BUDGET, JOBS = 64, 40
COMPUTE = views.batch_curve  # the computation itself, before the fixture counts the API's calls of it


@pytest.fixture
def counted_curves(monkeypatch):
    """How many times the API computes a batch curve (the same computation, counted)."""
    calls: list[int] = []

    def counting(jobs, budget, method):
        calls.append(len(jobs))
        return COMPUTE(jobs, budget, method)

    monkeypatch.setattr(views, "batch_curve", counting)
    return calls


def finish(redis_url: str, prefix: str, job_ids: list[str]) -> None:
    """End the jobs as a worker would: succeeded at a random attempt or exhausted, with a best-of-k baseline."""

    async def run() -> None:
        store = open_store(redis_url, prefix)
        rng = random.Random(7)
        for job_id in job_ids:
            first = rng.randint(1, BUDGET) if rng.random() < 0.5 else None
            fields = JobPatch(attempts=first or BUDGET, first_success_attempt=first, baseline_samples=2 * BUDGET,
                              baseline_successes=rng.randint(0, 20))
            outcome, _ = await store.transition(job_id, tenant="alice", allowed_from=["queued"],
                                                to="succeeded" if first else "exhausted", fields=fields)
            assert outcome == "ok"
        await store.close()

    asyncio.run(run())


def computed(redis_url: str, prefix: str, job_ids: list[str]) -> dict:
    """The batch curve computed afresh from the jobs' records, as the API computes it."""

    async def run():
        store = open_store(redis_url, prefix)
        summaries = await read_summaries(store, job_ids)
        await store.close()
        return summaries

    return COMPUTE(asyncio.run(run()), BUDGET, "auto").model_dump(mode="json")


def test_a_finished_batch_serves_the_curve_computed_once(redis_url, counted_curves):
    prefix = f"batch-curve-{os.getpid()}"
    with ApiServer(api_settings(redis_url, prefix, max_active_jobs=JOBS)) as api, \
            httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {KEYS['alice']}"}, timeout=60) as http:
        created = http.post("/v1/batches", json={"problems": [PROBLEM] * JOBS, "budget": BUDGET}).json()
        batch_id, job_ids = created["id"], created["job_ids"]
        assert created["curve"] is None
        finish(redis_url, prefix, job_ids[:-1])
        running = http.get(f"/v1/batches/{batch_id}").json()
        assert running["status"] == "in_progress" and running["curve"] is None  # no curve before the end
        assert counted_curves == []

        finish(redis_url, prefix, job_ids[-1:])
        first = Batch.model_validate(http.get(f"/v1/batches/{batch_id}").json())
        assert first.status == "completed" and sum(first.counts.values()) == JOBS
        assert counted_curves == [JOBS]  # computed once, over every job
        assert first.curve.model_dump(mode="json") == computed(redis_url, prefix, job_ids)
        assert [c.label for c in first.curve.curves] == ["auto", "best-of-k"]

        again = [http.get(f"/v1/batches/{batch_id}").json() for _ in range(3)]
        listed = http.get("/v1/batches").json()["data"]
        assert counted_curves == [JOBS]  # never again: reads, and the listing, only read it
        assert all(view == first.model_dump(mode="json") for view in again)
        assert listed[0]["id"] == batch_id and listed[0]["curve"] == first.model_dump(mode="json")["curve"]

        with redis.Redis.from_url(redis_url) as r:  # what is served is what was stored
            key = f"{prefix}:batch:{batch_id}"
            stored = json.loads(r.hget(key, "outcome"))
            assert stored["curve"] == first.model_dump(mode="json")["curve"] and stored["counts"] == first.counts
            assert 0 < r.ttl(key) and 0 < r.ttl(f"{key}:jobs")  # it goes when its jobs go
            stored["curve"]["note"] = "as stored"
            r.hset(key, "outcome", json.dumps(stored))
        assert http.get(f"/v1/batches/{batch_id}").json()["curve"]["note"] == "as stored"
