"""A worker under hostile tenants (issue 12), end to end: API -> Redis -> a worker subprocess on the tiny model.

- a catastrophic regex verifier is cut off by the pool's hard limit while the worker keeps its lease;
- jobs with different LoRA target modules and ranks share generation batches, then a default job runs, and the
  worker is left with no adapter;
- a checkpoint planted in the store (a pickle that would run code) fails its job clearly and runs nothing;
- an older checkpoint of the same job, validly signed, put in place of the current one fails its job clearly;
- where the sandbox is below the required isolation, a code-running job fails with the reason.
"""

from __future__ import annotations

import io
import json
import os

import httpx
import pytest
import redis
import torch
from service_env import CHECKPOINT_KEY, KEYS, ApiServer, Workers, api_settings, wait_for

from sdpo_core.runs import comparison_settings
from service.client import Client
from workers.checkpoint import checkpoint_name, encode
from workers.jobs import JobSpec

NEVER = {"id": "never", "prompt": "Say the secret",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}
SMALL = {"attempts_per_step": 4, "max_new_tokens": 8}
WORKER_ENV = {
    "SDPO_VERIFY_ATTEMPT_TIMEOUT_S": "4",  # the hard limit of one verification, above the 2 s lease
    "SDPO_VERIFIER_WORKERS": "2",
    "SDPO_SANDBOX_ISOLATION": "unshare", "SDPO_SANDBOX_MIN_ISOLATION": "bwrap",  # a sandbox below the minimum
}


@pytest.fixture(scope="module")
def service(redis_url, tiny_model_dir, tmp_path_factory):
    prefix = f"isolation-{os.getpid()}"
    checkpoints = tmp_path_factory.mktemp("ckpt")
    workers = Workers(redis_url, prefix, tiny_model_dir, checkpoints, tmp_path_factory.mktemp("log"))
    with ApiServer(api_settings(redis_url, prefix)) as api:
        workers.start(lease_ms=2000, env=WORKER_ENV)
        client = Client(api.url, KEYS["alice"], timeout=30)
        wait_for(lambda: httpx.get(f"{api.url}/readyz").json()["workers"] >= 1, timeout=120, message="a live worker")
        try:
            yield client, workers, redis.Redis.from_url(redis_url), prefix
        finally:
            client.close()
            workers.stop_all()


def log_lines(workers: Workers) -> list[dict]:
    lines = []
    for text in (workers.log_path(0).read_text().splitlines()):
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


def test_a_backtracking_regex_is_cut_off_while_the_worker_keeps_its_lease(service):
    client, workers, r, prefix = service
    problem = {"id": "regex-bomb", "prompt": "Write anything",
               "verifier": {"type": "regex", "pattern": "(?s)(.|.)*Q", "target": "completion"}}
    job = client.wait(client.submit(problem, budget=4, settings={"attempts_per_step": 2, "max_new_tokens": 64},
                                    baselines=[]).id, timeout=300, poll_s=0.5)
    assert job.status == "exhausted", workers.logs()
    assert int(r.hget(f"{prefix}:job:{job.id}", "tries")) == 1, "the job was taken over: its lease ran out"
    feedback = {a.feedback for a in client.attempts(job.id)}
    assert any("did not finish within 4 s" in f for f in feedback), feedback
    lost = [line for line in log_lines(workers) if "lease lost" in line.get("message", "")]
    assert lost == [], lost


def test_jobs_with_different_target_modules_share_batches_then_a_default_job_runs(service):
    client, workers, _, _ = service
    narrow = client.submit(NEVER, budget=24, settings={**SMALL, "sdpo": {"target_modules": ["q_proj"],
                                                                          "lora_rank": 4}}, baselines=[])
    wide = client.submit(NEVER, budget=16, settings=SMALL, baselines=[])
    jobs = [client.wait(j.id, timeout=300, poll_s=0.3) for j in (narrow, wide)]
    later = client.wait(client.submit(NEVER, budget=8, settings=SMALL, baselines=[]).id, timeout=300, poll_s=0.3)
    assert [j.status for j in (*jobs, later)] == ["exhausted"] * 3, workers.logs()
    started = {j.id: j.started_at for j in jobs}
    assert max(started.values()) < min(j.finished_at for j in jobs), "the two jobs never ran at the same time"
    messages = [line.get("message", "") for line in log_lines(workers)]
    assert not any("joint step failed" in m for m in messages), "a shared generation batch failed"


def test_a_planted_checkpoint_fails_its_job_and_runs_nothing(service, tmp_path):
    """The second job of a batch waits (concurrency 1) while a pickle that would run code is planted as its
    checkpoint; when the worker admits it, the job fails with checkpoint_rejected and the code never ran."""
    client, workers, r, prefix = service

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    batch = client.submit_batch([NEVER, {**NEVER, "id": "second"}], budget=8, settings=SMALL, baselines=[],
                                concurrency=1)
    second = batch.job_ids[1]
    buffer = io.BytesIO()
    torch.save({"runs": {"method": RunsCode()}}, buffer)
    (workers.checkpoint_dir / second).mkdir()
    (workers.checkpoint_dir / second / "runs.pt").write_bytes(buffer.getvalue())
    job = client.wait(second, timeout=300, poll_s=0.3)
    assert job.status == "failed" and job.error.code == "checkpoint_rejected", (job, workers.logs())
    assert "not in this service's checkpoint format" in job.error.message
    assert not (tmp_path / "pwned").exists()


def test_a_replayed_older_checkpoint_fails_its_job_clearly(service):
    """Rollback (issue 17, item 7): jobs wait in a batch while their current checkpoints (named on their records)
    are replaced by validly signed older ones: another lease generation's blob, and an earlier step of the same
    blob. The worker refuses both and fails each job with checkpoint_rejected saying why; nothing is resumed."""
    client, workers, r, prefix = service
    batch = client.submit_batch([NEVER, {**NEVER, "id": "gen"}, {**NEVER, "id": "step"}], budget=8,
                                settings=SMALL, baselines=[], concurrency=1)
    current = checkpoint_name(3)
    for job_id, written_as, step in ((batch.job_ids[1], checkpoint_name(1), 5), (batch.job_ids[2], current, 1)):
        spec = JobSpec.model_validate_json(r.hget(f"{prefix}:job:{job_id}", "spec"))
        states = {key: {"problem": spec.problem.model_dump(mode="json"), "settings": settings.model_dump(mode="json"),
                        "step": step} for key, settings in comparison_settings(spec.settings, 0).items()}
        (workers.checkpoint_dir / job_id).mkdir()
        (workers.checkpoint_dir / job_id / current).write_bytes(
            encode(states, job_id=job_id, key=CHECKPOINT_KEY.encode(), name=written_as))
        r.hset(f"{prefix}:job:{job_id}", mapping={"checkpoint": current, "checkpoint_step": 2})
    generation, earlier = (client.wait(job_id, timeout=300, poll_s=0.3) for job_id in batch.job_ids[1:])
    for job, says in ((generation, f"{current} was written as {checkpoint_name(1)}"), (earlier, "holds step 1")):
        assert job.status == "failed" and job.error.code == "checkpoint_rejected", (job, workers.logs())
        assert says in job.error.message and job.attempts == 0


def test_a_code_job_below_the_required_isolation_fails_with_the_reason(service):
    client, workers, _, _ = service
    problem = {"id": "sum", "prompt": "Read a and b, print a + b.", "verifier": {
        "type": "code_io", "public_tests": [{"input": "1 2\n", "output": "3\n"}]}}
    job = client.wait(client.submit(problem, budget=4, settings=SMALL, baselines=[]).id, timeout=120, poll_s=0.3)
    assert job.status == "failed" and job.error.code == "verifier_unavailable", job
    assert "code-running verifiers are refused" in job.error.message
    assert "SDPO_SANDBOX_MIN_ISOLATION=bwrap" in job.error.message
    assert any("code-running verifiers are refused" in line.get("message", "") for line in log_lines(workers))
