"""Running the service for tests: the API under uvicorn in a thread, workers as real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from conftest import free_port

from service.app import create_app
from service.auth import hash_key
from service.config import Settings

KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}
CHECKPOINT_KEY = "test-checkpoint-key-shared-by-the-workers"  # so that a worker can resume another's checkpoint


def api_settings(redis_url: str, prefix: str, **overrides) -> Settings:
    keys = ",".join(f"{tenant}={hash_key(key)}" for tenant, key in KEYS.items())
    return Settings(**{"redis_url": redis_url, "redis_prefix": prefix, "api_keys": keys, "worker_stale_s": 10,
                       "sse_ping_s": 1.0, **overrides})


class ApiServer:
    """uvicorn serving create_app(settings) on a free loopback port, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Workers:
    """Worker subprocesses on the tiny model, sharing one checkpoint directory (or `checkpoint_url`, s3://...)."""

    redis_url: str
    prefix: str
    model: Path
    checkpoint_dir: Path
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    checkpoint_url: str | None = None

    def start(self, *, lease_ms: int = 2000, max_jobs: int = 4, max_tries: int = 3,
              checkpoint_dir: Path | None = None, log_format: str = "json",
              extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_path(len(self.processes)), "w")  # noqa: SIM115 - lives with the process
        command = [
            sys.executable, "-m", "service.cli", "worker", "--model", str(self.model), "--redis-url", self.redis_url,
            "--prefix", self.prefix, "--checkpoint-dir", str(checkpoint_dir or self.checkpoint_dir),
            "--lease-ms", str(lease_ms), "--poll-ms", "200", "--max-jobs", str(max_jobs), "--max-tries",
            str(max_tries), "--max-batch-size", "16", "--log-level", "info", "--log-format", log_format, *extra_args,
        ]
        if self.checkpoint_url:
            command += ["--checkpoint-url", self.checkpoint_url]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "SDPO_CHECKPOINT_KEY": CHECKPOINT_KEY, **(env or {})}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=Path(__file__).resolve().parent.parent)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"worker-{index}.log"

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.log_dir.glob("worker-*.log")))


def wait_for(predicate, *, timeout: float, interval: float = 0.1, message: str = "condition"):
    """Poll `predicate` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {message}"
        time.sleep(interval)


@contextmanager
def running_service(redis_url: str, prefix: str, model: Path, tmp_path_factory) -> Iterator[tuple[ApiServer, Workers]]:
    """The API and one worker (max 4 interleaved jobs) under `prefix`, once the worker is live; stopped after."""
    workers = Workers(redis_url, prefix, model, tmp_path_factory.mktemp("ckpt"), tmp_path_factory.mktemp("log"))
    with ApiServer(api_settings(redis_url, prefix, checkpoint_dir=workers.checkpoint_dir)) as api:
        workers.start()
        try:
            wait_for(lambda: httpx.get(f"{api.url}/readyz").json()["workers"] >= 1, timeout=120, message="a live worker")
            yield api, workers
        finally:
            workers.stop_all()
