"""A stand-in for the `vllm` module (which needs CUDA) with the API surface VLLMEngine uses.

It samples with a second copy of the model on the transformers engine and mimics vLLM's behaviour that
matters to us: adapters are loaded from peft folders on disk and cached BY ID (a stale id keeps serving stale
weights), `remove_lora` frees an id, per-request seeds, finish_reason "stop"/"length", per-token logprobs.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

from sdpo_core.engine import GenerationRequest
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.models import load_model_and_tokenizer
from sdpo_core.policy import LoraPolicy
from sdpo_core.settings import SDPOSettings


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    max_tokens: int = 16
    logprobs: int | None = None
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]]
    finish_reason: str
    text: str


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]


class _Engine:
    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def remove_lora(self, lora_id: int) -> bool:
        name = self.llm.loaded.pop(lora_id, None)
        if name is not None:
            self.llm.policy.delete_adapter(name)
        return name is not None

    def list_loras(self) -> set[int]:
        return set(self.llm.loaded)


class LLM:
    def __init__(self, model: str, enable_lora: bool, max_loras: int, max_lora_rank: int, **kwargs) -> None:
        assert enable_lora and max_lora_rank in (1, 8, 16, 32, 64, 128, 256, 320, 512)
        base, tokenizer = load_model_and_tokenizer(model, device="cpu")
        self.policy = LoraPolicy(base, tokenizer)
        self.max_lora_rank = max_lora_rank
        self.loaded: dict[int, str] = {}
        self.llm_engine = _Engine(self)

    def _ensure_loaded(self, request: LoRARequest) -> str:
        if request.lora_int_id not in self.loaded:  # like vLLM: an id already loaded is not reloaded
            config = json.loads((Path(request.lora_path) / "adapter_config.json").read_text())
            assert config["r"] <= self.max_lora_rank, "adapter rank above max_lora_rank"
            name = f"id{request.lora_int_id}"
            self.policy.create_adapter(name, SDPOSettings(lora_rank=config["r"], lora_alpha=config["lora_alpha"],
                                                          target_modules=config["target_modules"]), seed=0)
            weights = load_file(str(Path(request.lora_path) / "adapter_model.safetensors"))
            self.policy.load_state(name, {k.removesuffix(".weight"): v for k, v in weights.items()})
            self.loaded[request.lora_int_id] = name
        return self.loaded[request.lora_int_id]

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        outputs = []
        for prompt, params, lora in zip(prompts, sampling_params, lora_request, strict=True):
            adapter = self._ensure_loaded(lora) if lora is not None else None
            engine = TransformersEngine(self.policy, stop_token_ids=set(params.stop_token_ids))
            request = GenerationRequest(prompt["prompt_token_ids"], adapter, params.seed, [0], params.max_tokens,
                                        params.temperature)
            c = engine.generate([request])[0][0]
            outputs.append(RequestOutput([CompletionOutput(
                token_ids=c.token_ids, logprobs=[{t: Logprob(lp)} for t, lp in zip(c.token_ids, c.logprobs)],
                finish_reason="length" if c.truncated else "stop", text=c.text,
            )]))
        return outputs


module = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams,
                               lora=types.SimpleNamespace(request=types.SimpleNamespace(LoRARequest=LoRARequest)))
