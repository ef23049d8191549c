"""What the API refuses or trims so that one tenant's request cannot hurt the service or another tenant (issue 12):
settings that would break other jobs on a worker, gold answers no verifier can evaluate, batches that can never fit
the active-job cap, listings that would carry whole problems, adapters read whole into memory."""

from __future__ import annotations

import os

import httpx
import pytest
from service_env import KEYS, ApiServer, api_settings

ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
PROBLEM = {"prompt": "What is 2 + 2?", "verifier": {"type": "numeric", "answer": 4}}
CAP = 5


@pytest.fixture(scope="module")
def api(redis_url):
    settings = api_settings(redis_url, f"limits-{os.getpid()}", max_active_jobs=CAP, rate_limit_per_minute=10_000)
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
