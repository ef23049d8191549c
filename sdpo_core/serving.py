"""Serving a model, assembled in one place: base model -> LoRA policy -> generation engine.

    serving = load_serving(EngineSettings(model=None, engine="vllm", max_adapters=adapter_slots(max_jobs)))
    runs = DiscoveryRuns(serving.engine)          # sdpo_core.runs: steps every run on it

The worker, `sdpo solve`, `sdpo bench` and benchmarks/*.py all build what they sample from here, so a new engine
option is one field of `EngineSettings`, not four call sites. Importable without torch (the light client's CLI
parses engine flags): the model is loaded inside `load_serving`.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from sdpo_core.engine import GenerationEngine
    from sdpo_core.policy import LoraPolicy

EngineName = Literal["transformers", "vllm"]  # sdpo_core.engine_choice.ENGINES
Dtype = Literal["auto", "bfloat16", "float32"]


class EngineSettings(BaseModel):
    """What the served model and its engine are: typed once, for every command that samples."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str | None = Field(default=None, description="HF id or local folder (None: the offline default).")
    engine: EngineName | None = Field(default=None, description="None: sdpo_core.engine_choice.default_engine().")
    dtype: Dtype | None = Field(default=None, description="Base weights' dtype (None: sdpo_core.models.choose_dtype).")
    max_batch_size: int = Field(default=32, ge=1, description="Generation slots of the engine.")
    max_adapters: int = Field(default=16, ge=1, description="vLLM: adapters served at once (see adapter_slots).")
    compile: bool = Field(default=False, description="transformers engine: torch.compile the decode step.")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> EngineSettings:
        """From a command's --model/--engine/--dtype (sdpo_core.engine_choice.add_engine_arguments) and whichever of
        --max-batch-size/--compile it has; `overrides` win."""
        given = {name: getattr(args, name) for name in cls.model_fields if getattr(args, name, None) is not None}
        return cls(**{**given, **overrides})


def adapter_slots(runs: int) -> int:
    """vLLM LoRA slots for `runs` concurrent runs (a worker's max_jobs, a benchmark's concurrency, solve's seeds).

    The engine serves one adapter per run and no more: a learning method's student adapter (a job's best-of-k
    baseline run samples the base model, which needs no slot); an EMA teacher adapter lives only in the peft
    policy, which scores with it, and is never sampled, so it takes no engine slot; and `publish_adapter` retires
    a run's previous version before it loads the new one. So slots = runs: fewer would make vLLM evict and reload
    adapters inside a batch, more only reserves memory no run uses."""
    return max(1, runs)


@dataclass
class Serving:
    """What is served: the model's name as reported, the path vLLM and peft record as its base, the policy that
    trains the adapters and the engine that samples them."""

    model_name: str
    resolved_model: str | None  # None: a model with no folder or hub id (a random-init --shape model)
    policy: LoraPolicy
    engine: GenerationEngine


def load_serving(settings: EngineSettings, *, device: str | None = None) -> Serving:
    """Load the base model (slow: a worker runs it in a thread), wrap it in a LoRA policy and build the engine."""
    from sdpo_core.models import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model
    from sdpo_core.policy import LoraPolicy

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="peft")
    model, tokenizer = load_model_and_tokenizer(settings.model, device=device, dtype=settings.dtype)
    return serve_policy(LoraPolicy(model, tokenizer), settings, model_name=settings.model or DEFAULT_MODEL,
                        resolved_model=str(resolve_model(settings.model)))


def serve_policy(policy: LoraPolicy, settings: EngineSettings, *, model_name: str,
                 resolved_model: str | None) -> Serving:
    """The engine over a policy built another way (a random-init model of a shape: `resolved_model` None)."""
    from sdpo_core.engine_choice import make_engine

    engine = make_engine(policy, resolved_model, settings.engine, max_batch_size=settings.max_batch_size,
                         max_adapters=settings.max_adapters, compile=settings.compile)
    return Serving(model_name=model_name, resolved_model=resolved_model, policy=policy, engine=engine)
