"""Inputs that used to give 500s (issue 17, item 6): non-finite numbers anywhere in a request, regular expressions
that `re` cannot compile, event and attempt cursors out of range. Each is a 4xx naming its field, through the real
API on a real Redis, and a refused request stores nothing."""

from __future__ import annotations

import json
import os
import typing

import httpx
import pytest
import redis
from pydantic import BaseModel
from service_env import KEYS, ApiServer, api_settings

from service.schemas import BatchCreate, JobCreate

ALICE = {"Authorization": f"Bearer {KEYS['alice']}", "Content-Type": "application/json"}
PREFIX = f"hostile-inputs-{os.getpid()}"
NUMERIC = {"type": "numeric", "answer": 4}


def problem(verifier: dict | None = None) -> dict:
    return {"prompt": "What is 2 + 2?", "verifier": verifier or NUMERIC}


@pytest.fixture(scope="module")
def api(redis_url):
    with ApiServer(api_settings(redis_url, PREFIX, rate_limit_per_minute=100_000, max_active_jobs=1000)) as server:
        yield server


@pytest.fixture
def http(api):
    with httpx.Client(base_url=api.url, timeout=30, headers=ALICE) as client:
        yield client


@pytest.fixture
def stored(redis_url):
    """What the API has stored under the module's prefix: job hashes, batches, the tenant's byte count."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def keys() -> dict[str, object]:
        return {"jobs": sorted(client.scan_iter(f"{PREFIX}:job:*")), "batches": sorted(client.scan_iter(
            f"{PREFIX}:batch:*")), "bytes": client.get(f"{PREFIX}:tenant:alice:bytes")}

    yield keys
    client.close()


def post_raw(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    """POST `body` as JSON text the way a client may write it: float('inf') as Infinity, float('nan') as NaN (both
    outside JSON proper, but Python's and JavaScript's parsers read them)."""
    text = json.dumps(body, allow_nan=True)
    assert "Infinity" in text or "NaN" in text
    return http.post(path, content=text)


INF, NAN = float("inf"), float("nan")
NON_FINITE = [
    ("/v1/jobs", {"problem": problem(), "settings": {"temperature": INF}}, "settings.temperature"),
    ("/v1/jobs", {"problem": problem(), "settings": {"sdpo": {"learning_rate": NAN}}}, "settings.sdpo.learning_rate"),
    ("/v1/jobs", {"problem": problem({**NUMERIC, "abs_tol": INF})}, "problem.verifier.numeric.abs_tol"),
    ("/v1/jobs", {"problem": problem({**NUMERIC, "rel_tol": NAN})}, "problem.verifier.numeric.rel_tol"),
    ("/v1/jobs", {"problem": problem({**NUMERIC, "answer": -INF})}, "problem.verifier.numeric.answer"),
    ("/v1/jobs", {"problem": problem({"type": "checklist", "checks": [{"kind": "number", "max": INF}]})},
     "problem.verifier.checklist.checks.0.number.max"),
    ("/v1/jobs", {"problem": problem({"type": "reasoning_gym", "dataset": "basic_arithmetic",
                                      "config": {"weights": [1, NAN]}})},
     "problem.verifier.reasoning_gym.config.weights"),
    ("/v1/jobs", {"problem": problem({"type": "webhook", "url": "https://example.com/v", "secret": "s" * 16,
                                      "timeout_s": NAN})}, "problem.verifier.webhook.timeout_s"),
    ("/v1/jobs", {"problem": problem(), "budget": INF}, "budget"),
    ("/v1/jobs", {"problem": problem(), "baselines": [{"attempts": INF}]}, "baselines.0.attempts"),
    ("/v1/batches", {"problems": [problem(), problem({**NUMERIC, "abs_tol": INF})]},
     "problems.1.verifier.numeric.abs_tol"),
]


@pytest.mark.parametrize(("path", "body", "field"), NON_FINITE, ids=[case[2] for case in NON_FINITE])
def test_a_non_finite_number_is_a_422_naming_the_field_and_nothing_is_stored(http, stored, path, body, field):
    before = stored()
    response = post_raw(http, path, body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "invalid_request"
    assert any(e["field"].startswith(field) for e in error["errors"]), error
    assert field in error["detail"]
    assert stored() == before  # no job, no batch, no bytes: nothing a later read could choke on
    assert http.get("/v1/jobs").status_code == 200


def test_every_request_model_refuses_non_finite_numbers():
    """allow_inf_nan applies to one model, not to the models inside it: every model a request can reach says so."""
    seen: set[type[BaseModel]] = set()

    def walk(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            seen.add(annotation)
            for info in annotation.model_fields.values():
                walk(info.annotation)
            return
        for argument in typing.get_args(annotation):
            walk(argument)

    walk(JobCreate)
    walk(BatchCreate)
    assert len(seen) > 15  # the requests, the problem, every verifier spec and check, the settings
    assert [m.__name__ for m in seen if m.model_config.get("allow_inf_nan") is not False] == []


@pytest.mark.parametrize("pattern", ["x{4294967295}", "(" * 1000 + ")" * 1000, "a**"])
def test_a_pattern_re_cannot_compile_is_a_422_naming_the_field(http, stored, pattern):
    before = stored()
    body = {"problem": problem({"type": "regex", "pattern": pattern})}
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["errors"][0]["field"] == "problem.verifier.regex.pattern"
    assert "not a valid regular expression" in error["detail"]
    assert stored() == before
    body["problem"]["verifier"]["pattern"] = "x{4294967294}"  # the largest count re accepts
    assert http.post("/v1/jobs", json=body).status_code == 201


def test_event_cursors_out_of_range_are_a_400_naming_the_parameter(http):
    job = http.post("/v1/jobs", json={"problem": problem()}).json()["id"]
    events = f"/v1/jobs/{job}/events"
    first = http.get(events).json()["data"][0]["id"]
    for cursor in (f"{2**64}-0", f"0-{2**64}", "99999999999999999999-1", "1-", "-1", "1-2-3"):
        response = http.get(events, params={"after": cursor})
        assert response.status_code == 400, (cursor, response.text)
        assert response.json()["code"] == "invalid_cursor" and response.json()["errors"][0]["field"] == "after"
        response = http.get(events, headers={"Last-Event-ID": cursor})
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == "Last-Event-ID"
    largest = f"{2**64 - 1}-{2**64 - 1}"  # the largest id Redis takes: nothing after it
    assert http.get(events, params={"after": largest}).json()["data"] == []
    assert http.get(events, params={"after": "0-0"}).json()["data"][0]["id"] == first


def test_attempt_cursors_out_of_range_are_a_422_naming_the_parameter(http):
    job = http.post("/v1/jobs", json={"problem": problem()}).json()["id"]
    for cursor in (str(2**64), "-1", "1e3", "x"):
        response = http.get(f"/v1/jobs/{job}/attempts", params={"after": cursor})
        assert response.status_code == 422, (cursor, response.text)
        assert response.json()["errors"][0]["field"] == "query.after"
    assert http.get(f"/v1/jobs/{job}/attempts", params={"after": 0}).json()["data"] == []
