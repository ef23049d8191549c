"""The service end to end: SDK -> API -> Redis -> worker subprocesses on the tiny model -> results.

Covers a solved job with attempts, curve and a peft-loadable adapter; SSE resume with Last-Event-ID; cancelling a
running job; a batch; a job that cannot run; `kill -9` of a worker mid-job with a second worker resuming from a
shared directory or from object storage (S3); and SIGTERM handing jobs back without leaving queue entries behind.
"""

from __future__ import annotations

import io
import os
import signal
import tarfile

import httpx
import pytest
from service_env import KEYS, ApiServer, Workers, api_settings, running_service, wait_for

from service.client import Client

EASY = {"id": "easy", "prompt": "Say a", "verifier": {"type": "regex", "pattern": "a", "target": "completion",
                                                      "full_match": False}}
NEVER = {"id": "never", "prompt": "Say the secret",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}
SMALL = {"attempts_per_step": 4, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def service(redis_url, tiny_model_dir, tmp_path_factory):
    """The API and one worker (max 4 interleaved jobs) under a prefix of their own."""
    with running_service(redis_url, f"e2e-{os.getpid()}", tiny_model_dir, tmp_path_factory) as (api, workers), \
            Client(api.url, KEYS["alice"], timeout=30) as client:
        yield api, client, workers


def test_solve_reports_attempts_curve_and_adapter(service, tmp_path, tiny_model_dir):
    api, client, workers = service
    result = client.solve(EASY, budget=16, settings=SMALL, timeout=120, poll_s=0.2)
    job = result.job
    assert job.status == "succeeded", workers.logs()
    assert job.started_at and job.finished_at and job.finished_at >= job.started_at >= job.created_at
    assert result.solution.solved and "a" in result.solution.attempt.text
    attempts = client.attempts(job.id)
    assert [a.index for a in attempts] == list(range(1, job.attempts + 1))
    assert attempts[job.first_success_attempt - 1].solved
    assert not any(a.solved for a in attempts[:job.first_success_attempt - 1])
    assert job.baseline and job.baseline.state in ("pending", "running", "done")  # the answer does not wait for it
    ended = wait_for(lambda: (j := client.get(job.id)).baseline.state == "done" and j, timeout=120,
                     message="the baseline's end")
    assert 4 <= ended.baseline.samples <= 32  # at most twice the budget by default, fewer once settled
    labels = [c.label for c in result.comparison.curves]
    assert labels == ["auto", "best-of-k"] and result.comparison.curves[0].mean[-1] == 1.0  # the default method
    assert client.curve_svg(job.id).startswith("<svg")

    archive = client.download_adapter(job.id, tmp_path / "adapter.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    assert any("lora_A" in name for name, _ in model.named_parameters())

    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'sdpo_verifier_outcomes_total{outcome="solved"}' in metrics
    assert "sdpo_attempts_total" in metrics and 'sdpo_jobs_finished_total{status="succeeded"}' in metrics


def test_an_auto_job_reports_each_decision_and_its_reason_as_an_event(service, tmp_path):
    """The API's auto method: every step's decision (what it samples next, whether it distils, why) is a job
    event; its adapter is kept like SDPO's."""
    _, client, workers = service
    job = client.submit(NEVER, method="auto", budget=12, settings=SMALL, baselines=[])
    final = client.wait(job.id, timeout=120, poll_s=0.2)
    assert final.status == "exhausted" and final.method == "auto", workers.logs()
    progress = [e.data for e in client.event_page(job.id, limit=1000).data if e.type == "progress"]
    decisions = [d for d in progress if d["type"] == "decision"]
    assert [d["step"] for d in decisions] == [1, 2] and all(d["method"] == "auto" for d in decisions)
    assert all(d["reason"] for d in decisions)
    assert client.download_adapter(job.id, tmp_path / "auto.tar.gz").stat().st_size > 0


def test_sse_resumes_after_reconnect_with_last_event_id(service):
    api, client, _ = service
    job = client.submit(NEVER, budget=24, settings=SMALL, baselines=[])
    headers = {**client.headers, "Accept": "text/event-stream"}
    url = f"{api.url}/v1/jobs/{job.id}/events"

    def read(extra: dict, stop_after: int | None) -> list[tuple[str, str]]:
        seen, current = [], {}
        with httpx.stream("GET", url, headers={**headers, **extra}, timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith(("id:", "event:")):
                    key, _, value = line.partition(": ")
                    current[key] = value
                elif not line and "id" in current:
                    seen.append((current["id"], current["event"]))
                    current = {}
                    if stop_after and len(seen) == stop_after:
                        break
        return seen

    first = read({}, stop_after=3)
    rest = read({"Last-Event-ID": first[-1][0]}, stop_after=None)
    assert rest[-1][1] == "status"  # the stream ended with the job's final status
    everything = client.event_page(job.id, limit=1000).data
    assert [i for i, _ in first + rest] == [e.id for e in everything]
    assert client.get(job.id).status == "exhausted"


def test_cancel_a_running_job_stops_it_within_a_step(service):
    _, client, workers = service
    job = client.submit(NEVER, budget=100_000, settings=SMALL, baselines=[])
    running = wait_for(lambda: (j := client.get(job.id)).attempts >= 8 and j, timeout=60, interval=0.05,
                       message="attempts")
    assert client.cancel(job.id).cancel_requested_at is not None
    final = client.wait(job.id, timeout=30, poll_s=0.1)
    assert final.status == "cancelled", workers.logs()
    assert final.attempts <= running.attempts + 3 * SMALL["attempts_per_step"]
    assert client.cancel(job.id).status == "cancelled"  # idempotent
    assert len(client.attempts(job.id)) == final.attempts


def test_a_job_that_cannot_run_fails_with_a_reason_and_the_worker_goes_on(service):
    _, client, _ = service
    failed = client.wait(client.submit(EASY, budget=8, settings=SMALL, model="no-such-model").id, timeout=60,
                         poll_s=0.2)
    assert failed.status == "failed" and failed.error.code == "model_not_served"
    assert "no-such-model" in failed.error.message
    assert client.solve(EASY, budget=8, settings=SMALL, baselines=[], timeout=60, poll_s=0.2).job.status == "succeeded"


def test_batch_results_in_order_with_the_average_curve(service):
    _, client, _ = service
    problems = [EASY, NEVER, {**EASY, "id": "easy-2"}]
    result = client.solve_batch(problems, concurrency=2, budget=8, settings=SMALL, timeout=180, poll_s=0.3,
                                baselines=[{"attempts": 8}])
    assert [r.job.problem.id for r in result.results] == ["easy", "never", "easy-2"]
    assert [r.job.status for r in result.results] == ["succeeded", "exhausted", "succeeded"]
    assert result.batch.status == "completed" and result.batch.counts == {"succeeded": 2, "exhausted": 1}
    assert [c.label for c in result.curve.curves] == ["auto", "best-of-k"]
    assert result.curve.curves[0].mean[-1] == pytest.approx(2 / 3)
    assert client.list_batches().data[0].id == result.batch.id

    # "easy" and "never" ran at once (concurrency 2) in one worker: some step of each came from the same
    # generation call, which reports one shared generate time to every run it served.
    def generate_times(job_id: str) -> set[float]:
        return {e.data["metrics"]["seconds"]["generate"] for e in client.event_page(job_id, limit=1000).data
                if e.type == "progress" and e.data["type"] == "step"}

    easy, never = (r.job.id for r in result.results[:2])
    assert generate_times(easy) & generate_times(never)


def test_async_client_and_cli_commands(service, tmp_path, capsys):
    import asyncio
    import json

    from service.cli import main
    from service.client import AsyncClient

    api, _, _ = service

    async def solve_and_follow() -> tuple[str, list[str]]:
        async with AsyncClient(api.url, KEYS["alice"]) as client:
            job = await client.submit(EASY, budget=8, settings=SMALL, baselines=[])
            types = [event.type async for event in client.events(job.id)]
            return (await client.wait(job.id, timeout=60, poll_s=0.2)).status, types

    status, types = asyncio.run(solve_and_follow())
    assert status == "succeeded" and types[0] == "status" and "progress" in types and types[-1] == "status"

    flags = ["--url", api.url, "--api-key", KEYS["alice"]]
    (tmp_path / "p.json").write_text(json.dumps(EASY))
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SMALL))
    assert main(["submit", str(tmp_path / "p.json"), "--budget", "8", "--settings", str(settings), "--wait",
                 "--json", *flags]) == 0
    job_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["status", job_id, *flags]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["events", job_id, *flags]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["type"] == "status" and lines[-1]["status"] == "succeeded"
    assert main(["curve", job_id, "-o", str(tmp_path / "c.svg"), *flags]) == 0
    assert (tmp_path / "c.svg").read_text().startswith("<svg")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({**EASY, "id": f"e{i}"}) for i in range(2)))
    assert main(["batch", str(tmp_path / "b.jsonl"), "--budget", "8", "--settings", str(settings), "--no-baseline",
                 *flags]) == 0
    assert capsys.readouterr().out.count("succeeded") == 2
    assert main(["status", "job_0123456789abcdef012345", *flags]) == 2
    assert "404" in capsys.readouterr().err


@pytest.mark.parametrize("storage", ["directory", "s3"])
def test_kill_9_mid_job_a_second_worker_resumes_without_losing_or_repeating_attempts(
        storage, redis_url, tiny_model_dir, tmp_path, request):
    """Worker A is killed -9 mid-job; worker B resumes from A's last checkpoint: in the directory both share, or in
    an S3 bucket (each worker then has a local directory of its own, which must stay empty)."""
    prefix = f"kill-{storage}-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    if storage == "s3":
        bucket, s3 = request.getfixturevalue("s3_bucket")
        workers.checkpoint_url = f"s3://{bucket}/runs"

    def local_dir(name: str):  # with S3 each worker gets a directory of its own; else both share tmp_path/ckpt
        return tmp_path / name if storage == "s3" else None

    def checkpoint_exists(job_id: str) -> bool:  # one blob per lease generation: runs-g<N>.pt
        if storage == "s3":
            return s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{job_id}/runs-g").get("KeyCount", 0) >= 1
        return any((tmp_path / "ckpt" / job_id).glob("runs-g*.pt"))

    with ApiServer(api_settings(redis_url, prefix)) as api, Client(api.url, KEYS["bob"]) as client:
        first = workers.start(lease_ms=1500, checkpoint_dir=local_dir("local-a"))
        budget = 160
        job = client.submit(NEVER, budget=budget, settings={**SMALL, "max_new_tokens": 12},
                            baselines=[{"attempts": 16}])
        wait_for(lambda: client.get(job.id).attempts >= 24, timeout=120, interval=0.05, message="progress")
        first.send_signal(signal.SIGKILL)
        first.wait()
        at_kill = client.get(job.id)
        assert at_kill.status == "running" and at_kill.attempts < budget, "the job ended before the kill"
        assert checkpoint_exists(job.id), f"no checkpoint in the {storage} store at the kill"
        workers.start(lease_ms=1500, checkpoint_dir=local_dir("local-b"))
        try:
            final = client.wait(job.id, timeout=180, poll_s=0.2)
        finally:
            workers.stop_all()
        assert final.status == "exhausted", workers.logs()
        attempts = client.attempts(job.id)
        assert [a.index for a in attempts] == list(range(1, budget + 1))  # none lost, none twice
        assert final.attempts == budget and final.baseline.samples == 16
        types = [e.type for e in client.event_page(job.id, limit=1000).data]
        assert "resumed" in types
        steps = [e.data for e in client.event_page(job.id, limit=1000).data
                 if e.type == "progress" and e.data["run"] == "method" and e.data["type"] == "step"]
        assert steps[-1]["attempts"] == budget
        assert not checkpoint_exists(job.id), "a finished job's checkpoints are deleted (its adapter stays)"
        if storage == "s3":  # nothing went to local disk
            assert not any((tmp_path / "local-a").rglob("*.pt")) and not any((tmp_path / "local-b").rglob("*.pt"))


def test_sigterm_hands_running_jobs_back_to_the_queue(redis_url, tiny_model_dir, tmp_path):
    prefix = f"term-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    with ApiServer(api_settings(redis_url, prefix)) as api, Client(api.url, KEYS["bob"]) as client:
        worker = workers.start()
        job = client.submit(NEVER, budget=100_000, settings=SMALL, baselines=[])
        wait_for(lambda: client.get(job.id).attempts >= 8, timeout=120, interval=0.05, message="progress")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        handed_back = client.get(job.id)
        assert handed_back.status == "queued", workers.logs()
        reasons = [e.data.get("reason") for e in client.event_page(job.id, limit=1000).data if e.type == "status"]
        assert "worker shut down" in reasons
        assert len(client.attempts(job.id)) == handed_back.attempts  # the last step was checkpointed and published

        # The job has now been started `max_tries` times without finishing: the next worker ends it `failed`.
        import redis

        with redis.Redis.from_url(redis_url) as r:
            r.hset(f"{prefix}:job:{job.id}", "tries", 3)
        workers.start(max_tries=3)
        try:
            failed = client.wait(job.id, timeout=120, poll_s=0.2)
        finally:
            workers.stop_all()
        assert failed.status == "failed" and failed.error.code == "job_keeps_failing", workers.logs()
        assert "started 3 times" in failed.error.message
        # The hand-back replaced the job's queue entry and the failure removed the new one: none is left behind
        # (a hand-back that only acknowledged its entry left it in the stream, and sdpo_queue_depth drifted up).
        with redis.Redis.from_url(redis_url) as r:
            assert r.xlen(f"{prefix}:queue") == 0
        assert "sdpo_queue_depth 0.0" in httpx.get(f"{api.url}/metrics").text


def test_adapter_archive_is_a_tarball_of_a_peft_folder():
    """The archive format alone (no worker): adapter/adapter_config.json + adapter/adapter_model.safetensors."""
    import torch

    from sdpo_core.settings import RunSettings
    from workers.checkpoint import adapter_archive

    settings = RunSettings()
    state = {"adapter": {"base_model.model.layers.0.q_proj.lora_A": torch.zeros(2, 4)}}
    with tarfile.open(fileobj=io.BytesIO(adapter_archive(state, settings, "tiny"))) as tar:
        assert sorted(tar.getnames()) == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
