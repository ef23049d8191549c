"""Base weights in bfloat16 (the default on a GPU and on a CPU with native bf16): the adapters, their gradients and
the optimizer stay float32, and the SDPO loss and its gradient agree with float32 within stated tolerances.

Tolerances (tiny random model, the same weights in both dtypes; measured here: 0.7%, 0.99997, 0.13%, 0.006): the
step's loss within 2% relative, the adapter gradient's direction within cosine 0.999 and its norm within 2%, the
engine's log-probabilities within 0.03 absolute of the float32 forward (bf16 keeps 8 mantissa bits)."""

import pytest
import torch

from sdpo_core.engine import GenerationRequest
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.models import UnknownDtype, choose_dtype, cpu_has_bfloat16, load_model_and_tokenizer
from sdpo_core.policy import LoraPolicy
from sdpo_core.settings import SDPOSettings
from sdpo_core.teacher import init_teacher
from sdpo_core.update import DistillSample, distil, make_optimizer, sdpo_update


def test_dtype_choice(monkeypatch):
    monkeypatch.delenv("SDPO_DTYPE", raising=False)
    assert choose_dtype("cuda") == "bfloat16"
    assert choose_dtype("cpu") == ("bfloat16" if cpu_has_bfloat16() else "float32")
    assert choose_dtype("cpu", "bfloat16") == "bfloat16" and choose_dtype("cuda", "float32") == "float32"
    monkeypatch.setenv("SDPO_DTYPE", "bfloat16")
    assert choose_dtype("cpu") == "bfloat16"
    assert choose_dtype("cpu", "float32") == "float32"  # the flag wins over the environment
    monkeypatch.setenv("SDPO_DTYPE", "fp8")
    with pytest.raises(UnknownDtype, match="'fp8'"):
        choose_dtype("cpu")


def test_bfloat16_detection_reads_the_cpu_flags():
    flags = next(line for line in open("/proc/cpuinfo").read().splitlines() if line.startswith("flags")).split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags or "AMX" in torch.backends.cpu.get_cpu_capability()
    assert cpu_has_bfloat16() == native


def policies(model_dir):
    """The same weights and the same nonzero adapter in float32 and in bfloat16."""
    out = {}
    settings = SDPOSettings(lora_rank=8)
    for dtype in ("float32", "bfloat16"):
        model, tokenizer = load_model_and_tokenizer(str(model_dir), device="cpu", dtype=dtype)
        policy = LoraPolicy(model, tokenizer)
        policy.create_adapter("a", settings, seed=0)
        init_teacher(policy, "a", settings, seed=0)
        out[dtype] = policy
    g = torch.Generator().manual_seed(0)
    state = {k: v + torch.randn(v.shape, generator=g) * 0.05 for k, v in out["float32"].state("a").items()}
    for policy in out.values():
        policy.load_state("a", state)
    return out, settings


def test_bf16_base_keeps_adapters_and_optimizer_in_float32(contract_model_dir):
    pols, settings = policies(contract_model_dir)
    policy = pols["bfloat16"]
    assert policy.dtype == torch.bfloat16
    assert {p.dtype for p in policy.parameters("a").values()} == {torch.float32}
    prompt = policy.chat_ids([{"role": "user", "content": "Say something."}])
    out = TransformersEngine(policy).generate([GenerationRequest(prompt, "a", 0, [1, 2], 8)])[0]
    teacher = policy.chat_ids([{"role": "user", "content": "Say something. Feedback: use the word 'zebra'."}])
    samples = [DistillSample(prompt, teacher, c.token_ids, c.logprobs, prompt) for c in out]
    optimizer = make_optimizer(policy, "a", settings)
    metrics = sdpo_update(policy, optimizer, "a", samples, settings)
    assert torch.isfinite(torch.tensor(metrics.loss)) and metrics.grad_norm > 0
    state = [s for group in optimizer.state.values() for s in group.values() if torch.is_tensor(s) and s.numel() > 1]
    assert state and {s.dtype for s in state} == {torch.float32}


def test_bf16_loss_gradient_and_logprobs_agree_with_float32(contract_model_dir):
    pols, settings = policies(contract_model_dir)
    p32 = pols["float32"]
    prompt = p32.chat_ids([{"role": "user", "content": "What is 17 * 23? Answer with the number."}])
    teacher = p32.chat_ids([{"role": "user", "content": "What is 17 * 23? Wrong: it is 391. Answer again."}])
    request = GenerationRequest(prompt, "a", 0, list(range(1, 7)), 24)
    completions = TransformersEngine(p32).generate([request])[0]
    control = p32.chat_ids([{"role": "user", "content": "What is 17 * 23? Not correct. Answer again."}])
    samples = [DistillSample(prompt, teacher, c.token_ids, c.logprobs, control) for c in completions]
    loss, grad = {}, {}
    for dtype, policy in pols.items():
        loss[dtype] = distil(policy, "a", samples, settings, 1.0, {})  # backward included
        grad[dtype] = torch.cat([p.grad.flatten() for p in policy.parameters("a").values()])
    assert abs(loss["bfloat16"] - loss["float32"]) <= 0.02 * abs(loss["float32"])
    assert torch.nn.functional.cosine_similarity(grad["float32"], grad["bfloat16"], 0) >= 0.999
    assert abs(grad["bfloat16"].norm() / grad["float32"].norm() - 1) <= 0.02

    for c in TransformersEngine(pols["bfloat16"]).generate([request])[0]:
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            hidden = p32.hidden_states(ids, torch.ones_like(ids), "a")
            logits = p32.head(hidden[0, len(prompt) - 1: -1]).float()
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=0.03, rtol=0)
