"""`reasoning_gym`: one generated task of a reasoning-gym dataset, scored by the dataset's own `score_answer`.

The task entry is (dataset name, config, seed, index): the dataset is built with that seed and enough entries,
and the entry at `index` is the problem. The answer is taken from the last <answer>...</answer>. Feedback says the
score and the expected format, never the answer. reasoning-gym is imported on first use.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from sdpo_core.verifiers.base import Verdict, VerifierError
from sdpo_core.verifiers.extract import answer_tag

if TYPE_CHECKING:
    from sdpo_core.problem import Problem

MAX_SCAN_CHARS = 20_000
FORMAT_HINT = "Put only your final answer between <answer> and </answer>, in the form the question asks for."


class ReasoningGymSpec(BaseModel):
    """A reasoning-gym task entry; reward = the dataset's score of the answer in [0, 1]."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["reasoning_gym"] = "reasoning_gym"
    runs_code: ClassVar[bool] = False
    dataset: str = Field(pattern=r"^[a-z0-9_]+$", max_length=100, description="A reasoning-gym dataset name.")
    config: dict[str, JsonValue] = Field(default_factory=dict, description="The dataset's config, without seed and "
                                         "size (JSON; numbers finite).")
    seed: int = Field(default=0, ge=0, lt=2**32)
    index: int = Field(default=0, ge=0, lt=100_000, description="Which entry of the dataset is the problem.")
    solved_at: float = Field(default=1.0, gt=0, le=1, description="Score at which the task counts as solved.")

    @field_validator("config")
    @classmethod
    def _no_seed_or_size(cls, config: dict[str, JsonValue]) -> dict[str, JsonValue]:
        if {"seed", "size"} & config.keys():
            raise ValueError("give seed as its own field; size is derived from index")
        return config

    def entry(self) -> dict[str, Any]:
        """The task entry: {question, answer, metadata}."""
        return _entry(self.dataset, json.dumps(self.config, sort_keys=True), self.seed, self.index)

    def worst_case_seconds(self) -> float:
        return 60.0  # building a dataset entry can take a while

    def verify(self, problem: Problem, completion: str) -> Verdict:
        given = answer_tag(completion[-MAX_SCAN_CHARS:])
        if given is None:
            return Verdict(reward=0.0, solved=False, feedback=f"No <answer>...</answer> found. {FORMAT_HINT}")
        import reasoning_gym  # heavy; only where these tasks are verified

        entry = self.entry()
        score = float(reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])(given, entry))
        score = min(max(score, 0.0), 1.0)
        if score >= self.solved_at:
            return Verdict(reward=score, solved=True, answer=given)
        return Verdict(
            reward=score, solved=False, answer=given,
            feedback=f"Your answer scored {score:.2f} out of 1. {FORMAT_HINT}",
        )


@functools.lru_cache(maxsize=64)
def _entry(dataset: str, config_json: str, seed: int, index: int) -> dict[str, Any]:
    import reasoning_gym

    try:
        data = reasoning_gym.create_dataset(dataset, seed=seed, size=index + 1, **json.loads(config_json))
    except (KeyError, ValueError, TypeError) as exc:
        raise VerifierError(f"reasoning-gym cannot build dataset {dataset!r}: {exc}") from exc
    return dict(data[index])
