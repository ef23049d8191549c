"""Shared fixtures: the tiny random model (fast unit tests), the real SmolLM2 (integration tests), and a real
sandbox and verifier pool (subprocesses, no mocks)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import make_tiny_model_dir  # noqa: E402

from workers.pool import VerifierPool  # noqa: E402
from workers.sandbox import SubprocessSandbox  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def tiny_policy(tiny_model_dir):
    """A fresh LoraPolicy on the tiny model (adapters are per test)."""
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    return LoraPolicy(model, tokenizer)


@pytest.fixture(scope="session")
def smollm2_policy():
    """The real offline default model, loaded once per session (converted from the GGUF on first use)."""
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    model, tokenizer = load_model_and_tokenizer(None, device="cpu")
    return LoraPolicy(model, tokenizer)


@pytest.fixture(scope="session")
def sandbox() -> SubprocessSandbox:
    return SubprocessSandbox()


@pytest.fixture(scope="session")
def pool():
    with VerifierPool(max_workers=2) as verifier_pool:
        yield verifier_pool
