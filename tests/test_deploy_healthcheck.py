"""deploy/healthcheck.py, the images' HEALTHCHECK and the Kubernetes worker probes: against a real Redis server
and a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import importlib.util
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy/healthcheck.py")
healthcheck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(healthcheck)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it)")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def workers_hash(redis_url, monkeypatch):
    """Point the check at a fresh prefix; returns a function that writes a heartbeat like workers/worker.py."""
    import redis

    prefix = f"hc{time.monotonic_ns()}"
    monkeypatch.setenv("SDPO_REDIS_URL", redis_url)
    monkeypatch.setenv("SDPO_REDIS_PREFIX", prefix)
    monkeypatch.setenv("SDPO_WORKER_STALE_S", "60")
    client = redis.Redis.from_url(redis_url)

    def beat(host: str, age_s: float, info: str | None = None) -> None:
        worker = f"{host}-{4242 + (info is not None)}-ab12"
        client.hset(f"{prefix}:workers", worker, info or json.dumps({"seen_at": time.time() - age_s, "jobs": []}))

    return beat


def test_worker_with_a_fresh_heartbeat_is_healthy(workers_hash, capsys):
    workers_hash(socket.gethostname(), age_s=5)
    assert healthcheck.main(["worker"]) == 0
    assert capsys.readouterr().out.startswith("healthy: worker heartbeat")


def test_worker_with_a_stale_heartbeat_is_unhealthy(workers_hash, capsys):
    workers_hash(socket.gethostname(), age_s=120)
    assert healthcheck.main(["worker"]) == 1
    assert "120 s old" in capsys.readouterr().out


def test_another_hosts_heartbeat_does_not_count(workers_hash, capsys):
    workers_hash("some-other-pod", age_s=1)
    workers_hash(socket.gethostname() + "x", age_s=1)  # a longer hostname sharing our prefix
    assert healthcheck.main(["worker"]) == 1
    assert "no worker heartbeat" in capsys.readouterr().out


def test_unreachable_redis_does_not_fail_the_worker(monkeypatch, capsys):
    monkeypatch.setenv("SDPO_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert healthcheck.main(["worker", "--timeout", "1"]) == 0
    assert "redis unreachable" in capsys.readouterr().out


def test_malformed_heartbeats_are_ignored(workers_hash, capsys):
    host = "pod-a"
    entries = {f"{host}-1-aa": {"seen_at": "soon"}, f"{host}-2-bb": {"jobs": []}}
    assert healthcheck.fresh_heartbeat(entries, host, now=1000.0, stale_s=60)[0] is False
    entries[f"{host}-3-cc"] = {"seen_at": 990.0}
    assert healthcheck.fresh_heartbeat(entries, host, now=1000.0, stale_s=60) == (True, "worker heartbeat 10 s old")
    workers_hash(socket.gethostname(), age_s=5, info="not json")  # read through the store, which skips it
    workers_hash(socket.gethostname(), age_s=5)
    assert healthcheck.main(["worker"]) == 0
    assert capsys.readouterr().out.startswith("healthy: worker heartbeat")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_api_check_follows_the_http_status():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert healthcheck.main(["api", "--url", f"{base}/healthz"]) == 0
        assert healthcheck.main(["api", "--url", f"{base}/broken"]) == 1
    finally:
        server.shutdown()
    assert healthcheck.main(["api", "--url", f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "1"]) == 1
