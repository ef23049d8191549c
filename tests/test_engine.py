"""The transformers engine: stops, reproducible per-attempt sampling, mixed-adapter batches, exact log-probs."""

import pytest
import torch

from sdpo_core.engine import GenerationRequest
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.settings import SDPOSettings


def perturb(policy, name, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters(name).values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def request(policy, text="What is 2+2?", adapter=None, seed=0, indices=(1, 2, 3, 4), max_new=24, temperature=1.0):
    ids = policy.chat_ids([{"role": "user", "content": text}])
    return GenerationRequest(ids, adapter, seed, list(indices), max_new, temperature)


def test_stops_at_stop_token_or_length(tiny_policy):
    stop = set(tiny_policy.tokenizer.convert_tokens_to_ids(list("aeiou ")))
    engine = TransformersEngine(tiny_policy, stop_token_ids=stop)
    completions = engine.generate([request(tiny_policy, indices=range(1, 21), max_new=6)])[0]
    assert len(completions) == 20
    for c in completions:
        assert len(c.token_ids) == len(c.logprobs) <= 6
        if c.truncated:
            assert len(c.token_ids) == 6 and not stop & set(c.token_ids)
        else:
            assert c.token_ids[-1] in stop and not stop & set(c.token_ids[:-1])
    assert {c.truncated for c in completions} == {True, False}


def test_attempts_do_not_depend_on_batch_company_or_size(tiny_policy):
    tiny_policy.create_adapter("a", SDPOSettings(), seed=0)
    perturb(tiny_policy, "a")
    alone = TransformersEngine(tiny_policy, max_batch_size=32).generate([request(tiny_policy, adapter="a")])[0]
    mixed = TransformersEngine(tiny_policy, max_batch_size=3).generate([
        request(tiny_policy, "Another, longer question with more words?", adapter=None, seed=9, indices=range(1, 8)),
        request(tiny_policy, adapter="a"),
    ])[1]
    assert [c.token_ids for c in alone] == [c.token_ids for c in mixed]
    for a, b in zip(alone, mixed):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


def test_seed_and_attempt_index_key_the_randomness(tiny_policy):
    engine = TransformersEngine(tiny_policy)
    base = engine.generate([request(tiny_policy, indices=[1, 2, 3])])[0]
    shifted = engine.generate([request(tiny_policy, indices=[2, 3, 4])])[0]
    other_seed = engine.generate([request(tiny_policy, seed=1, indices=[1, 2, 3])])[0]
    assert [c.token_ids for c in base[1:]] == [c.token_ids for c in shifted[:2]]
    assert [c.token_ids for c in base] != [c.token_ids for c in other_seed]


def test_each_row_uses_its_own_adapter(tiny_policy):
    tiny_policy.create_adapter("a", SDPOSettings(), seed=0)
    tiny_policy.create_adapter("b", SDPOSettings(), seed=1)
    perturb(tiny_policy, "b", scale=1.0)
    engine = TransformersEngine(tiny_policy)
    mixed = engine.generate([request(tiny_policy, adapter=a, max_new=12) for a in (None, "a", "b")])
    base, fresh, trained = ([c.token_ids for c in out] for out in mixed)
    assert base == fresh  # a fresh adapter (B = 0) is exactly the base model
    assert trained != base


def test_logprobs_are_those_of_a_teacher_forced_forward(tiny_policy):
    engine = TransformersEngine(tiny_policy)
    req = request(tiny_policy, indices=[1, 2], max_new=10, temperature=0.7)
    for c in engine.generate([req])[0]:
        ids = torch.tensor([req.prompt_ids + c.token_ids])
        hidden = tiny_policy.hidden_states(ids, torch.ones_like(ids), None)
        logits = tiny_policy.head(hidden[0, len(req.prompt_ids) - 1: -1]) / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_temperature_zero_is_greedy(tiny_policy):
    engine = TransformersEngine(tiny_policy)
    out = engine.generate([request(tiny_policy, indices=[1, 2, 3], temperature=0.0, max_new=8)])[0]
    assert len({tuple(c.token_ids) for c in out}) == 1
    ids = torch.tensor([request(tiny_policy).prompt_ids])
    first = tiny_policy.head(tiny_policy.hidden_states(ids, torch.ones_like(ids), None)[0, -1]).argmax()
    assert out[0].token_ids[0] == int(first)


def test_batched_row_lora_matches_peft_for_each_adapter(tiny_policy):
    """The engine's gathered-LoRA forward gives the log-probs peft's own adapter forward gives."""
    for name, seed in (("one", 1), ("two", 2)):
        tiny_policy.create_adapter(name, SDPOSettings(lora_rank=4 * seed), seed=seed)
        perturb(tiny_policy, name, scale=0.3, seed=seed)
    reqs = [request(tiny_policy, adapter=a, indices=[1, 2], max_new=8) for a in ("one", None, "two")]
    outputs = TransformersEngine(tiny_policy).generate(reqs)
    for req, completions in zip(reqs, outputs):
        for c in completions:
            ids = torch.tensor([req.prompt_ids + c.token_ids])
            hidden = tiny_policy.hidden_states(ids, torch.ones_like(ids), req.adapter)
            logits = tiny_policy.head(hidden[0, len(req.prompt_ids) - 1: -1])
            expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_looking_at_tokens_less_often_changes_nothing(tiny_policy):
    """sync_every > 1 (the GPU setting) only wastes a few decode steps; the attempts are the same."""
    stop = set(tiny_policy.tokenizer.convert_tokens_to_ids(list("aeiou")))
    reqs = [request(tiny_policy, indices=range(1, 11), max_new=9), request(tiny_policy, "Other?", indices=[1, 2])]
    every = TransformersEngine(tiny_policy, max_batch_size=4, stop_token_ids=stop, sync_every=1).generate(reqs)
    lazy = TransformersEngine(tiny_policy, max_batch_size=4, stop_token_ids=stop, sync_every=5).generate(reqs)
    for a_req, b_req in zip(every, lazy):
        assert [(c.token_ids, c.truncated) for c in a_req] == [(c.token_ids, c.truncated) for c in b_req]
        for a, b in zip(a_req, b_req):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_compiled_decode_samples_what_eager_decode_samples(tiny_policy):
    """compile=True (torch.compile over the static-shape decode step) changes speed, not the attempts."""
    tiny_policy.create_adapter("a", SDPOSettings(), seed=0)
    perturb(tiny_policy, "a")
    reqs = [request(tiny_policy, adapter="a", indices=range(3), max_new=10, temperature=0.0),
            request(tiny_policy, "A longer question, with more words in it?", indices=range(2), max_new=7)]
    eager = TransformersEngine(tiny_policy, max_batch_size=4).generate(reqs)
    compiled = TransformersEngine(tiny_policy, max_batch_size=4, compile=True).generate(reqs)
    for eager_attempts, compiled_attempts in zip(eager, compiled, strict=True):
        for e, c in zip(eager_attempts, compiled_attempts, strict=True):
            assert c.token_ids == e.token_ids
            assert c.logprobs == pytest.approx(e.logprobs, abs=1e-4)


def test_a_request_asked_to_stop_leaves_the_batch_and_the_others_go_on(tiny_policy):
    """`should_stop` is asked between decode steps: once it says so, that request's attempts end where they are
    (truncated) and its waiting ones never start, while the other request's attempts are what they are alone."""
    engine = TransformersEngine(tiny_policy, stop_token_ids=set(), max_batch_size=4)
    asked = []

    def stop_after_five_looks() -> bool:
        asked.append(1)
        return len(asked) > 5

    stopping = request(tiny_policy, indices=range(1, 9), max_new=64)
    stopping.should_stop = stop_after_five_looks
    other = request(tiny_policy, text="Name a colour.", indices=(1, 2), max_new=64)
    stopped, went_on = engine.generate([stopping, other])
    assert stopping.stopped and not other.stopped
    assert 0 < len(stopped) < 8 and all(c.truncated and len(c.token_ids) < 64 for c in stopped)
    alone = engine.generate([request(tiny_policy, text="Name a colour.", indices=(1, 2), max_new=64)])[0]
    assert [c.token_ids for c in went_on] == [c.token_ids for c in alone]
