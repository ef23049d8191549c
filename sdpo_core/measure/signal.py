"""`sdpo bench signal`: is there anything in the feedback for the adapter to learn, before spending a run on it?

Per problem, from the frozen model:
- base pass@1: `samples` attempts on the plain prompt;
- pass@1 with the feedback in the prompt: the same number of attempts, each prompt carrying the feedback of one
  failed base attempt (the multi-turn prompt): how much the feedback helps when the model reads it, the
  self-teacher's headroom;
- pass@1 with every requirement told at once (`samples` attempts, the same multi-turn prompt with the verifier's
  `all_requirements()` as its one feedback), for verifiers that can state them (StatesRequirements): whether a
  problem whose feedback arrives one piece at a time is solvable at all once everything is known; None otherwise;
- the per-token gap between the student and its self-teacher on failed base attempts: KL(teacher || student) for
  the feedback teacher and for the contrastive target (anchor * (q_feedback / q_control)^beta), its peak position,
  and the shift: how much more likely the teacher finds the failed attempt's own tokens than the student does
  (positive: the teacher copies what the feedback quotes or imitates the reprompt's style; negative: the feedback
  moves it away from the failure). Follow-up work reports the final gain of self-distillation roughly linear in
  this initial gap.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from sdpo_core.engine import Completion, GenerationEngine, GenerationRequest
from sdpo_core.loss import contrastive_target
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.reprompt import fit_prompt, multi_turn_prompt
from sdpo_core.settings import SDPOSettings
from sdpo_core.verifiers import StatesRequirements, VerifyFn, verify_attempts

SIGNAL_SEED = 20_000  # attempts of the signal report are independent of the benchmarks' runs


class ProblemSignal(BaseModel):
    problem_id: str
    samples: int
    base_solved: int
    feedback_samples: int
    feedback_solved: int
    all_told_samples: int | None = None  # None: the verifier cannot state all its requirements
    all_told_solved: int | None = None
    gap_attempts: int
    gap_feedback: float  # mean per-token KL(q_feedback || student), nats
    gap_contrastive: float  # mean per-token KL(q* || student)
    peak_contrastive: float  # mean over attempts of the largest per-token KL(q* || student)
    shift_feedback: float  # mean per-token log q_feedback(y) - log student(y) on the failed attempt y
    shift_contrastive: float  # mean per-token log q_feedback(y) - log q_control(y)
    feedback_examples: list[str]

    @property
    def base_rate(self) -> float:
        return self.base_solved / self.samples

    @property
    def feedback_rate(self) -> float:
        return self.feedback_solved / self.feedback_samples

    @property
    def all_told_rate(self) -> float | None:
        return None if not self.all_told_samples else (self.all_told_solved or 0) / self.all_told_samples


def _sample(engine: GenerationEngine, prompts: Sequence[list[int]], seed: int, max_new_tokens: int,
            temperature: float) -> list[Completion]:
    """One attempt per prompt (identical prompts share a request), in prompt order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(tuple(prompt), []).append(i)
    requests = [GenerationRequest(list(p), None, seed, [i + 1 for i in idx], max_new_tokens, temperature)
                for p, idx in groups.items()]
    out: list[Completion | None] = [None] * len(prompts)
    for idx, completions in zip(groups.values(), engine.generate(requests), strict=True):
        for i, completion in zip(idx, completions, strict=True):
            out[i] = completion
    return out


@torch.no_grad()
def token_log_probs(policy: LoraPolicy, context: list[int], response: list[int], adapter: str | None = None,
                    temperature: float = 1.0) -> torch.Tensor:
    """(T, V) log-probabilities of each response position after `context`."""
    hidden = policy.response_hidden([context + response], [len(response)], adapter)
    return F.log_softmax(policy.head(hidden).float() / (temperature or 1.0), dim=-1)


def _kl(p_lp: torch.Tensor, q_lp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(p || q) over the vocabulary."""
    return (p_lp.exp() * (p_lp - q_lp)).sum(-1)


def measure_signal(
    problem: Problem, policy: LoraPolicy, engine: GenerationEngine, *, settings: SDPOSettings | None = None,
    verify: VerifyFn = verify_attempts, samples: int = 64, feedback_samples: int | None = None,
    gap_attempts: int = 16, max_new_tokens: int = 64,
    temperature: float = 1.0, max_prompt_tokens: int = 4096,
) -> ProblemSignal:
    settings = settings or SDPOSettings(teacher_context="contrastive")
    feedback_samples = feedback_samples or samples
    plain = policy.chat_ids(problem.chat())
    base = _sample(engine, [plain] * samples, SIGNAL_SEED, max_new_tokens, temperature)
    verdicts = verify(problem, [c.text for c in base])
    failed = [(c, v.feedback) for c, v in zip(base, verdicts, strict=True) if not v.solved and v.feedback]
    if not failed:  # every attempt solved (or no feedback at all): the feedback prompt is the plain prompt
        failed = [(c, "") for c in base]

    in_context = [multi_turn_prompt(problem, policy.chat_ids, [fb] if fb else [], max_prompt_tokens)
                  for _, fb in (failed[i % len(failed)] for i in range(feedback_samples))]
    with_feedback = _sample(engine, in_context, SIGNAL_SEED + 1, max_new_tokens, temperature)
    feedback_solved = sum(v.solved for v in verify(problem, [c.text for c in with_feedback]))

    all_told_solved = None
    if isinstance(problem.verifier, StatesRequirements):
        told = multi_turn_prompt(problem, policy.chat_ids, [problem.verifier.all_requirements()], max_prompt_tokens)
        all_told = _sample(engine, [told] * samples, SIGNAL_SEED + 2, max_new_tokens, temperature)
        all_told_solved = sum(v.solved for v in verify(problem, [c.text for c in all_told]))

    control = fit_prompt(problem, policy.chat_ids, settings.max_reprompt_tokens, None, settings.control_feedback)
    gaps: dict[str, list[float]] = {k: [] for k in ("fb", "cst", "peak", "shift", "shift_c")}
    for completion, feedback in failed[:gap_attempts]:
        y = completion.token_ids
        if not y or not feedback:
            continue
        teacher = fit_prompt(problem, policy.chat_ids, settings.max_reprompt_tokens, None, feedback)
        s_lp, f_lp, c_lp = (token_log_probs(policy, ctx, y, None, temperature) for ctx in (plain, teacher, control))
        target = F.log_softmax(contrastive_target(s_lp, f_lp, c_lp, settings.contrast, settings.contrast_clip), -1)
        picked = torch.tensor(y)[:, None]
        kl_c = _kl(target, s_lp)
        gaps["fb"].append(_kl(f_lp, s_lp).mean().item())
        gaps["cst"].append(kl_c.mean().item())
        gaps["peak"].append(kl_c.max().item())
        gaps["shift"].append((f_lp.gather(-1, picked) - s_lp.gather(-1, picked)).mean().item())
        gaps["shift_c"].append((f_lp.gather(-1, picked) - c_lp.gather(-1, picked)).mean().item())

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    return ProblemSignal(
        problem_id=problem.id or "problem", samples=samples, base_solved=sum(v.solved for v in verdicts),
        feedback_samples=feedback_samples, feedback_solved=feedback_solved,
        all_told_samples=samples if all_told_solved is not None else None, all_told_solved=all_told_solved,
        gap_attempts=len(gaps["fb"]), gap_feedback=mean(gaps["fb"]),
        gap_contrastive=mean(gaps["cst"]), peak_contrastive=mean(gaps["peak"]), shift_feedback=mean(gaps["shift"]),
        shift_contrastive=mean(gaps["shift_c"]),
        feedback_examples=sorted({fb for _, fb in failed if fb})[:3],
    )
