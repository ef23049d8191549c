"""The client SDK's retry policy and errors, against scripted transports (no server)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.client import AsyncClient, BadRequest, Client, NotFound, ServerError, ServiceUnreachable

PROBLEM = {"prompt": "What is 2 + 2?", "verifier": {"type": "numeric", "answer": 4}}
JOB = {
    "id": "job_0123456789abcdef012345", "status": "queued", "created_at": 1.0, "method": "sdpo", "budget": 16,
    "problem": PROBLEM, "settings": {"max_attempts": 16, "attempts_per_step": 4},
}


def scripted(answers: list, seen: list[httpx.Request]):
    """A transport answering with `answers` in turn: a status code (problem details body), a dict (201), or an
    exception to raise."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, dict):
            return httpx.Response(201, json=answer)
        headers = {"Retry-After": "0"} if answer == 429 else {}
        return httpx.Response(answer, json={"status": answer, "title": "x", "detail": f"scripted {answer}",
                                            "code": f"c{answer}"}, headers=headers)

    return handler


def test_submit_retries_429_5xx_and_connection_errors_with_one_idempotency_key():
    seen: list[httpx.Request] = []
    answers = [503, 429, httpx.ConnectError("refused"), JOB]
    with Client("http://sdpo.test", "k", backoff_s=0.001, transport=httpx.MockTransport(scripted(answers, seen))) as c:
        job = c.submit(PROBLEM, budget=16, settings={"attempts_per_step": 4})
    assert job.id == JOB["id"] and len(seen) == 4
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(keys) == 1 and next(iter(keys))
    assert all(r.headers["Authorization"] == "Bearer k" for r in seen)


def test_errors_say_what_went_wrong_and_are_not_retried_when_final():
    seen: list[httpx.Request] = []
    with Client("http://sdpo.test", backoff_s=0.001, max_retries=2,
                transport=httpx.MockTransport(scripted([422, 404, 500, 500, 500], seen))) as c:
        with pytest.raises(BadRequest) as bad:
            c.get("job_x")
        assert bad.value.status == 422 and "scripted 422" in str(bad.value) and bad.value.code == "c422"
        with pytest.raises(NotFound):
            c.get("job_x")
        with pytest.raises(ServerError):
            c.get("job_x")
    assert len(seen) == 2 + 3  # 422 and 404 once each, 500 three times (1 + 2 retries)


def test_unreachable_server_raises_after_retries_and_async_client_behaves_the_same():
    seen: list[httpx.Request] = []
    failing = [httpx.ConnectError("refused")] * 3
    with Client("http://sdpo.test", backoff_s=0.001, max_retries=2,
                transport=httpx.MockTransport(scripted(list(failing), seen))) as c, \
            pytest.raises(ServiceUnreachable, match="cannot reach"):
        c.list()

    async def run() -> str:
        answers = [502, JOB]
        async with AsyncClient("http://sdpo.test", backoff_s=0.001,
                               transport=httpx.MockTransport(scripted(answers, seen))) as c:
            return (await c.submit(PROBLEM, budget=16, settings={"attempts_per_step": 4})).id

    assert asyncio.run(run()) == JOB["id"]


def test_cli_submit_with_bad_settings_is_a_one_line_error(tmp_path, capsys):
    """Options the client refuses never reach the network, and the user gets the field, not a traceback."""
    import json

    from service.cli import main

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"max_attempts": 0}))
    problem = tmp_path / "p.json"
    problem.write_text(json.dumps({"prompt": "q", "verifier": {"type": "exact", "answer": "1"}}))
    assert main(["submit", str(problem), "--settings", str(settings), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "settings.max_attempts" in err[0] and err[0].startswith("sdpo: error:")


# ---- one protocol, two I/O styles ----------------------------------------------------------------------------------
def test_client_and_async_client_offer_the_same_methods():
    """Both classes are generated from one protocol: same public methods, same signatures, the async ones awaited."""
    import inspect

    from service.client import API_METHODS

    def public(cls) -> dict[str, inspect.Signature]:
        return {name: inspect.signature(getattr(cls, name)) for name in dir(cls)
                if not name.startswith("_") and callable(getattr(cls, name))}

    sync, asynchronous = public(Client), public(AsyncClient)
    assert set(sync) - {"close"} == set(asynchronous) - {"aclose"}
    assert {"wait_batch", "solve_batch", "events", "attempts", "download_adapter"} <= set(API_METHODS)
    for name in API_METHODS:
        assert sync[name] == asynchronous[name], name
        call = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call), name


BATCH = {"id": "batch_0123456789abcdef012345", "status": "in_progress", "created_at": 1.0, "method": "sdpo",
         "budget": 16, "job_ids": [JOB["id"]], "counts": {"queued": 1}}
SSE = (b"id: 1-0\nevent: status\ndata: {\"status\": \"running\"}\n\n: ping\n\n"
       b"id: 2-0\nevent: status\ndata: {\"status\": \"succeeded\"}\n\n")


def test_both_clients_wait_for_a_batch_and_follow_events_the_same_way():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=SSE, headers={"content-type": "text/event-stream"})
        polls.append(request.url.path)
        return httpx.Response(200, json={**BATCH, "status": "completed" if len(polls) > 2 else "in_progress"})

    polls: list[str] = []
    with Client("http://sdpo.test", transport=httpx.MockTransport(handler)) as c:
        sync_batch = c.wait_batch(BATCH["id"], poll_s=0.001)
        sync_events = [(e.id, e.data["status"]) for e in c.events(JOB["id"])]
    sync_polls, polls[:] = len(polls), []

    async def run():
        async with AsyncClient("http://sdpo.test", transport=httpx.MockTransport(handler)) as c:
            batch = await c.wait_batch(BATCH["id"], poll_s=0.001)
            return batch, [(e.id, e.data["status"]) async for e in c.events(JOB["id"])]

    async_batch, async_events = asyncio.run(run())
    assert sync_batch == async_batch and sync_batch.status == "completed" and sync_polls == len(polls) == 3
    assert sync_events == async_events == [("1-0", "running"), ("2-0", "succeeded")]


def test_the_light_client_imports_nothing_of_the_server():
    """The SDK, the schemas and the CLI's client commands import neither `workers` nor server or torch packages; in
    an install without the server extras, `sdpo serve` says what to install instead of failing on an import."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('pydantic_settings', 'redis', 'fastapi', 'torch'): sys.modules[name] = None  # not installed\n"
        "import service.client, service.schemas\n"
        "from service.cli import main\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
        "               & {'workers', 'torch', 'redis', 'fastapi', 'transformers', 'pydantic_settings'})\n"
        "print(heavy)\n"
        "sys.exit(main(['serve', '--port', '1']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
    assert done.returncode == 2 and "pip install 'sdpo-discovery[server" in done.stderr


def test_a_refusal_the_server_marks_final_is_not_retried():
    """A 429 for a spent storage quota (hours away) carries x-should-retry: false; the client gives up at once."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(429, json={"status": 429, "detail": "quota", "code": "storage_quota_exceeded"},
                              headers={"Retry-After": "3600", "x-should-retry": "false"})

    with Client("http://sdpo.test", transport=httpx.MockTransport(handler)) as c, pytest.raises(Exception) as caught:
        c.submit(PROBLEM)
    assert caught.value.code == "storage_quota_exceeded" and len(seen) == 1
