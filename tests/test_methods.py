"""Methods as objects (issue 20, item 1): every method is one class in sdpo_core.methods and one registry line, and
everything that lists methods reads the registry. A toy method, added only as tests/toy_method.py and named in
SDPO_METHOD_MODULES, runs through `sdpo solve`, the API with a real worker, and `sdpo bench discovery`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import toy_method  # noqa: F401 - registers latest-feedback in this process (the API's)
from service_env import KEYS, ApiServer, Workers, api_settings

from sdpo_core.methods import METHODS, learns
from sdpo_core.settings import RunSettings
from service.client import Client

SDPO = str(Path(sys.executable).parent / "sdpo")
TOY = "latest-feedback"
TESTS = str(Path(__file__).resolve().parent)
PLUGIN_ENV = {"SDPO_METHOD_MODULES": "toy_method", "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get(
    "PYTHONPATH", "")])}
NEVER = {"id": "never", "prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra"}}


def test_the_registry_is_the_one_list_of_methods():
    assert list(METHODS)[:4] == ["auto", "sdpo", "best-of-k", "multi-turn"] and TOY in METHODS
    assert [name for name in METHODS if learns(name)] == ["auto", "sdpo", "hybrid"]
    assert RunSettings(method=TOY).method == TOY
    with pytest.raises(ValueError, match="unknown method 'nope': choose among auto, sdpo"):
        RunSettings(method="nope")
    assert RunSettings.model_json_schema()["properties"]["method"]["enum"] == list(METHODS)


def run_sdpo(*args, timeout=600):
    return subprocess.run([SDPO, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **PLUGIN_ENV})


def test_a_toy_method_runs_through_sdpo_solve(tmp_path, tiny_model_dir):
    problem = tmp_path / "problem.json"
    problem.write_text(json.dumps(NEVER))
    assert TOY in run_sdpo("solve", "--help").stdout  # the CLI's choices
    proc = run_sdpo("solve", problem, "--model", tiny_model_dir, "--method", TOY, "--max-attempts", 6,
                    "--attempts-per-step", 3, "--max-new-tokens", 6, "--baseline-attempts", 0, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["result"]
    assert result["method"] == TOY and result["status"] == "exhausted" and len(result["attempts"]) == 6


def test_a_toy_method_runs_through_the_bench(tmp_path, tiny_model_dir):
    problems = tmp_path / "set.jsonl"
    problems.write_text(json.dumps(NEVER) + "\n")
    proc = run_sdpo("bench", "discovery", "--problems", problems, "--model", tiny_model_dir, "--seeds", 1,
                    "--budget", 4, "--attempts-per-step", 2, "--max-new-tokens", 6, "--out", tmp_path / "out",
                    "--quiet", "--methods", f"{TOY},best-of-k")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "discovery.json").read_text())
    assert report["problems"][0]["outcomes"][TOY]["first_success"] == [None]
    assert TOY in run_sdpo("bench", "discovery", "--help").stdout  # the default method list


def test_a_toy_method_runs_through_the_api_and_a_worker(redis_url, tiny_model_dir, tmp_path_factory):
    prefix = f"methods-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path_factory.mktemp("ckpt"),
                      tmp_path_factory.mktemp("log"))
    with ApiServer(api_settings(redis_url, prefix)) as api:
        spec = httpx.get(f"{api.url}/openapi.json").json()
        assert spec["components"]["schemas"]["RunSettings"]["properties"]["method"]["enum"] == list(METHODS)
        workers.start(env=PLUGIN_ENV)
        client = Client(api.url, KEYS["alice"], timeout=30)
        try:
            job = client.wait(client.submit(NEVER, method=TOY, budget=6, baselines=[],
                                            settings={"attempts_per_step": 3, "max_new_tokens": 6}).id,
                              timeout=300, poll_s=0.3)
            assert job.status == "exhausted" and job.method == TOY and job.attempts == 6, workers.logs()
            progress = [e.data for e in client.event_page(job.id).data if e.type == "progress"]
            assert progress and all(data["method"] == TOY for data in progress)
        finally:
            client.close()
            workers.stop_all()
