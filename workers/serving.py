"""What a worker serves: the base model loaded once, the LoRA policy over it, and the generation engine."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any


@dataclass
class Serving:
    model_name: str  # as the worker reports it (the offline default's name when none was given)
    resolved_model: str  # the folder or id peft records as an adapter's base model
    policy: Any  # sdpo_core.policy.LoraPolicy
    engine: Any  # sdpo_core.engine.GenerationEngine


def load_serving(model: str | None, *, max_batch_size: int, engine: str | None = None,
                 dtype: str | None = None) -> Serving:
    """Load the model (slow: run it in a thread) and build the engine that generates for every job."""
    from sdpo_core.engines import make_engine
    from sdpo_core.models import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model
    from sdpo_core.policy import LoraPolicy

    warnings.filterwarnings("ignore", category=FutureWarning)
    base, tokenizer = load_model_and_tokenizer(model, dtype=dtype)
    policy = LoraPolicy(base, tokenizer)
    resolved = str(resolve_model(model))
    return Serving(model_name=model or DEFAULT_MODEL, resolved_model=resolved, policy=policy,
                   engine=make_engine(policy, resolved, engine, max_batch_size=max_batch_size))
