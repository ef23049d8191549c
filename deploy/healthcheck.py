#!/usr/bin/env python3
"""Container health checks for the service images: Docker HEALTHCHECK and Kubernetes exec probes.

    python healthcheck.py api [--url URL]     GET the API's /healthz (default http://127.0.0.1:8000/healthz)
    python healthcheck.py worker              this container's worker has written a fresh heartbeat to Redis

Exit 0 when healthy, 1 when not, with one line that says why.

A worker (workers/worker.py) writes `{"seen_at": <unix time>, ...}` under the field `<hostname>-<pid>-<hex>` of
the hash `<prefix>:workers` every lease/3 seconds, from a task that keeps running while a step computes. No fresh
entry for this host means the worker is gone or hung (or still loading its model: the probes' start period covers
that). When Redis cannot be reached the check answers healthy: restarting workers cannot bring Redis back and
would throw away their loaded models; their jobs' leases protect the jobs meanwhile.

Settings come from the same environment variables as the service: SDPO_REDIS_URL, SDPO_REDIS_PREFIX and
SDPO_WORKER_STALE_S (seconds, default 60, as the API's /readyz uses). The worker check reads Redis through the
service's gateway (workers.store), so the key and the heartbeat's format are the ones the worker writes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def check_api(url: str, timeout_s: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"


def fresh_heartbeat(entries: dict[str, dict], host: str, now: float, stale_s: float) -> tuple[bool, str]:
    """Whether one of this host's workers wrote a heartbeat in the last `stale_s` seconds."""
    ages = []
    for worker_id, info in entries.items():
        if not worker_id.startswith(f"{host}-"):
            continue
        try:
            ages.append(now - float(info["seen_at"]))
        except (ValueError, KeyError, TypeError):
            continue
    if not ages:
        return False, f"no worker heartbeat from host {host}"
    age = min(ages)
    if age > stale_s:
        return False, f"the last heartbeat from host {host} is {age:.0f} s old (limit {stale_s:g} s)"
    return True, f"worker heartbeat {age:.0f} s old"


def check_worker(redis_url: str, prefix: str, stale_s: float, timeout_s: float) -> tuple[bool, str]:
    from workers.store import STORE_UNAVAILABLE, open_store

    async def heartbeats() -> dict[str, dict]:
        store = open_store(redis_url, prefix, max_connections=1)
        try:
            return await asyncio.wait_for(store.workers(), timeout_s)
        finally:
            await store.close()

    try:
        entries = asyncio.run(heartbeats())
    except (*STORE_UNAVAILABLE, TimeoutError, OSError) as exc:
        return True, f"redis unreachable ({exc}); not the worker's fault, so not restarting it"
    return fresh_heartbeat(entries, socket.gethostname(), time.time(), stale_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["api", "worker"])
    parser.add_argument("--url", default="http://127.0.0.1:8000/healthz", help="the API's health URL")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before a request counts as failed")
    args = parser.parse_args(argv)
    if args.role == "api":
        healthy, why = check_api(args.url, args.timeout)
    else:
        env = os.environ.get
        healthy, why = check_worker(env("SDPO_REDIS_URL", "redis://localhost:6379/0"), env("SDPO_REDIS_PREFIX", "sdpo"),
                                    float(env("SDPO_WORKER_STALE_S", "60")), args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
