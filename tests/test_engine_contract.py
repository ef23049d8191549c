"""One contract for every generation engine: the transformers engine, and VLLMEngine (on a vLLM stand-in here;
on real vLLM where vllm and a GPU are present, e.g. the lent GPU machine)."""

import importlib.util

import pytest
import torch

from sdpo_core.engine import GenerationRequest
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.settings import SDPOSettings
from sdpo_core.vllm_engine import VLLMEngine, attempt_seed, vllm_max_lora_rank

ENGINES = ["transformers", "vllm-standin"]
if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
    ENGINES.append("vllm")


@pytest.fixture(params=ENGINES)
def engine_and_policy(request, tiny_policy, tiny_model_dir):
    if request.param == "transformers":
        return TransformersEngine(tiny_policy), tiny_policy
    if request.param == "vllm-standin":
        import fake_vllm

        return VLLMEngine(tiny_policy, str(tiny_model_dir), vllm_module=fake_vllm.module), tiny_policy
    return VLLMEngine(tiny_policy, str(tiny_model_dir), gpu_memory_utilization=0.3), tiny_policy


def ask(policy, adapter=None, indices=(1, 2, 3), max_new=10, temperature=1.0, text="What is 2+2?", seed=0):
    ids = policy.chat_ids([{"role": "user", "content": text}])
    return GenerationRequest(ids, adapter, seed, list(indices), max_new, temperature)


def make_adapter(policy, name, scale, seed=0):
    policy.create_adapter(name, SDPOSettings(lora_rank=8), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters(name).values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


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


def test_same_request_same_attempts_and_attempts_differ(engine_and_policy):
    engine, policy = engine_and_policy
    first = engine.generate([ask(policy)])[0]
    again = engine.generate([ask(policy)])[0]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first}) > 1


def test_published_adapter_versions_are_what_is_sampled(engine_and_policy):
    engine, policy = engine_and_policy
    make_adapter(policy, "run1", scale=0.0)
    base = engine.generate([ask(policy, None, temperature=0.0)])[0][0].token_ids
    fresh = engine.generate([ask(policy, "run1", temperature=0.0)])[0][0].token_ids
    assert fresh == base  # a fresh adapter is the base model
    with torch.no_grad():
        for p in policy.parameters("run1").values():
            p.add_(torch.randn_like(p) * 2.0)
    engine.publish_adapter("run1")  # what the loop calls after every update
    trained = engine.generate([ask(policy, "run1", temperature=0.0)])[0][0].token_ids
    assert trained != base


def test_each_request_gets_its_own_adapter_in_one_call(engine_and_policy):
    engine, policy = engine_and_policy
    make_adapter(policy, "left", scale=1.0, seed=1)
    make_adapter(policy, "right", scale=1.0, seed=2)
    for name in ("left", "right"):
        engine.publish_adapter(name)
    alone = [engine.generate([ask(policy, a, temperature=0.0)])[0][0].token_ids for a in ("left", "right", None)]
    together = engine.generate([ask(policy, a, temperature=0.0) for a in ("left", "right", None)])
    assert [r[0].token_ids for r in together] == alone
    engine.drop_adapter("left")
    assert engine.generate([ask(policy, None, temperature=0.0)])[0][0].token_ids == alone[2]


def test_logprobs_match_a_teacher_forced_forward(engine_and_policy):
    engine, policy = engine_and_policy
    req = ask(policy, indices=[1, 2], temperature=1.0)
    for c in engine.generate([req])[0]:
        ids = torch.tensor([req.prompt_ids + c.token_ids], device=policy.device)
        hidden = policy.hidden_states(ids, torch.ones_like(ids), None)
        logits = policy.head(hidden[0, len(req.prompt_ids) - 1: -1]).float()
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids, device=ids.device)[:, None])
        torch.testing.assert_close(torch.tensor(c.logprobs), expected[:, 0].cpu(), atol=2e-2, rtol=0)


def test_vllm_helpers():
    assert [vllm_max_lora_rank(r) for r in (1, 4, 16, 17, 64)] == [1, 8, 16, 32, 64]
    assert attempt_seed(0, 1) != attempt_seed(0, 2) != attempt_seed(1, 1)
    assert 0 <= attempt_seed(2**62, 10**9) < 2**31
