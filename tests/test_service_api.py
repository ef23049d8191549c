"""The HTTP API against a real Redis, without workers: validation, auth and tenants, idempotency, cancel, paging,
limits, health, and a bounded schemathesis run over the served OpenAPI schema."""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from conftest import free_port
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from service_env import KEYS, ApiServer, api_settings

from service.app import create_app
from service.client import Client, Conflict, NotFound, RateLimited
from service.config import Settings

PROBLEM = {"prompt": "What is 2 + 2?", "verifier": {"type": "numeric", "answer": 4}}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}


@pytest.fixture(scope="module")
def api(redis_url):
    with ApiServer(api_settings(redis_url, f"api-{os.getpid()}", max_active_jobs=30, rate_limit_per_minute=10_000)) as a:
        yield a


@pytest.fixture
def http(api):
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


def submit(http: httpx.Client, body: dict | None = None, headers: dict | None = None) -> httpx.Response:
    body = {"problem": PROBLEM, "budget": 32} if body is None else body
    return http.post("/v1/jobs", json=body, headers=ALICE if headers is None else headers)


# ---- validation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "field"), [
    ({}, "problem"),
    ({"problem": {"prompt": "x", "verifier": {"type": "nope"}}}, "problem.verifier"),
    ({"problem": {"verifier": {"type": "exact", "answer": "4"}}}, "problem"),
    ({"problem": PROBLEM, "budget": 4, "settings": {"attempts_per_step": 16}}, "max_attempts (4)"),
    ({"problem": PROBLEM, "method": "sdpo", "settings": {"method": "best-of-k"}}, "disagrees with settings.method"),
    ({"problem": PROBLEM, "settings": {"temperature": -1}}, "settings.temperature"),
    ({"problem": PROBLEM, "metadata": {"k": "v" * 600}}, "metadata"),
    ({"problem": PROBLEM, "surprise": 1}, "surprise"),
])
def test_invalid_jobs_get_422_naming_the_field(http, body, field):
    response = submit(http, body)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 422 and problem["code"] == "invalid_request"
    assert field in problem["detail"], problem


def test_malformed_json_is_400_and_a_huge_body_413(http):
    response = http.post("/v1/jobs", content=b'{"problem": ', headers={**ALICE, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    huge = {"problem": {**PROBLEM, "prompt": "x" * 3_000_000}}
    response = submit(http, huge)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_unknown_ids_and_bad_cursors(http):
    for path in ("/v1/jobs/job_0123456789abcdef012345", "/v1/jobs/nonsense", "/v1/jobs/x/curve", "/v1/batches/b"):
        response = http.get(path, headers=ALICE)
        assert response.status_code == 404, path
        assert response.json()["code"] in ("job_not_found", "batch_not_found")
    job = submit(http).json()
    response = http.get(f"/v1/jobs/{job['id']}/events", params={"after": "yesterday"}, headers=ALICE)
    assert response.status_code == 400 and "event id" in response.json()["detail"]
    assert http.get("/v1/jobs", params={"limit": 0}, headers=ALICE).status_code == 422
    assert http.get("/v1/jobs", params={"status": "sleeping"}, headers=ALICE).status_code == 422
    response = http.get(f"/v1/jobs/{job['id']}/curve", headers=ALICE)
    assert response.status_code == 409 and response.json()["code"] == "curve_not_ready"


# ---- auth and tenants ------------------------------------------------------------------------------------------
def test_missing_or_wrong_key_is_401(http):
    assert submit(http, headers={}).status_code == 401
    response = http.get("/v1/jobs", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_a_tenant_sees_and_cancels_only_its_own_jobs(http):
    job = submit(http).json()
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/attempts"),
                         ("GET", "/solution")]:
        response = http.request(method, f"/v1/jobs/{job['id']}{path}", headers=BOB)
        assert response.status_code == 404, path
    assert job["id"] not in [j["id"] for j in http.get("/v1/jobs", headers=BOB).json()["data"]]
    assert http.get(f"/v1/jobs/{job['id']}", headers=ALICE).json()["status"] == "queued"


# ---- idempotency, cancel, listing ------------------------------------------------------------------------------
def test_idempotency_key_returns_the_same_job_and_refuses_another_body(http):
    headers = {**ALICE, "Idempotency-Key": "retry-me-1"}
    first = submit(http, headers=headers)
    again = submit(http, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = submit(http, {"problem": PROBLEM, "budget": 64}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert submit(http, headers={**BOB, "Idempotency-Key": "retry-me-1"}).json()["id"] != first.json()["id"]
    assert submit(http).json()["id"] != submit(http).json()["id"]  # no key: two jobs


def test_cancel_a_queued_job_is_immediate_and_idempotent(http, api):
    job = submit(http).json()
    with Client(api.url, KEYS["alice"]) as client:
        assert client.cancel(job["id"]).status == "cancelled"
        cancelled = client.cancel(job["id"])
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert job["id"] in [j.id for j in client.list(status="cancelled", limit=100).data]
        assert job["id"] not in [j.id for j in client.list(status="queued", limit=100).data]
        events = client.event_page(job["id"]).data
        assert [e.data["status"] for e in events] == ["queued", "cancelled"]
        with pytest.raises(NotFound):
            client.get("job_0123456789abcdef012345")


def test_list_pages_newest_first_without_overlap(api, redis_url):
    with ApiServer(api_settings(redis_url, f"paging-{os.getpid()}")) as fresh, Client(fresh.url, KEYS["bob"]) as c:
        ids = [c.submit(PROBLEM, budget=16, settings={"attempts_per_step": 4}).id for _ in range(5)]
        first = c.list(limit=2)
        second = c.list(limit=2, after=first.last_id)
        third = c.list(limit=2, after=second.last_id)
        listed = [j.id for page in (first, second, third) for j in page.data]
        assert listed == ids[::-1]
        assert first.has_more and second.has_more and not third.has_more


# ---- limits ----------------------------------------------------------------------------------------------------
def test_rate_limit_and_active_job_cap(redis_url):
    with ApiServer(api_settings(redis_url, f"limits-{os.getpid()}", rate_limit_per_minute=8,
                                max_active_jobs=2)) as api, httpx.Client(base_url=api.url) as http:
        assert submit(http).status_code == 201
        assert submit(http).status_code == 201
        capped = submit(http)
        assert capped.status_code == 429 and capped.json()["code"] == "too_many_active_jobs"
        statuses = [http.get("/v1/jobs", headers=ALICE).status_code for _ in range(6)]
        assert statuses[-1] == 429 and 200 in statuses
        with Client(api.url, KEYS["alice"], max_retries=0) as client, pytest.raises(RateLimited) as caught:
            client.list()
        assert "rate limit" in str(caught.value)
        assert http.get("/v1/jobs", headers=BOB).status_code == 200  # another tenant has its own budget


def test_cancelling_a_finished_job_is_409(http, api, redis_url):
    job = submit(http).json()
    import asyncio

    from workers.store import open_store

    async def finish():
        store = open_store(redis_url, f"api-{os.getpid()}")
        await store.transition(job["id"], tenant="alice", allowed_from=["queued"], to="exhausted")
        await store.close()

    asyncio.run(finish())
    with Client(api.url, KEYS["alice"]) as client, pytest.raises(Conflict) as caught:
        client.cancel(job["id"])
    assert caught.value.code == "job_finished"


# ---- health ----------------------------------------------------------------------------------------------------
def test_health_readiness_and_metrics(http, api, redis_url):
    import json
    import time

    import redis

    assert http.get("/healthz").json() == {"status": "ok"}
    # Ready with no worker at all (workers may scale to zero); their count is reported, not required.
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["redis"] is True
    assert ready.json()["workers"] == 0 and "no worker" in ready.json()["detail"]
    with redis.Redis.from_url(redis_url) as r:
        r.hset(f"api-{os.getpid()}:workers", "w1", json.dumps({"seen_at": time.time()}))
        r.hset(f"api-{os.getpid()}:workers", "gone", json.dumps({"seen_at": time.time() - 3600}))
    assert http.get("/readyz").json() == {"status": "ready", "redis": True, "workers": 1, "detail": ""}
    submit(http)
    text = http.get("/metrics").text
    assert "sdpo_jobs{status=\"queued\"}" in text and "sdpo_step_seconds_bucket" in text
    assert "sdpo_queue_depth" in text and "sdpo_verifier_outcomes_total" in text
    assert http.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["operationId"] == "jobs-create_job"
    assert http.get("/docs").status_code == 200


# ---- schemathesis ----------------------------------------------------------------------------------------------
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
schema.config.generation.update(modes=list(schemathesis.GenerationMode))  # valid and invalid inputs


@pytest.fixture(scope="module")
def fuzz_api(redis_url):
    import json
    import time

    import redis

    prefix = f"fuzz-{os.getpid()}"
    with redis.Redis.from_url(redis_url) as r:  # a worker heartbeat, as a running service has
        r.hset(f"{prefix}:workers", "fuzz-worker", json.dumps({"seen_at": time.time() + 3600}))
    with ApiServer(api_settings(redis_url, prefix, max_active_jobs=10_000, rate_limit_per_minute=100_000)) as api:
        yield api


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_server_errors_on_any_input(case, fuzz_api):
    case.call_and_validate(base_url=fuzz_api.url, headers=ALICE, checks=[not_a_server_error], timeout=10)


# ---- batches and key configuration -----------------------------------------------------------------------------
def test_batch_with_concurrency_queues_some_and_cancel_stops_all(api):
    with Client(api.url, KEYS["alice"]) as client:
        batch = client.submit_batch([PROBLEM, PROBLEM, PROBLEM], concurrency=1, budget=16,
                                    settings={"attempts_per_step": 4}, metadata={"suite": "smoke"})
        assert batch.status == "in_progress" and len(batch.job_ids) == 3 and batch.counts == {"queued": 3}
        assert batch.metadata == {"suite": "smoke"} and batch.curve is None
        assert client.get(batch.job_ids[0]).batch_id == batch.id
        cancelled = client.cancel_batch(batch.id)
        assert cancelled.status == "cancelled" and cancelled.counts == {"cancelled": 3}
        assert client.cancel_batch(batch.id).status == "cancelled"  # idempotent
    with Client(api.url, KEYS["bob"]) as other, pytest.raises(NotFound):
        other.get_batch(batch.id)


def test_api_keys_from_a_file_and_malformed_configuration(tmp_path):
    import json

    from service.auth import KeyConfigError, hash_key, load_keys, tenant_for

    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"tenant": "acme", "sha256": hash_key("s3cret")}]}))
    keys = load_keys(Settings(api_keys_file=path, api_keys=f"zeta={hash_key('z')}"))
    assert "s3cret" not in json.dumps(keys)  # only hashes are held
    assert tenant_for(keys, "Bearer s3cret", allow_anonymous=False) == "acme"
    assert tenant_for(keys, "Bearer z", allow_anonymous=False) == "zeta"
    assert tenant_for(keys, "Basic s3cret", allow_anonymous=False) is None
    assert tenant_for(keys, None, allow_anonymous=True) == "anonymous"
    with pytest.raises(KeyConfigError, match="SHA-256"):
        load_keys(Settings(api_keys="acme=plaintext-key"))
    path.write_text("not json")
    with pytest.raises(KeyConfigError, match="keys.json"):
        load_keys(Settings(api_keys_file=path))


def test_readiness_fails_only_when_redis_is_unreachable():
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    with ApiServer(Settings(redis_url=nothing_there, worker_stale_s=10)) as api:
        ready = httpx.get(f"{api.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["redis"] is False and ready.json()["status"] == "not_ready"
        assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200  # alive all the same
