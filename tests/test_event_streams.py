"""Open event streams cannot take the API down (issue 12.6): 200 SSE streams stay open while authentication,
/readyz, job reads and submissions go on answering; the streams hold no Redis connection each (one reader per
process wakes them); a tenant over its cap of open streams gets a clear 429, and closed streams give their slots
back."""

from __future__ import annotations

import asyncio
import os

import httpx
import redis
from service_env import KEYS, ApiServer, api_settings

ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
JOB = {"problem": {"prompt": "What is 2 + 2?", "verifier": {"type": "numeric", "answer": 4}}, "budget": 16,
       "settings": {"attempts_per_step": 4}}


async def open_stream(http: httpx.AsyncClient, job_id: str, headers: dict, stack) -> tuple[httpx.Response, object]:
    """An SSE stream of the job, read up to its first event (the stream is then surely established)."""
    response = await stack.enter_async_context(http.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={**headers, "Accept": "text/event-stream"}))
    assert response.status_code == 200, await response.aread()
    lines = response.aiter_lines()
    while await anext(lines) != "":
        pass
    return response, lines


def test_200_open_streams_leave_the_api_answering(redis_url):
    import contextlib

    prefix = f"streams-{os.getpid()}"
    settings = api_settings(redis_url, prefix, max_streams_per_tenant=150, redis_max_connections=16,
                            rate_limit_per_minute=100_000, sse_ping_s=30)

    async def scenario(url: str) -> None:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http, \
                contextlib.AsyncExitStack() as stack:
            alice_jobs = [(await http.post("/v1/jobs", json=JOB, headers=ALICE)).json()["id"] for _ in range(10)]
            bob_jobs = [(await http.post("/v1/jobs", json=JOB, headers=BOB)).json()["id"] for _ in range(5)]
            streams = await asyncio.gather(
                *[open_stream(http, alice_jobs[i % 10], ALICE, stack) for i in range(150)],
                *[open_stream(http, bob_jobs[i % 5], BOB, stack) for i in range(50)])
            assert len(streams) == 200

            # Over alice's cap: a clear 429; bob is not affected by alice's streams.
            over = await http.get(f"/v1/jobs/{alice_jobs[0]}/events", headers={**ALICE, "Accept": "text/event-stream"})
            assert over.status_code == 429 and over.json()["code"] == "too_many_streams"
            assert "150" in over.json()["detail"]

            # Everything else answers while the 200 streams are open.
            for _ in range(20):
                assert (await http.get("/readyz")).json()["status"] == "ready"
                assert (await http.get(f"/v1/jobs/{alice_jobs[1]}", headers=ALICE)).status_code == 200
                assert (await http.get("/v1/jobs", headers=BOB)).status_code == 200
                assert (await http.get("/v1/jobs", headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await http.post("/v1/jobs", json=JOB, headers=ALICE)).status_code == 201
            with redis.Redis.from_url(redis_url) as r:  # the streams hold no connection each
                clients = r.client_list()
            assert len(clients) < 40, len(clients)

            # A new event reaches every stream of that job (the one reader woke them).
            assert (await http.post(f"/v1/jobs/{bob_jobs[0]}/cancel", headers=BOB)).status_code == 200
            for _, lines in streams[150::5]:  # bob's streams on bob_jobs[0]
                event = [await asyncio.wait_for(anext(lines), 10) for _ in range(4)]
                assert "event: status" in event and any('"cancelled"' in line for line in event)

            # Closing streams gives their slots back.
            for response, _ in streams[:10]:
                await response.aclose()
            await asyncio.sleep(0.5)
            again = await stack.enter_async_context(http.stream(
                "GET", f"/v1/jobs/{alice_jobs[0]}/events", headers={**ALICE, "Accept": "text/event-stream"}))
            assert again.status_code == 200

    with ApiServer(settings) as api:
        asyncio.run(scenario(api.url))
