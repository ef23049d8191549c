"""Structured logs: the JSON and text formatters, and the real `sdpo worker` and `sdpo serve` writing one JSON object
per line that carries the job, tenant and worker it concerns."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import free_port
from service_env import KEYS, ApiServer, Workers, api_settings, wait_for

from service.auth import hash_key
from service.client import Client
from workers.logs import JsonFormatter, TextFormatter, log_context

EASY = {"id": "easy", "prompt": "Say a", "verifier": {"type": "regex", "pattern": "a", "target": "completion",
                                                      "full_match": False}}
ROOT = Path(__file__).resolve().parent.parent


def record(message: str, *args, **extra) -> logging.LogRecord:
    return logging.getLogger("t").makeRecord("t", logging.WARNING, __file__, 1, message, args, None, extra=extra)


def test_json_lines_carry_ids_from_the_context_or_extra():
    formatter = JsonFormatter()
    with log_context(job_id="job_1", tenant="acme"):
        inside = json.loads(formatter.format(record("step %s", 3, attempts=12)))
        overridden = json.loads(formatter.format(record("x", job_id="job_2")))
    outside = json.loads(formatter.format(record("after")))
    assert inside["message"] == "step 3" and inside["level"] == "WARNING" and inside["logger"] == "t"
    assert (inside["job_id"], inside["tenant"], inside["attempts"]) == ("job_1", "acme", 12)
    assert inside["ts"].endswith("Z") and "T" in inside["ts"]
    assert overridden["job_id"] == "job_2" and overridden["tenant"] == "acme"
    assert "job_id" not in outside and "tenant" not in outside
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "bad", (), sys.exc_info())
    line = formatter.format(failed)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc_info"]


def test_text_lines_append_the_ids():
    with log_context(job_id="job_1"):
        assert TextFormatter().format(record("hello")).endswith("t: hello [job_id=job_1]")
    assert TextFormatter().format(record("hello")).endswith("t: hello")


FORGED = "2026-01-02 03:04:05,678 INFO service.access: GET /v1/admin 200 1 ms [tenant=admin]"
BREAKERS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


def test_a_value_with_a_line_break_cannot_start_a_text_log_line():
    """Log forging (issue 17, item 7): every character that ends a line in some reader is escaped in the message and
    the ids, and a traceback's lines are indented, so each record is one line at the left margin."""
    formatter = TextFormatter()
    for breaker in BREAKERS:
        with log_context(job_id=f"job_1{breaker}{FORGED}", tenant="acme"):
            text = formatter.format(record("GET %s 404", f"/v1/jobs/x{breaker}{FORGED}"))
        assert len(text.splitlines()) == 1, repr(text)
        assert text.count(FORGED) == 2 and not text.startswith(FORGED)
    colours = formatter.format(record("name \x1b[2J\x1b[31mred"))
    assert "\x1b" not in colours and "\\x1b[31mred" in colours  # no terminal escape sequences either
    try:
        raise ValueError(f"bad id\n{FORGED}")
    except ValueError:
        failed = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "bad", (), sys.exc_info())
    lines = formatter.format(failed).splitlines()
    assert lines[0].endswith("t: bad") and len(lines) > 2
    assert all(line.startswith("    ") for line in lines[1:])  # the traceback stays below its record
    assert any(line.strip() == FORGED for line in lines[1:])


def test_json_lines_escape_every_line_break():
    formatter = JsonFormatter()
    for breaker in BREAKERS:
        message = f"GET /v1/jobs/x{breaker}{FORGED}"
        with log_context(job_id=f"job{breaker}1"):
            line = formatter.format(record("%s", message))
        assert len(line.splitlines()) == 1, repr(line)
        assert json.loads(line)["message"] == message and json.loads(line)["job_id"] == f"job{breaker}1"


def test_a_request_path_with_an_encoded_newline_is_one_access_log_line(redis_url):
    """The real API: %0A in a path is decoded to a newline before the access log sees it."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, entry: logging.LogRecord) -> None:
            lines.append(self.format(entry))

    handler = Collect()
    handler.setFormatter(TextFormatter())
    access = logging.getLogger("service.access")
    level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with ApiServer(api_settings(redis_url, f"forge-{os.getpid()}")) as api:
            forged = "x%0A2026-01-02%2003:04:05,678%20INFO%20service.access:%20GET%20/v1/admin%20200"
            assert httpx.get(f"{api.url}/v1/jobs/{forged}", headers={"Authorization": f"Bearer {KEYS['alice']}"}
                             ).status_code == 404
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    [line] = [line for line in lines if "/v1/jobs/x" in line]
    assert "\n" not in line and "x\\n2026-01-02 03:04:05,678 INFO" in line and "404" in line


def json_lines(path: Path) -> list[dict]:
    """Every line of the file as JSON: a line that is not (a progress bar, a print) fails the test."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path} is empty"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON line in {path.name}: {line[:200]!r}") from exc
    return parsed


def test_worker_logs_json_with_job_tenant_and_worker(redis_url, tiny_model_dir, tmp_path):
    prefix = f"logs-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    with ApiServer(api_settings(redis_url, prefix)) as api, Client(api.url, KEYS["alice"]) as client:
        worker = workers.start(log_format="json")
        job = client.submit(EASY, budget=4, settings={"attempts_per_step": 4, "max_new_tokens": 8}, baselines=[])
        assert client.wait(job.id, timeout=120, poll_s=0.2).status == "succeeded", workers.logs()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    lines = json_lines(workers.log_path(0))
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    about_job = [line for line in lines if line.get("job_id") == job.id]
    assert {line["message"].split(": ", 1)[1] for line in about_job} >= {"running (try 1)", "succeeded after 4 attempts"}
    assert all(line["tenant"] == "alice" for line in about_job)
    worker_ids = {line.get("worker") for line in lines if line["logger"] == "workers.worker"}
    assert len(worker_ids) == 1 and None not in worker_ids  # every worker line names the one worker


def test_serve_logs_one_json_line_per_request_with_tenant_and_job(redis_url, tmp_path):
    port = free_port()
    env = {**os.environ, "SDPO_API_KEYS": f"alice={hash_key(KEYS['alice'])}", "SDPO_REDIS_PREFIX": f"slog-{os.getpid()}"}
    env.pop("SDPO_LOG_FORMAT", None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--redis-url", redis_url,
             "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, timeout=60, message="sdpo serve")
            headers = {"Authorization": f"Bearer {KEYS['alice']}"}
            job = httpx.post(f"{url}/v1/jobs", headers=headers, json={"problem": EASY, "budget": 4, "settings": {"attempts_per_step": 4}}).json()
            assert httpx.get(f"{url}/v1/jobs/{job['id']}", headers=headers).status_code == 200
            assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
            time.sleep(0.3)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    lines = json_lines(log_path)
    requests = {line["message"].rsplit(" ", 3)[0]: line for line in lines if line["logger"] == "service.access"}
    read = requests[f"GET /v1/jobs/{job['id']}"]
    assert read["tenant"] == "alice" and read["job_id"] == job["id"] and read["status"] == 200
    assert requests["POST /v1/jobs"]["tenant"] == "alice" and requests["POST /v1/jobs"]["status"] == 201
    assert requests["GET /v1/jobs"]["status"] == 401 and "tenant" not in requests["GET /v1/jobs"]
    assert any(line["logger"].startswith("uvicorn") for line in lines), "uvicorn's own lines are JSON too"
    assert not any("color_message" in line for line in lines), "terminal colour codes stay out of JSON logs"
