"""The generation-engine contract, and the sampling rule every engine shares.

The loop asks an engine for attempts; it never knows which engine runs. An engine takes a list of requests
(one per problem: a prompt, the adapter to use, how many attempts) and returns, per attempt, the sampled token
ids with their log-probabilities under the sampling distribution.

Reproducibility: attempt i of a run draws its randomness from its own stream, keyed by (run seed, i). The
stream does not depend on which other attempts share the batch, so a run gives the same attempts whether it runs
alone or interleaved with other problems, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class GenerationRequest:
    """Attempts for one problem: `len(attempt_indices)` samples of the same prompt with the same adapter."""

    prompt_ids: list[int]
    adapter: str | None  # None = the base model
    seed: int
    attempt_indices: list[int]  # global attempt numbers: each keys its own random stream
    max_new_tokens: int
    temperature: float = 1.0
    # Asked between decode steps: True stops this request's attempts where they are (its job was cancelled or its
    # step ran past its wall clock); the engine then sets `stopped` and returns what was sampled, truncated.
    should_stop: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    stopped: bool = False

    @property
    def n(self) -> int:
        return len(self.attempt_indices)


@dataclass
class Completion:
    """One sampled attempt."""

    token_ids: list[int]
    logprobs: list[float]  # log-prob of each token under the sampling distribution
    truncated: bool  # stopped by max_new_tokens rather than an end-of-sequence token
    text: str = field(default="")


class GenerationEngine(Protocol):
    """What the loop needs from an engine."""

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Completions per request, in the request's attempt order (fewer, truncated, for a request that was
        stopped: see GenerationRequest.should_stop)."""
        ...

    def publish_adapter(self, name: str) -> None:
        """Make the adapter's current weights the ones the next `generate` samples from."""
        ...

    def drop_adapter(self, name: str) -> None:
        """Forget an adapter (its run ended)."""
        ...


def attempt_uniforms(seed: int, attempt_index: int, length: int) -> np.ndarray:
    """The uniform draws in [0, 1) that decide the tokens of one attempt (inverse-CDF sampling)."""
    return np.random.default_rng([seed, attempt_index]).random(length, dtype=np.float32)
