"""The Redis gateway against a real Redis: it is the only code importing redis, its scripts name no keys of their
own, and a worker that lost its lease cannot write anything for the job (fencing), as two holders show."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from workers import checkpoint
from workers.jobs import BatchRecord, JobPatch, JobSpec, new_id
from workers.store import NewJob, StepRecord, TenantIndex, WorkerQueue, open_store, scripts

ROOT = Path(__file__).resolve().parent.parent
SPEC = JobSpec.model_validate({"problem": {"prompt": "Say a", "verifier": {"type": "exact", "answer": "a"}},
                               "settings": {"max_attempts": 32, "attempts_per_step": 16}}).model_dump_json()


def test_only_the_store_imports_redis():
    """Every Redis call goes through workers/store: any other module of the packages that imports redis fails."""
    offenders = []
    for package in ("sdpo_core", "workers", "service", "deploy"):
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(ROOT / "workers" / "store") or path.name == "image_checks.py":
                continue  # image_checks.py is make test-images' driver: it probes Redis as an outside client
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(name == "redis" or name.startswith("redis.") for name in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"only workers/store may import redis: {offenders}"


def test_workers_never_import_service():
    """Imports point one way: service -> workers -> sdpo_core (sdpo_core's side: test_verifier_pool.py)."""
    for path in (ROOT / "workers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name.split(".")[0] == "service" for name in names), f"{path} imports service"


def test_lua_scripts_touch_only_the_keys_they_are_given():
    """Each redis.call names its key as KEYS[...] (or a value picked from KEYS): no script builds a key name, so a
    key's name is written once (workers/keys.py) and every script is Redis Cluster safe."""
    key_commands = {"GET", "SET", "DEL", "EXISTS", "HGET", "HSET", "HINCRBY", "HINCRBYFLOAT", "ZADD", "ZREM", "ZCARD",
                    "ZSCORE", "XADD", "XACK", "XDEL", "XCLAIM", "RPUSH", "LPOP", "LLEN", "LRANGE", "LTRIM", "INCRBY",
                    "DECRBY", "SADD", "EXPIRE", "PEXPIRE", "HSTRLEN", "HEXISTS", "XLEN", "XRANGE", "XTRIM"}
    sources = {name: text for name, text in vars(scripts).items() if name.isupper() and isinstance(text, str)}
    assert {"SUBMIT", "TRANSITION", "CLAIM", "PUBLISH"} <= sources.keys()
    for name, text in sources.items():
        assert not re.search(r"\.\.\s*'[^']*:|'[^']*:'\s*\.\.", text), f"{name} builds a key name"
        for command, key in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", text):
            if command in key_commands:
                assert key.startswith(("KEYS[", "index[", "job", "events", "tenant_bytes")), f"{name}: {command} {key}"
        # names bound to keys must come from KEYS too (the accounting functions take them as arguments)
        for var, value in re.findall(r"local (job|events|tenant_bytes)\b.*?=\s*([^\n]+)", text):
            assert value.startswith("KEYS["), f"{name}: {var} = {value}"


@pytest.fixture
def store(redis_url):
    opened = open_store(redis_url, f"store-{os.getpid()}-{os.urandom(3).hex()}", events_maxlen=1000)
    yield opened


def run(coroutine):
    return asyncio.run(coroutine)


async def _submit(store, tenant="alice", idempotency_key=None) -> str:
    job_id = new_id("job")
    await store.ensure_group()
    outcome = await store.submit(tenant=tenant, jobs=[NewJob(job_id, SPEC, "{}")], result_id=job_id,
                                 idempotency_key=idempotency_key, fingerprint="fp", idempotency_ttl_s=60,
                                 max_active_jobs=10)
    assert outcome.outcome == "created"
    return job_id


def test_idempotency_keys_are_the_key_modules(store):
    async def scenario():
        job_id = await _submit(store, idempotency_key="retry-1")
        stored = await store.redis.get(store.keys.idempotency("alice", "job", "retry-1"))
        await store.close()
        return job_id, stored

    job_id, stored = run(scenario())
    assert stored == f"fp\n{job_id}"


def test_a_worker_that_lost_its_lease_cannot_write(store, tmp_path):
    """Worker A holds the job, stalls past its lease; worker B takes it over. A then tries every write a worker
    makes: attempts, progress, events, a status change, a hand-back, a trim, the checkpoint pointer. None lands."""
    blobs = checkpoint.DirectoryStore(tmp_path)

    async def scenario():
        job_id = await _submit(store)
        a = WorkerQueue(store, "worker-a", lease_ms=1000)
        b = WorkerQueue(store, "worker-b", lease_ms=1000)
        [(entry, got)] = await a.next_entries(1, block_ms=None)
        assert got == job_id
        lease_a = await a.take(entry, await store.get(job_id))
        assert lease_a is not None and lease_a.generation == 1
        assert await a.change(lease_a, allowed_from=["queued"], to="running") == "ok"
        assert await b.take(entry, await store.get(job_id)) is None  # a live holder keeps it

        await asyncio.sleep(1.2)  # A stalls (a long verification, a GC pause): its lease expires
        [(entry_b, _)] = await b.next_entries(1, block_ms=None)  # the idle entry is reclaimed
        b.lease_ms = 30_000  # B stays alive for the rest of the test
        lease_b = await b.take(entry_b, await store.get(job_id))
        assert lease_b is not None and lease_b.generation == 2

        # B runs a step: 16 attempts, its checkpoint named for its generation.
        step = [json.dumps({"index": i, "by": "b"}) for i in range(1, 17)]
        blobs.save(job_id, b"state of b", checkpoint.checkpoint_name(lease_b.generation))
        assert await b.publish(lease_b, StepRecord(attempts=step, fields=JobPatch(
            attempts=16, checkpoint=checkpoint.checkpoint_name(lease_b.generation)),
            events=[("progress", {"by": "b"})])) == 16

        # A wakes up and publishes its step 2 (attempts 17-32), then everything else a worker writes: all refused.
        stale = [json.dumps({"index": i, "by": "a"}) for i in range(17, 33)]
        blobs.save(job_id, b"state of a", checkpoint.checkpoint_name(lease_a.generation))
        assert await a.publish(lease_a, StepRecord(attempts=stale, first_index=17, fields=JobPatch(
            attempts=32, checkpoint=checkpoint.checkpoint_name(lease_a.generation)),
            events=[("progress", {"by": "a"})], counters={"attempts": 16})) == -1
        assert await a.renew(lease_a) is False
        assert await a.trim(lease_a, 0) == -1
        assert await a.change(lease_a, allowed_from=["running"], to="succeeded", ack=True, release=True) == "fenced"
        assert await a.hand_back(lease_a, reason="stale") == "fenced"

        record = await store.get(job_id)
        attempts, _ = await store.attempts(job_id, after=0, limit=100)
        events = await store.events(job_id, after=None, limit=100)
        pending = await store.redis.xpending(store.keys.queue, "workers")
        lease_value = await store.redis.get(store.keys.lease(job_id))
        await store.close()
        return record, attempts, events, pending, lease_value, lease_b

    record, attempts, events, pending, lease_value, lease_b = run(scenario())
    assert len(attempts) == 16 and all(json.loads(a)["by"] == "b" for a in attempts)  # not 32
    assert record.status == "running" and record.attempts == 16 and record.lease_generation == 2
    assert record.checkpoint == "runs-g2.pt"
    assert blobs.load(record.id, record.checkpoint) == b"state of b"  # the blob a resume reads is B's
    assert [json.loads(f["data"]).get("by") for _, f in events if f["type"] == "progress"] == ["b"]
    assert pending["pending"] == 1  # B's entry is still B's: A's ack was refused
    assert lease_value == lease_b.token


def test_the_service_asks_the_store_and_builds_no_key_names():
    """Routes and views name what they need (a TenantIndex, a batch id); workers.keys stays behind the gateway."""
    offenders = []
    for path in (ROOT / "service").rglob("*.py"):
        tree = ast.parse(path.read_text())
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "workers.keys":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports workers.keys")
            elif isinstance(node, ast.Attribute) and node.attr == "keys" and id(node) not in called:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} reads .keys")  # a dict's .keys() is fine
    assert not offenders, offenders


def test_a_misspelled_job_field_is_refused_and_a_patch_round_trips(store):
    with pytest.raises(ValidationError, match="atempts"):
        JobPatch(atempts=3)  # JobHead ignores extras: written, it would vanish
    with pytest.raises(ValidationError):
        JobPatch(steps=1).merge(checkpoint_stp=2)

    async def scenario():
        job_id = await _submit(store)
        queue = WorkerQueue(store, "w", lease_ms=60_000)
        [(entry, _)] = await queue.next_entries(1, block_ms=None)
        lease = await queue.take(entry, await store.get(job_id))
        patch = JobPatch(worker="w", first_success_attempt=None, best_reward=0.5).merge(adapter=True)
        assert await queue.change(lease, allowed_from=["queued"], to="running", fields=patch) == "ok"
        assert await queue.publish(lease, StepRecord(fields=JobPatch(attempts=16, checkpoint="c-1"))) == 0
        record = await store.get(job_id)
        await store.close()
        return record

    record = run(scenario())
    assert (record.worker, record.adapter, record.best_reward, record.first_success_attempt) == ("w", True, 0.5, None)
    assert (record.attempts, record.checkpoint, record.status) == (16, "c-1", "running")


def test_a_batch_record_round_trips_and_is_listed_by_its_tenant(store):
    batch = BatchRecord(id=new_id("batch"), tenant="alice", created_at=12.5, method="sdpo", budget=64,
                        metadata='{"k": "v"}', size=1)

    async def scenario():
        job_id = new_id("job")
        await store.ensure_group()
        outcome = await store.submit(tenant="alice", jobs=[NewJob(job_id, SPEC, "{}")], result_id=batch.id,
                                     idempotency_key=None, fingerprint="fp", idempotency_ttl_s=60, max_active_jobs=10,
                                     batch=batch, enqueue=1)
        assert outcome.outcome == "created"
        stored = await store.batch(batch.id)
        listed = await store.page_ids(TenantIndex("alice", batches=True), after=None, limit=10)
        jobs = await store.page_ids(TenantIndex("alice", status="queued"), after=None, limit=10)
        await store.finish_batch(batch.id, '{"counts": {}}')
        await store.request_batch_cancel(batch.id)
        finished = await store.batch(batch.id)
        await store.prune_index(TenantIndex("alice", batches=True), [batch.id])
        pruned = await store.page_ids(TenantIndex("alice", batches=True), after=None, limit=10)
        await store.close()
        return job_id, stored, listed, jobs, finished, pruned

    job_id, stored, listed, jobs, finished, pruned = run(scenario())
    assert stored == batch and listed == ([batch.id], False) and jobs == ([job_id], False)
    assert finished.outcome == '{"counts": {}}' and finished.cancel_requested_at is not None
    assert pruned == ([], False)
    with pytest.raises(ValidationError):
        BatchRecord(**batch.model_dump(), sise=2)
