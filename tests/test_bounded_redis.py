"""Redis stays bounded (issue 12.5): caps on LoRA rank, on each job's stored attempts and on each tenant's storage;
a Redis at its maxmemory refuses writes while the API keeps answering; finished jobs are forgotten when their
retention ends, which gives the tenant's quota back; adapters live in the blob store, not in Redis.

The soak submits jobs until the caps bite and watches Redis's used_memory: flat once they do."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import httpx
import pytest
import redis
from conftest import _redis_answers, free_port
from service_env import KEYS, ApiServer, Workers, api_settings, wait_for

from service.client import Client

ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
NEVER = {"id": "never", "prompt": "Say the secret",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}


def big_job(kilobytes: int = 20) -> dict:
    """A job whose stored spec is about `kilobytes` KB (a long prompt)."""
    return {"problem": {"prompt": "x" * (kilobytes * 1000), "verifier": {"type": "exact", "answer": "1"}},
            "budget": 16, "settings": {"attempts_per_step": 4}}


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url) as r:
        return int(r.info("memory")["used_memory"])


def test_lora_rank_over_the_service_cap_is_a_422_naming_the_field(redis_url):
    with ApiServer(api_settings(redis_url, f"rank-{os.getpid()}", max_lora_rank=32)) as api:
        body = {**big_job(1), "settings": {"attempts_per_step": 4, "sdpo": {"lora_rank": 256}}}
        response = httpx.post(f"{api.url}/v1/jobs", json=body, headers=ALICE)
        assert response.status_code == 422 and "settings.sdpo.lora_rank" in response.json()["detail"]
        assert "32" in response.json()["detail"]
        body["settings"]["sdpo"]["lora_rank"] = 32
        assert httpx.post(f"{api.url}/v1/jobs", json=body, headers=ALICE).status_code == 201


def test_soak_the_tenant_quota_bites_and_memory_stays_flat(redis_url):
    """alice submits 20 KB jobs until her 400 KB quota bites; 100 more submissions are refused with a clear 429,
    Redis's memory does not grow, and every other request (hers and another tenant's) still succeeds."""
    prefix = f"quota-{os.getpid()}"
    settings = api_settings(redis_url, prefix, max_tenant_bytes=400_000, max_active_jobs=10_000,
                            rate_limit_per_minute=100_000)
    with ApiServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        accepted = []
        while True:
            response = http.post("/v1/jobs", json=big_job(), headers=ALICE)
            if response.status_code != 201:
                break
            accepted.append(response.json()["id"])
            assert len(accepted) < 100, "the quota never bit"
        assert response.status_code == 429 and response.json()["code"] == "storage_quota_exceeded"
        assert "quota" in response.json()["detail"] and response.headers["retry-after"]
        assert 15 <= len(accepted) <= 20  # 400 KB of 20 KB specs
        before = used_memory(redis_url)
        refused = [http.post("/v1/jobs", json=big_job(), headers=ALICE).status_code for _ in range(100)]
        assert set(refused) == {429}
        assert used_memory(redis_url) - before < 200_000  # flat: the refused 2 MB never landed
        assert http.get("/readyz").status_code == 200
        assert http.get(f"/v1/jobs/{accepted[0]}", headers=ALICE).status_code == 200
        assert http.get("/v1/jobs", headers=ALICE).status_code == 200
        assert http.post("/v1/jobs", json=big_job(), headers=BOB).status_code == 201  # a quota per tenant


def test_retention_forgets_finished_jobs_and_gives_the_quota_back(redis_url):
    """A finished job's keys go when its retention ends (the sweep), its bytes leave the tenant's quota, its id
    leaves the listings, and its blobs are queued for a worker to delete."""
    from workers.store import WorkerQueue, open_store

    prefix = f"retire-{os.getpid()}"
    with ApiServer(api_settings(redis_url, prefix, max_tenant_bytes=100_000)) as api, \
            Client(api.url, KEYS["alice"]) as client:
        jobs = [client.submit(big_job(30)["problem"], budget=16, settings={"attempts_per_step": 4})
                for _ in range(3)]
        with pytest.raises(Exception, match="storage_quota_exceeded"):
            client.submit(big_job(30)["problem"], budget=16, settings={"attempts_per_step": 4})
        client.cancel(jobs[0].id)

        async def retire() -> tuple[int, int, int, list[str]]:
            store = open_store(redis_url, prefix)
            before = await store.tenant_bytes("alice")
            assert await store.sweep() == 0  # retention has not ended yet
            await store.redis.zadd(store.keys.retiring, {jobs[0].id: 0})  # as if a week had passed
            swept = await store.sweep()
            again = await store.sweep()
            after = await store.tenant_bytes("alice")
            blobs = await WorkerQueue(store, "w", lease_ms=1000).blobs_to_delete()
            gone = await store.redis.exists(store.keys.job(jobs[0].id), store.keys.events(jobs[0].id))
            await store.close()
            assert (swept, again, gone) == (1, 0, 0)
            return before, after, swept, blobs

        before, after, _, blobs = asyncio.run(retire())
        assert before - after >= 30_000 and blobs == [jobs[0].id]
        assert jobs[0].id not in [j.id for j in client.list(limit=100).data]
        assert client.submit(big_job(30)["problem"], budget=16, settings={"attempts_per_step": 4}).status == "queued"


@pytest.fixture
def small_redis(tmp_path):
    """A redis-server with an 8 MB maxmemory that refuses writes when full (as the shipped configs)."""
    port = free_port()
    process = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxmemory", "8mb", "--maxmemory-policy", "noeviction", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for(lambda: _redis_answers(port), timeout=20, interval=0.05, message="redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def test_soak_a_full_redis_refuses_writes_and_the_api_keeps_answering(small_redis):
    """No quota: jobs are submitted until Redis reaches its maxmemory. Submissions then get 503 storage_full (never a
    500, nothing evicted), memory stays at the limit, and reads, authentication and /readyz keep working."""
    settings = api_settings(small_redis, "full", max_tenant_bytes=0, max_active_jobs=10_000,
                            rate_limit_per_minute=100_000)
    with ApiServer(settings) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        accepted = []
        while True:
            response = http.post("/v1/jobs", json=big_job(100), headers=ALICE)
            if response.status_code != 201:
                break
            accepted.append(response.json()["id"])
            assert len(accepted) < 200, "Redis never filled up"
        assert response.status_code == 503 and response.json()["code"] == "storage_full", response.text
        assert len(accepted) >= 30
        plateau = used_memory(small_redis)
        assert {http.post("/v1/jobs", json=big_job(100), headers=ALICE).status_code for _ in range(50)} == {503}
        assert used_memory(small_redis) <= max(plateau, 8 * 2**20) + 100_000
        assert http.get("/readyz").json()["status"] == "ready"
        assert all(http.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 200 for job_id in accepted[:20])
        assert http.get("/v1/jobs", headers=BOB).status_code == 200
        assert http.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_jobs_stored_attempts_stop_at_the_cap_and_its_adapter_is_a_blob(redis_url, tiny_model_dir, tmp_path):
    """A worker with --max-attempt-bytes 4096 stores only the attempts that fit; the job still counts every attempt,
    and its finished adapter lies in the checkpoint store (served from there), not in Redis."""
    prefix = f"capped-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    with ApiServer(api_settings(redis_url, prefix, checkpoint_dir=tmp_path / "ckpt")) as api, \
            Client(api.url, KEYS["alice"]) as client:
        workers.start(extra_args=("--max-attempt-bytes", "4096"))
        try:
            job = client.solve(NEVER, budget=48, settings={"attempts_per_step": 4, "max_new_tokens": 8},
                               baselines=[], timeout=120, poll_s=0.2).job
        finally:
            workers.stop_all()
        assert job.status == "exhausted" and job.attempts == 48, workers.logs()
        stored = client.attempts(job.id)
        assert 1 <= len(stored) == job.attempts_stored < 48
        assert [a.index for a in stored] == list(range(1, len(stored) + 1))
        assert sum(len(a.model_dump_json()) for a in stored) <= 4096
        with redis.Redis.from_url(redis_url) as r:
            assert not [k for k in r.scan_iter(f"{prefix}:*adapter*")]  # no adapter in Redis
        assert (tmp_path / "ckpt" / job.id / "adapter.tar.gz").is_file()
        assert client.download_adapter(job.id, tmp_path / "a.tar.gz").stat().st_size > 0
