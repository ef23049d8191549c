"""API throughput and latency: POST /v1/jobs and GET /v1/jobs/{id} against a real Redis.

    .venv/bin/python benchmarks/bench_api.py [--seconds 10] [--clients 4] [--concurrency 8]

Starts a redis-server on a free loopback port and the API under uvicorn in its own process (no workers: submitted
jobs stay queued), then drives it from a second process pool: `--clients` processes, each running `--concurrency`
asyncio tasks with one keep-alive httpx connection each, for `--seconds` per phase. Prints requests per second and
p50/p99 latency as seen by the clients. Every request loop is bounded by count and time; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time

import httpx
from scaffold import API_KEY as KEY
from scaffold import PROBLEM, free_port, start_redis

MAX_REQUESTS_PER_TASK = 200_000


def serve(port: int, redis_url: str, prefix: str) -> None:
    """The API process."""
    import uvicorn

    from service.app import create_app
    from service.auth import hash_key
    from service.config import Settings

    settings = Settings(redis_url=redis_url, redis_prefix=prefix, api_keys=f"bench={hash_key(KEY)}",
                        rate_limit_per_minute=10_000_000, max_active_jobs=10_000_000)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _task(url: str, phase: str, job_ids: list[str], until: float, latencies: list[float]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30,
                                 limits=httpx.Limits(max_connections=1)) as client:
        for i in range(MAX_REQUESTS_PER_TASK):
            if time.perf_counter() >= until:
                return
            start = time.perf_counter()
            if phase == "post":
                response = await client.post("/v1/jobs", json={"problem": PROBLEM, "budget": 64, "baselines": []})
            else:
                response = await client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}")
            latencies.append(time.perf_counter() - start)
            if response.status_code >= 300:
                raise RuntimeError(f"{phase}: {response.status_code} {response.text[:200]}")
            if phase == "post" and len(job_ids) < 1000:
                job_ids.append(response.json()["id"])


def load(url: str, phase: str, concurrency: int, seconds: float, job_ids: list[str], out: mp.Queue) -> None:
    """One load-generating process: `concurrency` tasks for `seconds`; sends back its latencies and job ids."""
    latencies: list[float] = []
    ids = list(job_ids)
    until = time.perf_counter() + seconds

    async def main() -> None:
        await asyncio.gather(*(_task(url, phase, ids, until, latencies) for _ in range(concurrency)))

    asyncio.run(main())
    out.put((latencies, ids[:200]))


def run_phase(url: str, phase: str, *, clients: int, concurrency: int, seconds: float,
              job_ids: list[str]) -> tuple[dict[str, float], list[str]]:
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=load, args=(url, phase, concurrency, seconds, job_ids, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    latencies = sorted(x for lat, _ in results for x in lat)
    ids = [i for _, batch in results for i in batch]
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(latencies), "rps": len(latencies) / seconds, "p50_ms": q[49] * 1000,
            "p99_ms": q[98] * 1000}, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    parser.add_argument("--clients", type=int, default=2, help="load-generating processes")
    parser.add_argument("--concurrency", type=int, default=8, help="connections per load process")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-api-")
    redis, redis_url = start_redis(workdir)
    api_port = free_port()
    api = mp.Process(target=serve, args=(api_port, redis_url, f"bench-{os.getpid()}"))
    api.start()
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.1)
        print(f"API: 1 uvicorn process; load: {args.clients} processes x {args.concurrency} connections, "
              f"{args.seconds:g} s per phase; {os.cpu_count()} CPU cores shared by all", flush=True)
        print(f"{'request':<22}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
        ids: list[str] = []
        for phase, label in (("post", "POST /v1/jobs"), ("get", "GET /v1/jobs/{id}")):
            stats, found = run_phase(url, phase, clients=args.clients, concurrency=args.concurrency,
                                     seconds=args.seconds, job_ids=ids)
            ids = ids or found
            print(f"{label:<22}{stats['requests']:>10}{stats['rps']:>10.0f}{stats['p50_ms']:>10.1f}"
                  f"{stats['p99_ms']:>10.1f}", flush=True)
    finally:
        api.terminate()
        api.join(timeout=10)
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
