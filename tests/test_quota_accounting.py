"""A tenant's storage quota counts every byte as it is stored (issue 17, item 5): the job's record, its attempts
and its events, running jobs included. Past the quota a running job goes on and ends normally, counting what it no
longer stores; its status, counts and first solution are kept; and the sweep gives back exactly what was counted.

Through the real API and a real worker, on a Redis server of its own so that its memory can be watched."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import pytest
import redis
from conftest import _redis_answers, free_port
from service_env import KEYS, ApiServer, Workers, api_settings, wait_for

from service.client import Client

QUOTA = 16 * 1024
# What may go past the quota, by design: a job's status changes, their events and its progress fields are stored
# whatever the quota (its outcome is never lost), and so is the one event that says the quota was reached.
COUNTER_SLACK = 4 * 1024
# Redis's own cost of what it stores (listpack and stream node headers, hash and key entries) and the metrics a step
# adds whoever owns it (the attempts log), measured after a warm-up job has loaded every script.
MEMORY_SLACK = 32 * 1024
NEVER = {"id": "never", "prompt": "Write a long story about anything you like.",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}
# Unbounded, this job stores about 9 times the quota (143 KB measured: 480 attempts and their progress events).
BUDGET, SETTINGS = 480, {"method": "best-of-k", "attempts_per_step": 8, "max_new_tokens": 64}
UNCOUNTED = {"stored_bytes", "quota_bytes", "tries", "lease_generation", "attempts_stored", "events_not_stored"}


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test alone: its used_memory moves only with what this test stores. Without latency
    tracking, which allocates some 25 KB of histogram the first time any command runs (a fixed cost per command,
    not per tenant, that would blur the measure)."""
    port = free_port()
    process = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--latency-tracking", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for(lambda: _redis_answers(port), timeout=20, interval=0.05, message="redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def stored_bytes_in_redis(r: redis.Redis, prefix: str, job_id: str) -> int:
    """What the job's keys hold, measured: its record's values (less the fixed-size counters), its attempts, and its
    events' type and data."""
    key = f"{prefix}:job:{job_id}"
    record = sum(len(v) for f, v in r.hgetall(key).items() if f.decode() not in UNCOUNTED)
    attempts = sum(len(row) for row in r.lrange(f"{key}:attempts", 0, -1))
    events = sum(len(v) for _, fields in r.xrange(f"{key}:events") for v in fields.values())
    return record + attempts + events


def test_a_running_job_past_the_quota_stops_storing_but_finishes(own_redis, tiny_model_dir, tmp_path):
    prefix = "quota"
    workers = Workers(own_redis, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    settings = api_settings(own_redis, prefix, max_tenant_bytes=QUOTA, checkpoint_dir=tmp_path / "ckpt")
    r = redis.Redis.from_url(own_redis)
    with ApiServer(settings) as api, Client(api.url, KEYS["alice"]) as alice, Client(api.url, KEYS["bob"]) as bob:
        workers.start()
        try:
            warm = bob.solve(NEVER, budget=8, settings=SETTINGS, baselines=[], timeout=120, poll_s=0.2).job
            assert warm.status == "exhausted", workers.logs()
            before = int(r.info("memory")["used_memory"])
            job = alice.solve(NEVER, budget=BUDGET, settings=SETTINGS, baselines=[], timeout=600, poll_s=0.3).job
            after = int(r.info("memory")["used_memory"])
        finally:
            workers.stop_all()
        assert job.status == "exhausted" and job.attempts == BUDGET, workers.logs()
        counted = int(r.get(f"{prefix}:tenant:alice:bytes"))
        assert QUOTA // 2 < counted <= QUOTA + COUNTER_SLACK
        assert after - before <= QUOTA + MEMORY_SLACK, (after - before, counted)
        assert stored_bytes_in_redis(r, prefix, job.id) == int(r.hget(f"{prefix}:job:{job.id}", "stored_bytes")) \
            == counted  # every stored byte counted, nothing counted that is not stored

        # what was not stored is said: fewer attempts stored (a prefix), progress events counted, one notice
        assert 0 < job.attempts_stored < BUDGET and job.quota_reached_at is not None and job.events_not_stored > 0
        stored = alice.attempts(job.id)
        assert [a.index for a in stored] == list(range(1, job.attempts_stored + 1))
        events = alice.event_page(job.id, limit=1000).data
        notices = [e for e in events if e.type == "storage_quota_reached"]
        assert len(notices) == 1 and notices[0].data["quota_bytes"] == QUOTA
        statuses = [e.data["status"] for e in events if e.type == "status"]
        assert statuses[0] == "queued" and statuses[-1] == "exhausted"  # the outcome is never lost

        # quota full: another submission is refused; another tenant is not affected
        with pytest.raises(Exception, match="storage_quota_exceeded"):
            alice.submit(NEVER, budget=8, settings=SETTINGS, baselines=[])
        assert bob.submit(NEVER, budget=8, settings=SETTINGS, baselines=[]).status == "queued"

        # the sweep gives back exactly what was counted: alice holds nothing once her job is forgotten
        async def forget() -> int:
            from workers.store import open_store

            store = open_store(own_redis, prefix)
            await store.redis.zadd(store.keys.retiring, {job.id: 0})
            await store.sweep()
            left = await store.tenant_bytes("alice")
            await store.close()
            return left

        assert asyncio.run(forget()) == 0
    r.close()


def test_the_first_solution_and_the_status_are_kept_past_the_quota(redis_url, tiny_model_dir, tmp_path):
    """A quota already full when the job runs: no attempt and no progress event is stored, yet the solution the
    job finds and its final status are, and the job says why its attempts are missing."""
    prefix = f"quota-solved-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    easy = {"id": "easy", "prompt": "Say a", "verifier": {"type": "regex", "pattern": "a", "target": "completion",
                                                          "full_match": False}}
    settings = api_settings(redis_url, prefix, max_tenant_bytes=100_000, checkpoint_dir=tmp_path / "ckpt")
    with ApiServer(settings) as api, Client(api.url, KEYS["alice"]) as client:
        job = client.submit(easy, budget=8, settings={"attempts_per_step": 4, "max_new_tokens": 8}, baselines=[])
        with redis.Redis.from_url(redis_url) as r:
            spec_bytes = int(r.get(f"{prefix}:tenant:alice:bytes"))
            r.set(f"{prefix}:tenant:alice:bytes", 100_000)  # as if other jobs of hers filled the quota
        workers.start()
        try:
            done = client.wait(job.id, timeout=120, poll_s=0.2)
        finally:
            workers.stop_all()
        assert done.status == "succeeded" and done.solved and done.attempts >= 1, workers.logs()
        assert done.attempts_stored == 0 and client.attempts(job.id) == []
        assert done.quota_reached_at is not None and done.events_not_stored >= 1
        solution = client.solution(job.id)
        assert solution.solved and solution.attempt.index == done.first_success_attempt
        with redis.Redis.from_url(redis_url) as r:
            record = r.hgetall(f"{prefix}:job:{job.id}")
            assert json.loads(record[b"solution"])["index"] == done.first_success_attempt
            assert stored_bytes_in_redis(r, prefix, job.id) == int(record[b"stored_bytes"])
            assert int(r.get(f"{prefix}:tenant:alice:bytes")) == 100_000 - spec_bytes + int(record[b"stored_bytes"])


def test_every_write_and_removal_is_counted_exactly(redis_url):
    """The store's scripts one by one (submission, steps with events past the stream's cap, a trim, a cancellation
    request, the final status, the sweep): after each, the job's counter equals the bytes its keys hold and the
    tenant's counter equals the job's; once the job is forgotten the tenant holds exactly nothing."""
    from workers.jobs import JobPatch, new_id
    from workers.store import NewJob, StepRecord, WorkerQueue, open_store

    prefix = f"quota-exact-{os.getpid()}"
    store = open_store(redis_url, prefix, events_maxlen=20)
    r = redis.Redis.from_url(redis_url)

    def check(job_id: str) -> int:
        counted = int(r.hget(f"{prefix}:job:{job_id}", "stored_bytes"))
        assert stored_bytes_in_redis(r, prefix, job_id) == counted
        assert int(r.get(f"{prefix}:tenant:carol:bytes")) == counted
        return counted

    async def scenario() -> None:
        await store.ensure_group()
        job_id = new_id("job")
        assert (await store.submit(tenant="carol", jobs=[NewJob(job_id, '{"spec": 1}', "{}", '{"s": 1}')],
                                   result_id=job_id, idempotency_key=None, fingerprint="f", idempotency_ttl_s=60,
                                   max_active_jobs=10)).outcome == "created"
        check(job_id)
        queue = WorkerQueue(store, "w", lease_ms=60_000)
        [(entry, _)] = await queue.next_entries(1, block_ms=None)
        lease = await queue.take(entry, await store.get(job_id))
        assert await queue.change(lease, allowed_from=["queued"], to="running", fields=JobPatch(worker="w")) == "ok"
        for step in range(10):  # 30 events through a stream capped at 20: the trimmed ones are given back
            rows = [json.dumps({"index": step * 4 + i + 1, "text": "t" * (50 + step)}) for i in range(4)]
            assert await queue.publish(lease, StepRecord(
                attempts=rows, first_index=step * 4 + 1, fields=JobPatch(attempts=step * 4 + 4, steps=step),
                events=[("progress", {"step": step, "pad": "p" * step})] * 3)) == step * 4 + 4
            check(job_id)
        assert r.xlen(f"{prefix}:job:{job_id}:events") == 20
        assert await queue.trim(lease, 12) == 28
        check(job_id)
        record = await store.get(job_id)
        assert await store.cancel(record) == "running"
        check(job_id)
        assert await queue.change(lease, allowed_from=["running"], to="cancelled", fields=JobPatch(error_code=""),
                                  ack=True, release=True) == "ok"
        check(job_id)
        await store.redis.zadd(store.keys.retiring, {job_id: 0})
        assert await store.sweep() == 1
        assert await store.tenant_bytes("carol") == 0
        await store.close()

    asyncio.run(scenario())
    r.close()
