"""Writing an adapter in peft's own format: from a live policy, or from a checkpoint without loading the model.

The folder loads with `PeftModel.from_pretrained(base_model, directory)` and with vLLM's `LoRARequest`:
adapter_config.json (a LoraConfig) plus adapter_model.safetensors with peft's key names (adapter name left out).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdpo_core.settings import SDPOSettings


def lora_config_dict(settings: SDPOSettings, base_model: str) -> dict:
    """The adapter_config.json content for an adapter made with `settings`."""
    from peft import LoraConfig

    config = LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.lora_alpha, target_modules=list(settings.target_modules),
        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model,
    )
    as_dict = config.to_dict()
    as_dict["target_modules"] = sorted(as_dict["target_modules"])  # a set in peft: not JSON
    return as_dict


def write_peft_adapter(tensors: dict[str, torch.Tensor], config: dict, directory: str | Path) -> Path:
    """Write LoraPolicy.state()-keyed `tensors` and a LoraConfig dict as a peft adapter folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str))
    weights = {f"{key}.weight": t.detach().to("cpu").contiguous() for key, t in tensors.items()}
    save_file(weights, directory / "adapter_model.safetensors")
    return directory


def save_peft_adapter(
    tensors: dict[str, torch.Tensor], settings: SDPOSettings, base_model: str, directory: str | Path
) -> Path:
    """Write a checkpoint's adapter tensors (made with `settings`) as a peft adapter folder."""
    return write_peft_adapter(tensors, lora_config_dict(settings, base_model), directory)
