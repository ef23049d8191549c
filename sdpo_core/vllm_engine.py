"""The vLLM generation engine (optional extra, CUDA): multi-LoRA serving of every concurrent run's adapter.

Training stays in peft on the same GPU (LoraPolicy); vLLM only samples. After each update the run's adapter is
written to disk in peft's format and served under a NEW `LoRARequest` id: vLLM caches adapters by id, so reusing
an id would keep sampling from the stale weights. The previous version is removed to free its slot.
Give vLLM part of the GPU (`gpu_memory_utilization`, default 0.5) and leave the rest to the training side.

Randomness: each attempt samples with its own vLLM seed derived from (run seed, attempt index), so a run is
reproducible on this engine (vLLM's sampler differs from the transformers engine's, so the attempts differ
between engines).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpo_core.adapter_io import lora_config_dict, write_peft_adapter
from sdpo_core.engine import Completion, GenerationRequest
from sdpo_core.policy import LoraPolicy

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """vLLM accepts only some max_lora_rank values: the smallest that holds `rank`."""
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def attempt_seed(seed: int, attempt_index: int) -> int:
    """A 31-bit vLLM seed for one attempt's stream."""
    return (seed * 1_000_003 + attempt_index * 7_919) % (2**31 - 1)


@dataclass
class _Served:
    request: Any  # LoRARequest
    path: Path


class VLLMEngine:
    """GenerationEngine on `vllm.LLM(enable_lora=True)`; `vllm_module` is injectable for the contract tests."""

    def __init__(
        self, policy: LoraPolicy, model: str, *, max_loras: int = 16, max_lora_rank: int = 16,
        gpu_memory_utilization: float = 0.5, enable_sleep_mode: bool = False, adapter_dir: str | None = None,
        vllm_module: Any = None, **llm_kwargs: Any,
    ) -> None:
        if vllm_module is None:
            import vllm as vllm_module  # noqa: PLC0415 - optional, CUDA-only dependency
        self.vllm = vllm_module
        self.policy = policy
        self.base_model = model
        self.llm = vllm_module.LLM(
            model=model, enable_lora=True, max_loras=max_loras, max_lora_rank=vllm_max_lora_rank(max_lora_rank),
            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode, **llm_kwargs,
        )
        self.adapter_dir = Path(adapter_dir or tempfile.mkdtemp(prefix="sdpo-vllm-adapters-"))
        self.served: dict[str, _Served] = {}
        self._next_id = 1
        self._versions: dict[str, int] = {}

    # ---- adapters ---------------------------------------------------------------------------------------------
    def publish_adapter(self, name: str) -> None:
        """Serve the adapter's current weights under a fresh LoRARequest id; retire the previous version."""
        version = self._versions.get(name, 0) + 1
        self._versions[name] = version
        path = self.adapter_dir / f"{name}-v{version}"
        config = lora_config_dict(self.policy.lora_settings(name), self.base_model)
        write_peft_adapter(self.policy.state(name), config, path)
        request = self.vllm.lora.request.LoRARequest(f"{name}-v{version}", self._next_id, str(path))
        self._next_id += 1
        self._retire(name)
        self.served[name] = _Served(request, path)

    def drop_adapter(self, name: str) -> None:
        self._retire(name)
        self._versions.pop(name, None)

    def _retire(self, name: str) -> None:
        old = self.served.pop(name, None)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.request.lora_int_id)
            shutil.rmtree(old.path, ignore_errors=True)

    # ---- sampling ---------------------------------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        prompts, params, loras = [], [], []
        for r in requests:
            if r.adapter is not None and r.adapter not in self.served:
                self.publish_adapter(r.adapter)  # first use of a run's adapter
            lora = self.served[r.adapter].request if r.adapter is not None else None
            for index in r.attempt_indices:
                prompts.append({"prompt_token_ids": list(r.prompt_ids)})
                params.append(self.vllm.SamplingParams(
                    n=1, temperature=r.temperature, max_tokens=r.max_new_tokens, logprobs=0,
                    seed=attempt_seed(r.seed, index), stop_token_ids=sorted(self.policy.stop_token_ids),
                ))
                loras.append(lora)
        outputs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        completions = iter(_completion(o.outputs[0]) for o in outputs)
        return [[next(completions) for _ in r.attempt_indices] for r in requests]


def _completion(output: Any) -> Completion:
    token_ids = list(output.token_ids)
    logprobs = [step[token].logprob for step, token in zip(output.logprobs or [], token_ids, strict=False)]
    return Completion(token_ids=token_ids, logprobs=logprobs, truncated=output.finish_reason == "length",
                      text=output.text)
