"""What the API refuses or trims so that one tenant's request cannot hurt the service or another tenant (issue 12):
settings that would break other jobs on a worker, gold answers no verifier can evaluate, batches that can never fit
the active-job cap, listings that would carry whole problems, adapters read whole into memory."""

from __future__ import annotations

import os

import httpx
import pytest
from service_env import KEYS, ApiServer, api_settings

from workers.checkpoint import ADAPTER, CHUNK_BYTES, BlobStream

ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
PROBLEM = {"prompt": "What is 2 + 2?", "verifier": {"type": "numeric", "answer": 4}}
CAP = 5


@pytest.fixture(scope="module")
def api(redis_url, tmp_path_factory):
    settings = api_settings(redis_url, f"tenant-limits-{os.getpid()}", max_active_jobs=CAP, rate_limit_per_minute=10_000,
                            checkpoint_dir=tmp_path_factory.mktemp("blobs"))
    with ApiServer(settings) as server:
        yield server


@pytest.fixture
def http(api):
    with httpx.Client(base_url=api.url, timeout=30, headers=ALICE) as client:
        yield client


def cancel_all(http: httpx.Client) -> None:
    for job in http.get("/v1/jobs", params={"status": "queued", "limit": 100}).json()["data"]:
        http.post(f"/v1/jobs/{job['id']}/cancel")


@pytest.mark.parametrize("module", ["lm_head", "embed_tokens", "qproj"])
def test_target_modules_outside_the_projections_get_422_naming_the_field(http, module):
    body = {"problem": PROBLEM, "settings": {"sdpo": {"target_modules": ["q_proj", module]}}}
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["errors"][0]["field"] == "settings.sdpo.target_modules"
    assert f"'{module}' cannot carry an adapter" in error["detail"]


def test_a_batch_larger_than_the_active_job_cap_is_422_not_a_retryable_429(http):
    response = http.post("/v1/batches", json={"problems": [PROBLEM] * (CAP + 1), "concurrency": 1})
    assert response.status_code == 422 and "Retry-After" not in response.headers
    error = response.json()
    assert error["code"] == "batch_exceeds_active_job_cap" and error["errors"][0]["field"] == "problems"
    assert f"{CAP + 1} problems" in error["detail"] and "split it" in error["detail"]
    fits = http.post("/v1/batches", json={"problems": [PROBLEM] * CAP})
    assert fits.status_code == 201
    full = http.post("/v1/batches", json={"problems": [PROBLEM]})  # fits the cap, not the room left: retry later
    assert full.status_code == 429 and "Retry-After" in full.headers
    http.post(f"/v1/batches/{fits.json()['id']}/cancel")


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_listings_carry_no_problems_and_never_read_them(http, redis_client):
    """A job's problem can be megabytes of tests: a page of jobs (or a batch) must neither return nor read it."""
    cancel_all(http)
    big = {**PROBLEM, "id": "big-one", "prompt": "Q" * 400_000}
    job = http.post("/v1/jobs", json={"problem": big, "budget": 32})
    assert job.status_code == 201
    batch = http.post("/v1/batches", json={"problems": [{**PROBLEM, "prompt": "R" * 300_000}] * 2})
    assert batch.status_code == 201
    redis_client.config_resetstat()
    page = http.get("/v1/jobs", params={"limit": 10})
    batch_page = http.get(f"/v1/batches/{batch.json()['id']}")
    assert page.status_code == 200 and batch_page.status_code == 200
    assert len(page.content) < 20_000 and len(batch_page.content) < 20_000
    sent = redis_client.info("stats")["total_net_output_bytes"]
    assert sent < 100_000, f"Redis sent {sent} bytes for a page of jobs and a batch: the problems were read"
    listed = next(j for j in page.json()["data"] if j["id"] == job.json()["id"])
    assert "problem" not in listed and "settings" not in listed
    assert listed["problem_id"] == "big-one" and listed["question"] == "Q" * 200 and listed["verifier"] == "numeric"
    assert (listed["method"], listed["budget"], listed["status"]) == ("auto", 32, "queued")  # the default method
    assert http.get(f"/v1/jobs/{job.json()['id']}").json()["problem"]["prompt"] == big["prompt"]  # one job: whole
    cancel_all(http)


def test_a_job_stored_before_summaries_is_listed_from_its_spec(http, redis_client, api):
    """Records written before the `summary` field existed still list, with the same summary a new one gets."""
    cancel_all(http)
    prefix = api.server.config.app.state.settings.redis_prefix
    old, new = (http.post("/v1/jobs", json={"problem": {**PROBLEM, "id": label}}).json()["id"] for label in ("old", "new"))
    redis_client.hdel(f"{prefix}:job:{old}", "summary")
    listed = {j["id"]: j for j in http.get("/v1/jobs", params={"limit": 10}).json()["data"]}
    assert listed[old]["problem_id"] == "old" and listed[old]["question"] == PROBLEM["prompt"]
    assert {k: v for k, v in listed[old].items() if k not in ("id", "problem_id", "created_at")} == \
        {k: v for k, v in listed[new].items() if k not in ("id", "problem_id", "created_at")}
    cancel_all(http)


def test_an_adapter_download_streams_in_pieces(http, redis_client, api, monkeypatch):
    """The archive (hundreds of MB at high rank) goes out of the checkpoint store in pieces, never read whole into
    the API."""
    job = http.post("/v1/jobs", json={"problem": PROBLEM, "budget": 32}).json()
    state = api.server.config.app.state
    blobs, prefix = state.blobs, state.settings.redis_prefix
    archive = os.urandom(3 * CHUNK_BYTES + 12345)
    blobs.save(job["id"], archive, ADAPTER)
    redis_client.hset(f"{prefix}:job:{job['id']}", mapping={"status": "succeeded", "adapter": "1"})
    pieces: list[int] = []
    stream = blobs.stream

    def counted(*args, **kwargs):
        blob = stream(*args, **kwargs)
        return BlobStream(blob.size, (pieces.append(len(p)) or p for p in blob.chunks))

    def whole(*args, **kwargs):
        raise AssertionError("the adapter was read whole")

    monkeypatch.setattr(blobs, "stream", counted)
    monkeypatch.setattr(blobs, "load", whole)
    response = http.get(f"/v1/jobs/{job['id']}/adapter")
    assert response.status_code == 200 and response.content == archive
    assert response.headers["content-length"] == str(len(archive))
    assert len(pieces) == 4 and max(pieces) == CHUNK_BYTES, pieces
