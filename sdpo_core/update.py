"""One SDPO update of a run's adapter from one step of attempts, start to finish.

    for each micro-batch of distilled attempts:
        teacher pass (no grad)  : reprompt + attempt tokens -> hidden states at the attempt's positions
                                  (contrastive: also the control reprompt and the plain prompt, the anchor)
        student pass            : prompt + attempt tokens   -> hidden states at the same positions
                                  (both passes run the micro-batch's common prefix once: LoraPolicy.response_hidden)
        loss += sum_t D_alpha(student_t, teacher_t) * w_t / (distilled tokens in the whole step)
        loss.backward()
    clip grad norm, AdamW step, EMA teacher step        (updates_per_step times over the same attempts)

Both passes re-score the tokens the student sampled; nothing new is generated. Attempts without a teacher
context (no feedback, no successful sibling) are skipped: they contribute zero loss.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sdpo_core.failures import RunFailure
from sdpo_core.loss import TargetFn, chunked_loss, contrastive_target
from sdpo_core.policy import LoraPolicy
from sdpo_core.records import StepMetrics
from sdpo_core.settings import SDPOSettings
from sdpo_core.teacher import teacher_hidden, teacher_logits, update_teacher

# The largest LoRA weight update an adapter may hold (the bound of LoraPolicy.largest_update_norm, per layer): orders
# of magnitude above what learning produces (about 5 after ten default updates on the default model), far below
# what overflows a bfloat16 matmul. An adapter past it, or with a weight that is not finite, fails its own job.
MAX_UPDATE_NORM = 1e4


@dataclass
class DistillSample:
    """One attempt to distil: the student's prompt, the teacher's prompts and the sampled tokens."""

    prompt_ids: list[int]
    teacher_prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float] | None  # under the sampling policy (pi_old); None: sampled in another context
    control_prompt_ids: list[int] | None = None  # the contrastive teacher's control reprompt
    # teacher_feedback "each": the reprompts of the run's other distinct feedbacks, each a contrastive expert
    earlier_prompt_ids: list[list[int]] = field(default_factory=list)


def make_optimizer(policy: LoraPolicy, adapter: str, settings: SDPOSettings) -> torch.optim.AdamW:
    params = list(policy.parameters(adapter).values())
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def target_fn(policy: LoraPolicy, adapter: str, settings: SDPOSettings, mb: list[DistillSample],
              scale: float) -> TargetFn:
    """The micro-batch's teacher target, logits per slice of its response tokens (teacher passes run here, once).

    feedback:    log q(. | x, f, y<t)
    contrastive: log anchor(. | x, y<t) + beta * clip(log q(. | x, f, y<t) - log q(. | x, c, y<t))
                 anchor = the teacher on the plain prompt, or the current student (detached)
                 with earlier feedbacks f_j (teacher_feedback "each"), a product of experts: the sum over f and
                 every f_j of its clipped log-ratio against the control
    """
    lengths = [len(s.response_ids) for s in mb]
    contexts = {"feedback": [s.teacher_prompt_ids for s in mb]}
    contrastive = settings.teacher_context == "contrastive"
    experts = max(len(s.earlier_prompt_ids) for s in mb) if contrastive else 0
    if contrastive:
        assert all(s.control_prompt_ids is not None for s in mb), "contrastive teacher needs control reprompts"
        contexts["control"] = [s.control_prompt_ids for s in mb]
        if settings.contrast_anchor == "teacher":
            contexts["anchor"] = [s.prompt_ids for s in mb]
        for j in range(experts):  # a sample with fewer earlier feedbacks reads its control: a log-ratio of 0
            contexts[f"earlier{j}"] = [s.earlier_prompt_ids[j] if j < len(s.earlier_prompt_ids)
                                       else s.control_prompt_ids for s in mb]
    hidden = {
        name: teacher_hidden(policy, adapter, settings, [p + s.response_ids for p, s in zip(prompts, mb)], lengths)
        for name, prompts in contexts.items()
    }

    def log_probs(name: str, piece: slice) -> torch.Tensor:
        return F.log_softmax(teacher_logits(policy, settings, [h[piece] for h in hidden[name]]) * scale, dim=-1)

    def target(piece: slice, student_logits: torch.Tensor) -> torch.Tensor:
        if not contrastive:
            return log_probs("feedback", piece)
        anchor = (log_probs("anchor", piece) if settings.contrast_anchor == "teacher"
                  else F.log_softmax(student_logits.float(), dim=-1))
        control = log_probs("control", piece)
        feedback = [log_probs("feedback", piece)] + [log_probs(f"earlier{j}", piece) for j in range(experts)]
        return contrastive_target(anchor, feedback, control, settings.contrast, settings.contrast_clip)

    return target


def scored_prompts(sample: DistillSample, settings: SDPOSettings) -> list[list[int]]:
    """The prompts the update runs the sample's response after: the student's and the teacher's contexts."""
    prompts = [sample.prompt_ids, sample.teacher_prompt_ids]
    if settings.teacher_context == "contrastive":
        prompts += [sample.control_prompt_ids or [], *sample.earlier_prompt_ids]
        if settings.contrast_anchor == "teacher":
            prompts.append(sample.prompt_ids)
    return prompts


def micro_batches(samples: list[DistillSample], settings: SDPOSettings) -> Iterator[list[DistillSample]]:
    """Consecutive samples packed up to micro_batch_size rows and micro_batch_tokens tokens (the longest context
    the passes run, teacher reprompt included): few large passes for short attempts, bounded memory for long ones."""
    batch: list[DistillSample] = []
    width = 0  # the batch's longest row: padded rows cost that much each
    for sample in samples:
        tokens = max(len(sample.prompt_ids), len(sample.teacher_prompt_ids)) + len(sample.response_ids)
        if batch and (len(batch) == settings.micro_batch_size
                      or (len(batch) + 1) * max(tokens, width) > settings.micro_batch_tokens):
            yield batch
            batch, width = [], 0
        width = max(width, tokens)
        batch.append(sample)
    if batch:
        yield batch


def distil(
    policy: LoraPolicy, adapter: str, samples: list[DistillSample], settings: SDPOSettings, temperature: float,
    seconds: dict[str, float],
) -> float:
    """The token-mean SDPO loss of `samples`; with grad enabled its gradient is accumulated into the adapter."""
    total_tokens = sum(len(s.response_ids) for s in samples)
    device = policy.device
    scale = 1.0 / (temperature if temperature > 0 else 1.0)  # logits at the sampling temperature
    loss = 0.0

    def head(h: torch.Tensor) -> torch.Tensor:
        return policy.head(h) * scale

    for mb in micro_batches(samples, settings):
        mb_lengths = [len(s.response_ids) for s in mb]
        mb_tokens = torch.tensor([t for s in mb for t in s.response_ids], device=device)  # (N,)
        on_policy = all(s.response_logprobs is not None for s in mb)
        mb_old_lp = (torch.tensor([lp for s in mb for lp in s.response_logprobs], device=device)  # (N,)
                     if on_policy else None)  # attempts sampled in another context carry no importance weight

        # ---- teacher: the same attempt tokens after the feedback-informed prompt(s) ----
        clock = time.perf_counter()
        mb_target = target_fn(policy, adapter, settings, mb, scale)
        seconds["teacher_forward"] = seconds.get("teacher_forward", 0.0) + time.perf_counter() - clock

        # ---- student: the original prompt; forward, then backward through this micro-batch's graph ----
        clock = time.perf_counter()
        s_hidden = policy.response_hidden([s.prompt_ids + s.response_ids for s in mb], mb_lengths, adapter)  # (N, H)
        loss += chunked_loss(
            s_hidden, mb_target, head, mb_tokens, mb_old_lp, scale=1.0 / total_tokens,  # token mean over the step
            alpha=settings.alpha, top_k=settings.top_k, add_tail=settings.add_tail, is_clip=settings.is_clip,
            chunk_tokens=settings.loss_chunk_tokens,
        )
        seconds["student_forward_backward"] = seconds.get("student_forward_backward", 0.0) + time.perf_counter() - clock
    return loss


@torch.no_grad()
def distillation_loss(
    policy: LoraPolicy, adapter: str, samples: list[DistillSample], settings: SDPOSettings, temperature: float = 1.0
) -> float:
    """The SDPO loss of `samples` at the current weights, without an update (for measurements)."""
    if not any(s.response_ids for s in samples):
        return 0.0
    return distil(policy, adapter, samples, settings, temperature, {})


def sdpo_update(
    policy: LoraPolicy,
    optimizer: torch.optim.Optimizer,
    adapter: str,
    samples: list[DistillSample],
    settings: SDPOSettings,
    temperature: float = 1.0,
) -> StepMetrics:
    """Distil the teacher into the student adapter over `samples`; one optimizer step."""
    total_tokens = sum(len(s.response_ids) for s in samples)
    if total_tokens == 0:
        return StepMetrics(loss=0.0)  # nothing to learn from this step (the reference's empty-target batch)
    seconds: dict[str, float] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    first_loss = None
    for _ in range(settings.updates_per_step):  # later passes reuse the samples; their importance weights move
        optimizer.zero_grad(set_to_none=True)
        loss_total = distil(policy, adapter, samples, settings, temperature, seconds)
        first_loss = loss_total if first_loss is None else first_loss
        grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        if torch.isfinite(grad_norm):  # a non-finite step is skipped, teacher included, as the reference does
            optimizer.step()
            update_teacher(policy, adapter, settings)
    optimizer.zero_grad(set_to_none=True)
    check_adapter(policy, adapter, settings)
    scored = settings.updates_per_step * sum(len(p) + len(s.response_ids) for s in samples
                                             for p in scored_prompts(s, settings))
    return StepMetrics(
        loss=first_loss, distilled_samples=len(samples), distilled_tokens=total_tokens, grad_norm=float(grad_norm),
        seconds=seconds, tokens_scored=scored,
    )


def check_adapter(policy: LoraPolicy, adapter: str, settings: SDPOSettings) -> None:
    """RunFailure when the adapter's weights are not finite or past MAX_UPDATE_NORM: the run's own settings drove it
    there, and an adapter like that would only produce garbage (other jobs' rows never read it: rows_lora)."""
    norm = policy.largest_update_norm(adapter)
    if not norm <= MAX_UPDATE_NORM:  # NaN fails this too
        raise RunFailure("adapter_diverged", f"the adapter's weights diverged after an update (largest layer update "
                         f"norm {norm:.3g}, limit {MAX_UPDATE_NORM:g}); lower settings.sdpo.learning_rate "
                         f"({settings.learning_rate:g}) or lora_alpha ({settings.lora_alpha:g}), or raise its "
                         f"lora_rank ({settings.lora_rank})")
