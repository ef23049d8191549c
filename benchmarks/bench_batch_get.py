"""What one GET of a finished batch costs the API: CPU time and latency, for the batch view and the batch listing.

    .venv/bin/python benchmarks/bench_batch_get.py [--jobs 1000] [--reads 5]

Starts a redis-server on a free loopback port and the API under uvicorn in a thread of this process, submits one
batch of `--jobs` problems (with best-of-k baselines), marks every job finished through the store (exhausted or
succeeded at a random attempt, with a random baseline count: no worker runs), then times `--reads` GETs of the
batch and of the listing. CPU time is this process's (the API's threads and the client together; the client's
share is a few milliseconds), so run nothing else in it. Every loop is bounded; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

import httpx

KEY = "bench-key-0123456789"
PROBLEM = {"prompt": "What is 17 * 23?", "verifier": {"type": "numeric", "answer": 391}}
BUDGET = 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def start_api(redis_url: str, jobs: int):
    import uvicorn

    from service.app import create_app
    from service.auth import hash_key
    from service.config import Settings

    settings = Settings(redis_url=redis_url, redis_prefix="bench", api_keys=f"bench={hash_key(KEY)}",
                        rate_limit_per_minute=10_000_000, max_active_jobs=jobs, max_body_bytes=50_000_000)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            return server, thread, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    raise RuntimeError("the API did not start")


async def finish_all(redis_url: str, job_ids: list[str]) -> None:
    """Every job ends as a worker would end it: exhausted, or succeeded at a random attempt, with its baseline."""
    from workers.store import open_store

    store = open_store(redis_url, "bench")
    rng = random.Random(0)
    for job_id in job_ids:
        first = rng.randint(1, BUDGET) if rng.random() < 0.4 else None
        samples = 2 * BUDGET
        fields = {"attempts": first or BUDGET, "first_success_attempt": first, "baseline_samples": samples,
                  "baseline_successes": rng.randint(0, samples // 8)}
        outcome, _ = await store.transition(job_id, tenant="bench", allowed_from=["queued"],
                                            to="succeeded" if first else "exhausted", fields=fields)
        assert outcome == "ok", outcome
    await store.close()


def timed(http: httpx.Client, path: str) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    response = http.get(path)
    response.raise_for_status()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        redis_process, redis_url = start_redis(directory)
        server, thread, url = start_api(redis_url, args.jobs)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as http:
                batch = http.post("/v1/batches", json={"problems": [PROBLEM] * args.jobs, "budget": BUDGET,
                                                       "settings": {"attempts_per_step": 8}})
                batch.raise_for_status()
                batch_id, job_ids = batch.json()["id"], batch.json()["job_ids"]
                asyncio.run(finish_all(redis_url, job_ids))
                for label, path in (("GET /v1/batches/{id}", f"/v1/batches/{batch_id}"),
                                    ("GET /v1/batches", "/v1/batches?limit=10")):
                    times = [timed(http, path) for _ in range(args.reads)]
                    first, rest = times[0], times[1:] or times
                    print(f"{label:24s} jobs={args.jobs} first: cpu {first[0] * 1000:8.1f} ms wall "
                          f"{first[1] * 1000:8.1f} ms | next {len(rest)}: cpu median "
                          f"{statistics.median(t[0] for t in rest) * 1000:8.1f} ms wall median "
                          f"{statistics.median(t[1] for t in rest) * 1000:8.1f} ms")
                view = http.get(f"/v1/batches/{batch_id}").json()
                print(f"counts {view['counts']}, curve over {view['curve']['problems']} problems")
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            redis_process.terminate()
            redis_process.wait(timeout=10)


if __name__ == "__main__":
    main()
