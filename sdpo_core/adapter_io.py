"""Writing a run's adapter in peft's own format, from a checkpoint, without loading the base model.

The result loads with `PeftModel.from_pretrained(base_model, directory)`: adapter_config.json (a LoraConfig)
plus adapter_model.safetensors with peft's key names (the adapter's name left out).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdpo_core.settings import SDPOSettings


def save_peft_adapter(
    tensors: dict[str, torch.Tensor], settings: SDPOSettings, base_model: str, directory: str | Path
) -> Path:
    """Write `tensors` (LoraPolicy.state() keys) as a peft LoRA adapter folder."""
    from peft import LoraConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.lora_alpha, target_modules=list(settings.target_modules),
        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model,
    )
    config_dict = config.to_dict()
    config_dict["target_modules"] = sorted(config_dict["target_modules"])  # a set in peft: not JSON
    (directory / "adapter_config.json").write_text(json.dumps(config_dict, indent=2, default=str))
    save_file({f"{key}.weight": t.contiguous() for key, t in tensors.items()}, directory / "adapter_model.safetensors")
    return directory
