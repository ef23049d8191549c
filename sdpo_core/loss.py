"""The SDPO loss: per-token divergence between the student and its stop-gradient self-teacher.

    student  pi(. | x, y<t)        the policy on the original prompt
    teacher  q(.  | x, f, y<t)     the same model (EMA / frozen / trust-region) shown the feedback f

    L = sum_t w_t * D_alpha(pi_t, q_t) / (number of distilled tokens)

- D_alpha: alpha=0 forward KL(q || pi); alpha=1 reverse KL(pi || q) (the paper's Eq. 1, the test-time default);
  in between the generalised JSD (1-alpha) KL(pi || m) + alpha KL(q || m) with m = (1-alpha) pi + alpha q.
- Top-K (paper App. A.3): the divergence runs over the student's top-K tokens plus one tail bucket holding the
  rest of the mass, for student and teacher alike; without the tail both are renormalised over the top-K.
- w_t = min(pi(y_t) / pi_old(y_t), is_clip), detached: the rollout importance weight (truncated, one-sided).
- Logits never exist for all tokens at once: hidden states are projected to the vocabulary in chunks of
  `chunk_tokens`, each chunk's loss is pushed back to the hidden states before the next chunk is built, and one
  backward then runs through the model: peak memory holds one chunk of float32 logits, not 16 x 8k x 150k of
  them, and no logit is computed twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
# (slice of the tokens, the student's detached logits there) -> the teacher's target logits for those tokens
TargetFn = Callable[[slice, torch.Tensor], torch.Tensor]


def bucket_log_probs(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, top_k: int | None, add_tail: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over the distillation buckets: full vocab, or top-K (+ tail)."""
    s_lp = F.log_softmax(student_logits.float(), dim=-1)  # (N, V)
    t_lp = F.log_softmax(teacher_logits.float(), dim=-1)  # (N, V)
    if top_k is None or top_k >= s_lp.shape[-1]:
        return s_lp, t_lp
    idx = s_lp.detach().topk(top_k, dim=-1).indices  # (N, K), chosen by the student
    s_k, t_k = s_lp.gather(-1, idx), t_lp.gather(-1, idx)
    if not add_tail:
        return s_k - s_k.logsumexp(-1, keepdim=True), t_k - t_k.logsumexp(-1, keepdim=True)
    return torch.cat([s_k, _tail(s_k)], dim=-1), torch.cat([t_k, _tail(t_k)], dim=-1)


def _tail(top_lp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(top_lp)): the log-mass outside the top-K, kept finite when the top-K hold everything."""
    covered = top_lp.logsumexp(-1, keepdim=True).clamp(max=-1e-7)
    return torch.log(-torch.expm1(covered))


def divergence(s_lp: torch.Tensor, t_lp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-token D_alpha(student, teacher) from log-probs over the same buckets; (N, B) -> (N,)."""
    if alpha == 0.0:  # forward KL(q || pi)
        return (t_lp.exp() * (t_lp - s_lp)).sum(-1)
    if alpha == 1.0:  # reverse KL(pi || q)
        return (s_lp.exp() * (s_lp - t_lp)).sum(-1)
    m_lp = torch.logsumexp(torch.stack([s_lp + math.log(1 - alpha), t_lp + math.log(alpha)]), dim=0)
    kl_s = (s_lp.exp() * (s_lp - m_lp)).sum(-1)
    kl_t = (t_lp.exp() * (t_lp - m_lp)).sum(-1)
    return (1 - alpha) * kl_s + alpha * kl_t


def token_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tokens: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    *,
    alpha: float,
    top_k: int | None,
    add_tail: bool,
    is_clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted per-token losses and the student's log-prob of each sampled token, for N tokens.

    student_logits, teacher_logits: (N, V); tokens, old_logprobs: (N,). The teacher is detached here.
    """
    teacher_logits = teacher_logits.detach()
    s_lp, t_lp = bucket_log_probs(student_logits, teacher_logits, top_k, add_tail)
    per_token = divergence(s_lp, t_lp, alpha)  # (N,)
    sampled_lp = F.log_softmax(student_logits.detach().float(), dim=-1).gather(-1, tokens[:, None])[:, 0]  # (N,)
    if is_clip is not None and old_logprobs is not None:
        weight = torch.exp(sampled_lp - old_logprobs.float()).clamp(max=is_clip)
        per_token = per_token * weight
    return per_token, sampled_lp


def contrastive_target(anchor_lp: torch.Tensor, feedback_lp: torch.Tensor | list[torch.Tensor],
                       control_lp: torch.Tensor, strength: float, clip: float) -> torch.Tensor:
    """log q* = log anchor + beta * sum_f clip(log q_f - log q_control), unnormalised (N, V).

    The control reprompt is the feedback reprompt with content-free feedback: whatever any reprompt does to the
    model (talking about feedback, "Sure, here is", copying what the feedback quotes back) is in both and cancels;
    what the feedback's content makes more likely survives. The clip keeps rare tokens with a huge ratio in place.
    Several feedbacks (each read alone, each against the same control) make a product of experts: the target meets
    every requirement they name, where one reprompt listing them all is read less well by a small model.
    """
    feedbacks = feedback_lp if isinstance(feedback_lp, list) else [feedback_lp]
    return anchor_lp + strength * sum((f - control_lp).clamp(-clip, clip) for f in feedbacks)


def chunked_loss(
    student_hidden: torch.Tensor,
    target_fn: TargetFn,
    head: LogitsFn,
    tokens: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    *,
    alpha: float,
    top_k: int | None,
    add_tail: bool,
    is_clip: float | None,
    scale: float = 1.0,
    chunk_tokens: int = 512,
) -> float:
    """`scale` x the sum of the per-token SDPO losses over N distilled tokens, logits built one chunk at a time;
    when `student_hidden` carries a graph, the loss's gradient is pushed back through it here.

    student_hidden: (N, H) final hidden states predicting `tokens` (N,); `head` maps hidden states to logits;
    `target_fn(slice, student_logits)` gives the teacher's target logits (no grad) for the tokens in that slice.
    Each chunk runs forward and backward to the hidden states at once (its logits are freed before the next chunk
    is built), then one backward runs through the model: every logit is computed once, never recomputed.
    """
    backward = torch.is_grad_enabled() and student_hidden.requires_grad
    hidden = student_hidden.detach().requires_grad_(backward)  # (N, H): collects the chunks' gradients
    total = 0.0
    for start in range(0, hidden.shape[0], chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        s_logits = head(hidden[piece])  # (n, V)
        with torch.no_grad():
            t_logits = target_fn(piece, s_logits.detach())
        old = old_logprobs[piece] if old_logprobs is not None else None
        losses, _ = token_losses(s_logits, t_logits, tokens[piece], old, alpha=alpha, top_k=top_k,
                                 add_tail=add_tail, is_clip=is_clip)
        loss = losses.sum() * scale
        if backward:
            loss.backward()
        total += loss.item()
    if backward:
        student_hidden.backward(hidden.grad)
    return total
