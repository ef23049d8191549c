"""A job is done when its answer is found: the best-of-k comparison is a part of the job with its own state.

Through the API and the SDK, on one real worker (tiny model, real Redis): a job that solves in its first step is
`succeeded` before its baseline is done, and the baseline then stops once its estimate is settled, well under its
cap; a second job on the same problem reuses those samples (another tenant's does not); a batch of one problem draws
them once; cancelling a job, or its comparison once the outcome is final, stops the baseline; a worker killed while
a baseline draws leaves the job's outcome as it was.
"""

from __future__ import annotations

import os
import signal

import pytest
from service_env import KEYS, ApiServer, Workers, api_settings, running_service, wait_for

from service.client import Client

# The tiny random model writes a digit in about half of its 8-token attempts: a first step of 8 solves (p ~ 0.996),
# while best-of-k's P(solved within 8) needs a few dozen samples to settle to 0.1.
DIGIT = {"id": "digit", "prompt": "Say a number", "verifier": {"type": "regex", "pattern": "[0-9]",
                                                               "target": "completion", "full_match": False}}
NEVER = {"id": "never", "prompt": "Say the secret",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}
ONE_STEP = {"attempts_per_step": 8, "max_new_tokens": 8}
CAP = [{"attempts": 512}]


@pytest.fixture(scope="module")
def service(redis_url, tiny_model_dir, tmp_path_factory):
    with running_service(redis_url, f"answer-{os.getpid()}", tiny_model_dir, tmp_path_factory) as (api, workers), \
            Client(api.url, KEYS["alice"], timeout=30) as alice, Client(api.url, KEYS["bob"], timeout=30) as bob:
        yield alice, bob, workers


def baseline_ended(client: Client, job_id: str, timeout: float = 180):
    return wait_for(lambda: (j := client.get(job_id)).baseline.state not in ("pending", "running") and j,
                    timeout=timeout, interval=0.2, message="the baseline's end")


def order_of(client: Client, job_id: str) -> list[str]:
    """The job's status and baseline-state changes, in the order its event stream has them."""
    seen = []
    for event in client.event_page(job_id, limit=1000).data:
        if event.type == "status":
            seen.append(event.data["status"])
        elif event.type == "baseline":
            seen.append(f"baseline {event.data['baseline_state']}")
    return seen


def test_a_job_that_solves_early_is_final_before_its_baseline_which_stops_once_settled(service):
    alice, _, workers = service
    job = alice.submit(DIGIT, method="best-of-k", budget=8, settings=ONE_STEP, baselines=CAP)
    final = alice.wait(job.id, timeout=120, poll_s=0.1)
    assert final.status == "succeeded", workers.logs()
    done = baseline_ended(alice, job.id)
    order = order_of(alice, job.id)
    assert order.index("succeeded") < order.index("baseline done"), order
    assert done.status == "succeeded" and done.finished_at == final.finished_at  # the baseline never changed it
    assert 8 <= done.baseline.samples < 512 and done.baseline.reused_samples == 0  # it stopped when settled
    low, high = alice.curve(job.id).comparison.baseline_interval
    assert high - low <= 0.10


def test_a_second_job_on_the_same_problem_reuses_the_baseline_and_another_tenant_does_not(service):
    alice, bob, _ = service
    first = alice.solve({**DIGIT, "id": "digit-1"}, method="best-of-k", budget=8, settings=ONE_STEP, baselines=CAP,
                        timeout=120, poll_s=0.1).job
    first = baseline_ended(alice, first.id)
    second = alice.solve({**DIGIT, "id": "digit-2"}, method="best-of-k", budget=8, settings={**ONE_STEP, "seed": 7},
                         baselines=CAP, timeout=120, poll_s=0.1)
    assert second.job.baseline.state == "done"
    assert second.job.baseline.samples == second.job.baseline.reused_samples == first.baseline.samples
    assert second.comparison.baseline_samples == first.baseline.samples  # the curve rests on the reused samples
    theirs = baseline_ended(bob, bob.submit(DIGIT, method="best-of-k", budget=8, settings=ONE_STEP,
                                            baselines=CAP).id)
    assert theirs.baseline.reused_samples == 0 and theirs.baseline.samples >= 8  # tenants share nothing


def test_a_batch_of_one_problem_draws_its_baseline_once(service):
    alice, _, _ = service
    problem = {**DIGIT, "prompt": "Say a digit"}  # samples no earlier test drew
    result = alice.solve_batch([problem] * 3, concurrency=3, method="best-of-k", budget=8, settings=ONE_STEP,
                               baselines=CAP, timeout=180, poll_s=0.2)
    jobs = [baseline_ended(alice, r.job.id) for r in result.results]
    assert {j.status for j in jobs} == {"succeeded"} and {j.baseline.state for j in jobs} == {"done"}
    total = jobs[0].baseline.samples
    assert all(j.baseline.samples == total for j in jobs)
    assert sum(j.baseline.samples - j.baseline.reused_samples for j in jobs) == total  # drawn once, read twice


def test_cancelling_a_job_or_its_comparison_stops_the_baseline(service):
    alice, _, workers = service
    # No sample succeeds: the estimate settles only after ~28 x the budget; the job is exhausted after one step.
    job = alice.submit(NEVER, method="best-of-k", budget=8, settings=ONE_STEP, baselines=[{"attempts": 2048}])
    final = alice.wait(job.id, timeout=120, poll_s=0.1)
    assert final.status == "exhausted" and final.baseline.state in ("pending", "running"), workers.logs()
    assert alice.cancel(job.id).status == "exhausted"  # the comparison is cancelled, the outcome stays
    cancelled = baseline_ended(alice, job.id, timeout=60)
    assert cancelled.status == "exhausted" and cancelled.baseline.state == "cancelled"
    assert cancelled.baseline.samples < 2048
    assert alice.get(job.id).baseline.samples == cancelled.baseline.samples  # it draws no more

    running = alice.submit(NEVER, budget=100_000, settings={"attempts_per_step": 4, "max_new_tokens": 8},
                           baselines=[{"attempts": 100_000 // 50}])
    wait_for(lambda: alice.get(running.id).attempts >= 8, timeout=60, message="attempts")
    alice.cancel(running.id)
    ended = alice.wait(running.id, timeout=60, poll_s=0.1)
    assert ended.status == "cancelled" and ended.baseline.state == "cancelled", workers.logs()


def test_a_worker_killed_while_the_baseline_draws_leaves_the_outcome_intact(redis_url, tiny_model_dir, tmp_path):
    prefix = f"answer-kill-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    with ApiServer(api_settings(redis_url, prefix)) as api, Client(api.url, KEYS["bob"]) as client:
        first = workers.start(lease_ms=1500)
        job = client.submit({**NEVER, "prompt": "Say the other secret"}, method="best-of-k", budget=8,
                            settings=ONE_STEP, baselines=[{"attempts": 2048}])
        final = client.wait(job.id, timeout=120, poll_s=0.1)
        wait_for(lambda: client.get(job.id).baseline.samples >= 16, timeout=60, message="baseline samples")
        first.send_signal(signal.SIGKILL)
        first.wait()
        workers.start(lease_ms=1500)
        try:
            after = baseline_ended(client, job.id, timeout=60)
        finally:
            workers.stop_all()
        assert after.baseline.state == "interrupted", workers.logs()
        assert (after.status, after.attempts, after.finished_at) == ("exhausted", 8, final.finished_at)
        assert [a.index for a in client.attempts(job.id)] == list(range(1, 9))
        assert after.baseline.samples >= 16  # what it drew before the kill stands
