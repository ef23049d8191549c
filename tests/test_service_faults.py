"""Faults, for real: Redis stopped (SIGTERM) and started again on its append-only file while one job runs on a worker
and two wait in the queue. Every job must survive and finish, the running one with each attempt recorded once, and
the worker must ride out the outage rather than exit, as it must when it starts before Redis does. (A worker killed mid-job is in test_service_workers.py, with
checkpoints in a shared directory and in S3.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import redis
from conftest import _redis_answers, free_port
from service_env import KEYS, ApiServer, Workers, api_settings, wait_for

from sdpo_core.statuses import FINISHED
from service.client import Client, SDPOError

NEVER = {"id": "never", "prompt": "Say the secret",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}
EASY = {"id": "easy", "prompt": "Say a", "verifier": {"type": "regex", "pattern": "a", "target": "completion",
                                                      "full_match": False}}
SMALL = {"attempts_per_step": 4, "max_new_tokens": 8}


class AofRedis:
    """redis-server writing an append-only file (fsync on every write) in `directory`, restartable on one port."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=open(self.directory / "redis.log", "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        wait_for(lambda: _redis_answers(self.port), timeout=20, interval=0.05, message="redis-server")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


def status(client: Client, job_id: str) -> str | None:
    try:
        return client.get(job_id).status
    except (SDPOError, httpx.HTTPError):
        return None  # the API answers 5xx while its Redis reconnects


def test_jobs_survive_a_redis_restart_on_its_append_only_file(tiny_model_dir, tmp_path):
    (tmp_path / "redis").mkdir()
    server = AofRedis(tmp_path / "redis")
    prefix = f"aof-{os.getpid()}"
    workers = Workers(server.url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    try:
        # The worker comes up first (as pods may): it waits for Redis with backoff instead of exiting.
        worker = workers.start(max_jobs=1, lease_ms=3000)
        wait_for(lambda: "redis unavailable" in workers.logs() or worker.poll() is not None, timeout=90,
                 message="the worker to find no Redis")
        assert worker.poll() is None, workers.logs()
        server.start()
        with ApiServer(api_settings(server.url, prefix)) as api, Client(api.url, KEYS["alice"]) as client:
            budget = 400  # long enough to be mid-run at the restart however fast the steps are
            running = client.submit(NEVER, budget=budget, settings=SMALL, baselines=[])
            wait_for(lambda: client.get(running.id).attempts >= 12, timeout=120, interval=0.05, message="progress")
            queued = [client.submit(EASY, budget=8, settings=SMALL, baselines=[]) for _ in range(2)]
            assert [client.get(j.id).status for j in queued] == ["queued", "queued"]  # the one worker slot is taken

            assert server.stop() == 0
            time.sleep(2.0)  # the worker meets a dead connection mid-step and backs off
            server.start()
            assert worker.poll() is None, "the worker exited when Redis went away:\n" + workers.logs()
            at_restart = client.get(running.id)
            assert at_restart.status == "running" and at_restart.attempts < budget, "the job ended before the restart"

            ids = [running.id] + [j.id for j in queued]
            wait_for(lambda: all(status(client, i) in FINISHED for i in ids), timeout=150, interval=0.3,
                     message="every job to finish after the restart")
            assert worker.poll() is None, workers.logs()
            final = client.get(running.id)
            assert final.status == "exhausted" and final.attempts == budget, workers.logs()
            assert [a.index for a in client.attempts(running.id)] == list(range(1, budget + 1))  # once each
            assert [client.get(j.id).status for j in queued] == ["succeeded", "succeeded"]
            assert workers.logs().count("redis unavailable") >= 2, workers.logs()  # at start, then at the restart
            with redis.Redis.from_url(server.url) as r:
                assert r.xlen(f"{prefix}:queue") == 0
    finally:
        workers.stop_all()
        if server.process and server.process.poll() is None:
            server.stop()
