"""Two tenants on one real worker (issue 17): a victim job beside each attacker, end to end through the API.

The worker has two job slots (so every pair shares its generation batches and verifier pool). Each attacker is
something a tenant may submit; the victim is bob's job of 8 attempts that a regex accepts whatever they say, so
every one of its attempts is a correct answer. For each attacker:
- the victim's attempts are the ones it samples alone (same seed), and every one is scored correct;
- a slow attacker (a verifier that sleeps, a regex that backtracks) delays only itself: the victim finishes while
  the attacker's first step is still being verified;
- a flood of one tenant's long jobs leaves the other tenant a slot (fair share);
- a giant step is refused over the cap, and one under it ends within a poll of its cancellation, mid-generation.
"""

from __future__ import annotations

import os

import httpx
import pytest
from service_env import KEYS, ApiServer, Workers, api_settings, wait_for

from service.client import Client

ACCEPT_ALL = {"id": "victim", "prompt": "Say anything.",
              "verifier": {"type": "regex", "pattern": "(?s).*", "target": "completion"}}
VICTIM = {"budget": 8, "method": "best-of-k", "baselines": [],
          "settings": {"attempts_per_step": 4, "max_new_tokens": 16, "seed": 7, "stop_at_first_success": False}}
NEVER = {"id": "never", "prompt": "Say the secret",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}
SLEEPER = {"id": "sleeper", "prompt": "Say anything.", "verifier": {
    "type": "python", "timeout_s": 120, "source": "import time\ndef verify(c):\n    time.sleep(100)\n    return 1.0"}}
BACKTRACKER = {"id": "backtracker", "prompt": "Write anything",
               "verifier": {"type": "regex", "pattern": "(?s)(.|.)*Q", "target": "completion"}}
WORKER_ENV = {"SDPO_VERIFIER_WORKERS": "1", "SDPO_VERIFY_ATTEMPT_TIMEOUT_S": "120"}


@pytest.fixture(scope="module")
def service(redis_url, tiny_model_dir, tmp_path_factory):
    prefix = f"tenants-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path_factory.mktemp("ckpt"),
                      tmp_path_factory.mktemp("log"))
    with ApiServer(api_settings(redis_url, prefix, max_step_tokens=32_768)) as api:
        workers.start(lease_ms=5000, max_jobs=2, env=WORKER_ENV,
                      extra_args=("--max-step-tokens", "32768", "--shutdown-grace-s", "2"))
        alice, bob = Client(api.url, KEYS["alice"], timeout=30), Client(api.url, KEYS["bob"], timeout=30)
        wait_for(lambda: httpx.get(f"{api.url}/readyz").json()["workers"] >= 1, timeout=120, message="a live worker")
        try:
            victim_alone = bob.wait(bob.submit(ACCEPT_ALL, **VICTIM).id, timeout=300, poll_s=0.3)
            assert victim_alone.status == "succeeded", workers.logs()
            yield alice, bob, workers, [a.text for a in bob.attempts(victim_alone.id)]
        finally:
            alice.close()
            bob.close()
            workers.stop_all()


def run_victim_beside(service, attacker_id: str):
    """Bob's victim job, submitted while alice's attacker runs; asserts what must hold whatever the attacker."""
    alice, bob, workers, alone = service
    wait_for(lambda: alice.get(attacker_id).status == "running", timeout=120, message="the attacker running")
    victim = bob.wait(bob.submit(ACCEPT_ALL, **VICTIM).id, timeout=300, poll_s=0.3)
    attempts = bob.attempts(victim.id)
    assert victim.status == "succeeded", (victim, workers.logs())
    assert [a.verdict for a in attempts] == ["ok"] * 8, [a.feedback for a in attempts]  # every one scored correct
    assert [a.text for a in attempts] == alone  # what it samples alone: the attacker changed nothing in its rows
    return victim


@pytest.mark.parametrize("attacker", [SLEEPER, BACKTRACKER], ids=["sleeping-verifier", "catastrophic-regex"])
def test_a_slow_verifier_delays_only_its_own_job(service, attacker):
    alice = service[0]
    attack = alice.submit(attacker, budget=16, settings={"attempts_per_step": 16, "max_new_tokens": 64},
                          baselines=[])
    run_victim_beside(service, attack.id)
    assert alice.get(attack.id).attempts == 0, "the victim waited for the attacker's verification"
    assert alice.wait(alice.cancel(attack.id).id, timeout=120, poll_s=0.3).status == "cancelled"


def test_an_adapter_at_the_edge_of_the_bounds_leaves_the_victim_as_it_is_alone(service):
    alice = service[0]
    wild = {"learning_rate": 0.1, "lora_alpha": 1024, "lora_rank": 1, "grad_clip": 100, "weight_decay": 0}
    attack = alice.submit(NEVER, budget=400, method="sdpo", baselines=[],
                          settings={"attempts_per_step": 4, "max_new_tokens": 16, "sdpo": wild})
    run_victim_beside(service, attack.id)
    job = alice.get(attack.id)
    assert job.steps >= 2, job  # its adapter had been updated while the victim sampled beside it
    if not job.done:
        job = alice.wait(alice.cancel(attack.id).id, timeout=120, poll_s=0.3)
    assert job.status == "cancelled" or (job.status == "failed" and job.error.code == "adapter_diverged"), job


def test_poisonous_and_oversized_settings_are_refused_by_field(service):
    alice = service[0]
    cases = [({"method": "sdpo", "settings": {"sdpo": {"learning_rate": 1e37, "lora_alpha": 5000}}},
              ["settings.sdpo.learning_rate", "settings.sdpo.lora_alpha"]),
             ({"settings": {"max_attempts": 1024, "attempts_per_step": 1024, "max_new_tokens": 65_536}},
              ["settings.max_new_tokens"]),
             ({"baselines": [{"attempts": 1_000_000}]}, ["baselines.0.attempts"])]
    for options, fields in cases:
        reply = httpx.post(f"{alice.base_url}/v1/jobs", json={"problem": NEVER, **options},
                           headers={"Authorization": f"Bearer {KEYS['alice']}"})
        assert reply.status_code == 422, reply.text
        named = {error["field"] for error in reply.json()["errors"]}
        assert set(fields) <= named, reply.json()


def test_a_giant_step_ends_within_a_poll_of_its_cancellation(service):
    """The largest step the test service's cap allows (1024 attempts x 32 tokens; about a minute on this model):
    cancelled once it runs, it ends cancelled before its first step's attempts exist: the generation stopped
    inside the step."""
    alice = service[0]
    giant = alice.submit(NEVER, budget=2048, baselines=[], method="best-of-k",
                         settings={"attempts_per_step": 1024, "max_new_tokens": 32})
    wait_for(lambda: alice.get(giant.id).status == "running", timeout=120, message="the giant job running")
    job = alice.wait(alice.cancel(giant.id).id, timeout=60, poll_s=0.2)
    assert job.status == "cancelled" and job.attempts == 0, job


def test_a_flooding_tenant_leaves_the_other_a_slot(service):
    """Alice's two long jobs take both slots; bob's job still runs and finishes while hers wait their turn."""
    alice, bob, workers, _ = service
    long = [alice.submit(NEVER, budget=1_000_000, baselines=[], method="best-of-k",
                         settings={"attempts_per_step": 4, "max_new_tokens": 8}) for _ in range(3)]
    wait_for(lambda: sum(alice.get(j.id).status == "running" for j in long) == 2, timeout=120,
             message="alice's jobs in both slots")
    victim = bob.wait(bob.submit(ACCEPT_ALL, **VICTIM).id, timeout=300, poll_s=0.3)  # hers never end
    assert victim.status == "succeeded", workers.logs()
    reasons = [event.data.get("reason") or "" for j in long for event in alice.event_page(j.id).data]
    assert any("fair share" in reason for reason in reasons), reasons  # one of hers gave bob its slot
    for job in long:
        assert alice.wait(alice.cancel(job.id).id, timeout=120, poll_s=0.3).status == "cancelled"


def test_sigterm_during_a_giant_step_hands_the_job_back_after_the_grace(service):
    """Last in this module: it stops the worker. SIGTERM while a giant step generates (grace 2 s): the worker stops
    that generation, hands the job back to the queue (not counted as a try) and exits, well before the step would
    have ended."""
    import signal

    alice, _, workers, _ = service
    giant = alice.submit(NEVER, budget=2048, baselines=[], method="best-of-k",
                         settings={"attempts_per_step": 1024, "max_new_tokens": 32})
    wait_for(lambda: alice.get(giant.id).status == "running", timeout=120, message="the giant job running")
    worker = workers.processes[0]
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)  # the step alone takes about a minute on this model, and it had just begun
    job = alice.get(giant.id)
    assert job.status == "queued" and job.attempts == 0, job
    reasons = [event.data.get("reason") or "" for event in alice.event_page(giant.id).data]
    assert "worker shut down" in reasons, reasons
    alice.cancel(giant.id)
