"""Shared fixtures: the tiny random model (fast unit tests) and the real SmolLM2 (integration tests)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import make_tiny_model_dir  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-llama")


# The engine contract suite also runs on a GPU machine with SDPO_TEST_DEVICE=cuda (benchmarks/gpu_suite.sh).
TEST_DEVICE = os.environ.get("SDPO_TEST_DEVICE", "cpu")


@pytest.fixture
def tiny_policy(tiny_model_dir):
    """A fresh LoraPolicy on the tiny model (adapters are per test)."""
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device=TEST_DEVICE, dtype="float32")
    return LoraPolicy(model, tokenizer)


@pytest.fixture(scope="session")
def smollm2_policy():
    """The real offline default model, loaded once per session (converted from the GGUF on first use)."""
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    model, tokenizer = load_model_and_tokenizer(None, device="cpu")
    return LoraPolicy(model, tokenizer)
