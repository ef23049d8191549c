"""Checkpoints are data, not code (issue 12, item 2): a crafted pickle never runs, a changed or foreign checkpoint is
rejected before it is parsed, and a restored run must match the job in Redis."""

from __future__ import annotations

import io
import os

import pytest
import torch

from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.problem import Problem
from sdpo_core.runs import METHOD
from sdpo_core.settings import RunSettings
from workers import checkpoint
from workers.checkpoint import MAGIC, CheckpointRejected, DirectoryStore, decode, encode, load_states, save_states
from workers.jobs import JobFailure, JobSpec
from workers.lifecycle import check_restored

KEY = b"test-checkpoint-key-0123456789"
PROBLEM = Problem.model_validate({"id": "p", "prompt": "Say a", "verifier": {"type": "exact", "answer": "a"}})
SETTINGS = RunSettings(method="sdpo", max_attempts=8, attempts_per_step=4, max_new_tokens=6)


class RunsCode:
    """What a hostile writer of the store would put in a pickle: unpickling it runs a command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint.KEY_ENV, KEY.decode())
    checkpoint.signing_key.cache_clear()
    yield DirectoryStore(tmp_path / "ckpt")
    checkpoint.signing_key.cache_clear()


def test_a_pickle_in_the_store_is_rejected_without_running(store, tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"runs": {"method": RunsCode(str(marker))}}, buffer)
    store.save("job_x", buffer.getvalue())
    with pytest.raises(CheckpointRejected, match="not in this service's checkpoint format") as caught:
        load_states(store, "job_x")
    assert caught.value.code == "checkpoint_rejected" and not caught.value.retryable
    assert not marker.exists()


def test_a_pickle_behind_our_magic_is_rejected_by_the_signature(store, tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(RunsCode(str(marker)), buffer)
    store.save("job_x", MAGIC + b"\0" * 32 + buffer.getvalue())
    with pytest.raises(CheckpointRejected, match="signature"):
        load_states(store, "job_x")
    assert not marker.exists()


def test_a_changed_byte_or_another_jobs_checkpoint_is_rejected(store):
    save_states(store, "job_a", {"method": {"step": 1, "adapter": {"w": torch.ones(3)}}})
    data = store.load("job_a")
    store.save("job_b", data)  # a valid checkpoint, but job_a's
    with pytest.raises(CheckpointRejected, match="signature"):
        load_states(store, "job_b")
    changed = data.replace(b'"step": 1', b'"step": 9')
    assert changed != data
    store.save("job_a", changed)
    with pytest.raises(CheckpointRejected, match="signature"):
        load_states(store, "job_a")


def test_another_key_cannot_read_it():
    data = encode({"method": {"step": 1}}, job_id="job_a", key=KEY)
    assert decode(data, job_id="job_a", key=KEY) == {"method": {"step": 1}}
    with pytest.raises(CheckpointRejected, match="SDPO_CHECKPOINT_KEY"):
        decode(data, job_id="job_a", key=b"another-key-of-another-deployment")


def test_an_older_generations_checkpoint_put_in_place_of_the_current_one_is_rejected(store):
    """Rollback (issue 17, item 7): the blob of lease generation 1, validly signed for the same job, copied over
    generation 3's blob (which the job record names) is refused; each blob still loads under its own name."""
    old, current = checkpoint.checkpoint_name(1), checkpoint.checkpoint_name(3)
    save_states(store, "job_a", {"method": {"step": 1}}, old)
    save_states(store, "job_a", {"method": {"step": 7}}, current)
    assert load_states(store, "job_a", current) == {"method": {"step": 7}}
    store.save("job_a", store.load("job_a", old), current)
    with pytest.raises(CheckpointRejected, match=f"{current} was written as {old}") as caught:
        load_states(store, "job_a", current)
    assert caught.value.code == "checkpoint_rejected" and not caught.value.retryable
    assert load_states(store, "job_a", old) == {"method": {"step": 1}}


def test_an_older_step_of_the_same_blob_is_rejected():
    """The same generation's blob from an earlier step (replayed) is older than the step the record names."""
    spec = JobSpec(problem=PROBLEM, settings=SETTINGS)
    states = {METHOD: {"problem": PROBLEM.model_dump(mode="json"), "settings": SETTINGS.model_dump(mode="json"),
                       "step": 2}}
    check_restored(spec, states, checkpoint_step=2)  # the current step, or a later one a crash left unpublished
    check_restored(spec, states, checkpoint_step=1)
    with pytest.raises(CheckpointRejected, match="holds step 2, older than step 3"):
        check_restored(spec, states, checkpoint_step=3)


def test_a_real_run_round_trips_through_json_and_safetensors(tiny_policy, store):
    """Adapter, EMA teacher, AdamW state (int keys, tuples, 0-d tensors), attempts: the resumed run continues
    exactly as the original does."""
    from sdpo_core.hf_engine import TransformersEngine

    engine = TransformersEngine(tiny_policy)
    original = ProblemRun(PROBLEM, SETTINGS, tiny_policy, name="orig")
    run_step([original], engine)
    save_states(store, "job_r", {METHOD: original.state_dict()})
    assert store.load("job_r").startswith(MAGIC)
    state = load_states(store, "job_r")[METHOD]
    assert isinstance(next(iter(state["optimizer"]["state"])), int)
    assert state["optimizer"]["param_groups"][0]["betas"] == original.method.optimizer.state_dict()["param_groups"][0]["betas"]
    resumed = ProblemRun.restore(state, tiny_policy, name="resumed")
    for (key, a), b in zip(tiny_policy.state("orig").items(), tiny_policy.state("resumed").values(), strict=True):
        assert torch.equal(a, b), key
    run_step([original], engine)
    run_step([resumed], engine)
    assert [a.text for a in resumed.attempts] == [a.text for a in original.attempts]
    for a, b in zip(tiny_policy.state("orig").values(), tiny_policy.state("resumed").values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    original.close()
    resumed.close()


@pytest.mark.parametrize("change", ["problem", "verifier", "settings", "runs"])
def test_a_restored_run_must_match_the_job_in_redis(tiny_policy, change):
    """A checkpoint that verifies but describes another problem, verifier or settings fails the job clearly, before
    any run is opened (JobLifecycle.start checks it right after loading)."""
    spec = JobSpec(problem=PROBLEM, settings=SETTINGS)
    run = ProblemRun(PROBLEM, SETTINGS, tiny_policy, name="ck")
    states = {METHOD: run.state_dict()}
    run.close()
    check_restored(spec, states)  # the job's own checkpoint is admitted
    if change == "problem":
        states[METHOD]["problem"]["prompt"] = "Something else"
    elif change == "verifier":
        states[METHOD]["problem"]["verifier"] = {"type": "exact", "answer": "b", "extract": "auto",
                                                 "case_sensitive": False}
    elif change == "settings":
        states[METHOD]["settings"]["max_attempts"] = 1_000_000
    else:  # a run the job does not have (a baseline run is ignored: its samples live in Redis, not checkpoints)
        states["extra"] = states[METHOD]
    with pytest.raises(JobFailure) as caught:
        check_restored(spec, states)
    assert caught.value.code == "checkpoint_mismatch" and "not resumed" in caught.value.message
    assert {"problem": "problem", "verifier": "problem", "settings": "settings", "runs": "runs"}[change] \
        in caught.value.message
