"""All knobs of one discovery run in one place: the method, the budget and the SDPO hyperparameters.

Defaults follow the paper's test-time setting (arXiv 2601.20802, Table 12 "TTT" column) except where measurement
on the default model said otherwise (`sdpo bench trace`, docs/benchmarks.md "Does the adapter learn"); each
departure is said on its field:
1. the teacher is contrastive (feedback against a content-free control, beta 2, anchored on the frozen teacher's
   plain-prompt distribution), not the plain feedback reprompt: the plain teacher taught the reprompt's style and
   copied what feedback quotes, and the adapter learned nothing in six updates;
2. forward KL over the full vocabulary, not reverse KL over the student's top 20: the word the feedback asks for
   is one the student almost never samples, so neither the reverse KL nor the student's top 20 carry it;
3. the frozen base is the teacher (the anchored target is already a fixed point: no EMA needed);
4. learning rate 1e-3 for the LoRA adapter (the paper's 1e-6 is for full fine-tuning).
The default method is `auto` (sdpo_core/auto.py), not plain SDPO: on the informative family it matched multi-turn
(7.11x best-of-k in attempts, 4.88x in seconds) where SDPO alone reached 3.56x and 0.95x, and on the binary family
it stayed near best-of-k where SDPO fell far below (P@32 0.38 and 0.15 against 0.44; docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


def _known_method(name: str) -> str:
    from sdpo_core.methods import METHODS  # the registry (it imports this module's types)

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose among {', '.join(METHODS)}")
    return name


def _method_schema(schema: dict[str, Any]) -> None:
    from sdpo_core.methods import METHODS

    schema["enum"] = list(METHODS)


# A discovery method's name: one of sdpo_core.methods.METHODS, read when validating and when a schema is made, so a
# method registered there is accepted everywhere (API, CLI, bench) and listed in the OpenAPI enum.
Method = Annotated[str, AfterValidator(_known_method), Field(json_schema_extra=_method_schema)]
TeacherKind = Literal["ema", "frozen", "trust-region"]
TeacherContext = Literal["feedback", "contrastive"]
TeacherFeedback = Literal["own", "distinct", "each"]
ContrastAnchor = Literal["teacher", "student"]

# All attention and MLP projections of Llama/Qwen/Mistral-style decoders.
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The only layers a job's adapter may wrap. The embeddings and the output head are shared by every job on a worker:
# an adapter there changes the layer under all of them (peft never unwraps it), so they are refused.
ALLOWED_TARGET_MODULES = frozenset(DEFAULT_TARGET_MODULES)


class SDPOSettings(BaseModel):
    """Hyperparameters of the SDPO update (ignored by the baselines)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    alpha: float = Field(default=0.0, ge=0.0, le=1.0, description="0 forward KL (default; the paper's test-time "
                         "setting uses 1), 1 reverse KL, between: JSD.")
    top_k: int | None = Field(default=None, ge=1, le=4096, description="Distil over the student's top-K tokens; None = full "
                              "vocab (default; the paper uses 20).")
    add_tail: bool = Field(default=True, description="Add one bucket for the probability mass outside the top-K.")
    is_clip: float | None = Field(default=2.0, gt=0, le=100, description="Cap of the detached importance weight pi/pi_old.")
    teacher: TeacherKind = Field(default="frozen", description="Which self-teacher regularisation to use (the "
                                 "paper's default is ema).")
    teacher_update_rate: float = Field(
        default=0.01, ge=0.0, le=1.0, description="EMA rate r, or the trust-region interpolation weight."
    )
    learning_rate: float = Field(
        default=1e-3, gt=0, le=0.1, description="AdamW learning rate of the LoRA adapter (sdpo bench trace, "
        "docs/benchmarks.md: the paper's 1e-6 is for full fine-tuning; 3e-4 learned nothing in six updates)."
    )
    updates_per_step: int = Field(default=1, ge=1, le=16, description="Optimizer steps on each step's attempts "
                                  "(1: on-policy, as the paper's test-time setting).")
    weight_decay: float = Field(default=0.01, ge=0, le=1.0)
    grad_clip: float = Field(default=1.0, gt=0, le=100.0)
    lora_rank: int = Field(default=16, ge=1, le=512)
    lora_alpha: float = Field(default=32.0, gt=0, le=1024.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1,
                                      description="Projections that get LoRA factors; a subset of the defaults.")
    teacher_context: TeacherContext = Field(
        default="contrastive", description="feedback: the teacher reads the reprompt with the feedback (the paper). "
        "contrastive: the target is anchor * (q_feedback / q_control)^contrast, the control reprompt identical but "
        "with content-free feedback, so the style any reprompt induces (and copying) cancels.",
    )
    contrast: float = Field(default=2.0, ge=0.0, le=8.0, description="Contrastive: the strength beta of the "
                            "feedback's log-ratio against the control.")
    contrast_clip: float = Field(default=5.0, gt=0.0, le=20.0, description="Contrastive: the per-token log-ratio is clipped "
                                 "to +-this (the paper's test-time 'clip advantages 5.0'), so a rare token whose "
                                 "ratio is huge cannot take over the target.")
    contrast_anchor: ContrastAnchor = Field(
        default="teacher", description="Contrastive: the distribution the log-ratio is added to: the teacher on "
        "the plain prompt (a fixed point the student converges to) or the current student (moves every update, "
        "so the target runs away; kept for measurement).",
    )
    control_feedback: str = Field(default="Your answer is not correct.", min_length=1, max_length=500,
                                  description="Contrastive: the content-free feedback of the control reprompt.")
    include_feedback: bool = Field(default=True, description="Put the verifier's feedback in the teacher's context.")
    replay: int = Field(
        default=0, ge=0, le=8, description="Each update also distils the latest failed attempt of up to this many "
        "earlier distinct feedbacks that this step's attempts did not get (each with its own feedback), so that what "
        "an earlier requirement taught the adapter is not unlearned once the feedback moves on to the next one.")
    teacher_feedback: TeacherFeedback = Field(
        default="own", description="own: the teacher reads the attempt's own feedback (the paper). distinct: one "
        "reprompt with every distinct feedback the run has seen so far, the attempt's own last (oldest dropped "
        "first to fit max_reprompt_tokens). each: the own feedback and up to 3 earlier distinct ones, each read "
        "alone, their contrastive log-ratios summed (a product of experts; contrastive teacher only). The last two "
        "keep what earlier feedback taught the adapter in its target when the feedback moves on to another "
        "requirement.")
    feedback_only_without_solution: bool = Field(
        default=True, description="Use feedback only for samples that have no successful sibling to imitate."
    )
    success_threshold: float = Field(default=1.0, ge=0, le=1, description="Reward at which a sibling demonstrates.")
    remove_thinking: bool = Field(default=True, description="Strip <think>...</think> from demonstrations.")
    max_reprompt_tokens: int = Field(default=4096, ge=64, le=32_768, description="Longest teacher prompt; feedback shortened.")
    micro_batch_size: int = Field(default=16, ge=1, le=256, description="Most attempts in one forward/backward pass.")
    micro_batch_tokens: int = Field(default=4096, ge=64, le=65_536, description="Most prompt + attempt tokens in one "
                                    "forward/backward pass (activation memory); a longer attempt gets a pass alone.")
    loss_chunk_tokens: int = Field(default=512, ge=1, le=8192, description="Tokens whose logits are materialised at once.")

    @field_validator("target_modules")
    @classmethod
    def _known_projections(cls, modules: list[str]) -> list[str]:
        refused = [m for m in modules if m not in ALLOWED_TARGET_MODULES]
        if refused:
            raise ValueError(f"{refused[0]!r} cannot carry an adapter: choose among {', '.join(DEFAULT_TARGET_MODULES)} "
                             "(embeddings and the output head are shared by every job on a worker)")
        return list(dict.fromkeys(modules))


class RunSettings(BaseModel):
    """One discovery run: which method, how many attempts, how they are sampled."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    method: Method = Field(default="auto", description="The discovery method (sdpo_core.methods): auto (default: per "
                           "problem, feedback in context, distillation or the base model, by measurement), sdpo, "
                           "multi-turn or best-of-k.")
    max_attempts: int = Field(default=256, ge=1, le=1_000_000, description="The attempt budget.")
    attempts_per_step: int = Field(default=16, ge=1, le=1024, description="Attempts sampled per step (N).")
    max_new_tokens: int = Field(default=256, ge=1, le=65_536, description="Longest attempt in tokens.")
    temperature: float = Field(default=1.0, ge=0.0, le=5.0, description="Sampling temperature.")
    seed: int = Field(default=0, ge=0, lt=2**63, description="The run's seed: its samples and adapter start from it.")
    stop_at_first_success: bool = Field(default=True, description="False keeps going to trace a full curve.")
    max_prompt_tokens: int = Field(
        default=4096, ge=64, le=32_768, description="Multi-turn: the oldest feedback is dropped beyond this many prompt tokens."
    )
    sdpo: SDPOSettings = Field(default_factory=SDPOSettings)

    @model_validator(mode="after")
    def _budget_covers_a_step(self) -> RunSettings:
        if self.max_attempts < self.attempts_per_step:
            raise ValueError(
                f"max_attempts ({self.max_attempts}) is smaller than one step of attempts_per_step "
                f"({self.attempts_per_step})"
            )
        return self
