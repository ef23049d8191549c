"""The self-teacher on LoRA: which weights re-score the student's attempt in the feedback-informed context.

- `ema` (the paper's default): a second adapter that trails the student, theta' <- (1 - r) theta' + r theta, r = 0.01. It is
  the paper's test-time setting (Table 12) and its reference code's default; the teacher improves with the
  student, yet slowly enough that the student cannot chase its own moving target (the paper's unregularised
  teacher, r = 1, diverges). The EMA runs on the LoRA factors A and B separately, as a parameter-space EMA does.
- `frozen` (default here): the base model (the adapter disabled): the initial teacher, never updated. Cheapest, no
  extra adapter; with the contrastive target anchored on it, the target is a fixed point the student converges to.
- `trust-region`: teacher logits = lerp(base logits, current student logits, r), both on the reprompted input
  (paper Eq. 10): a geometric mixture that stays within reach of the initial teacher.
The teacher never receives gradients: its forward passes run under no_grad.
"""

from __future__ import annotations

import torch

from sdpo_core.policy import LoraPolicy
from sdpo_core.settings import SDPOSettings


def teacher_adapter(student: str) -> str:
    return f"{student}-teacher"


def init_teacher(policy: LoraPolicy, student: str, settings: SDPOSettings, seed: int) -> None:
    """Create the EMA teacher as an exact copy of the freshly initialised student (no-op for the others)."""
    if settings.teacher == "ema":
        policy.create_adapter(teacher_adapter(student), settings, seed, trainable=False)
        policy.copy_adapter(student, teacher_adapter(student))


def drop_teacher(policy: LoraPolicy, student: str) -> None:
    policy.delete_adapter(teacher_adapter(student))


@torch.no_grad()
def teacher_hidden(
    policy: LoraPolicy, student: str, settings: SDPOSettings, sequences: list[list[int]], response_lengths: list[int]
) -> list[torch.Tensor]:
    """The hidden states (sum R, H) at the response positions that the teacher's logits are built from."""
    if settings.teacher == "ema":
        return [policy.response_hidden(sequences, response_lengths, teacher_adapter(student))]
    base = policy.response_hidden(sequences, response_lengths, None)
    if settings.teacher == "frozen":
        return [base]
    return [base, policy.response_hidden(sequences, response_lengths, student)]


def teacher_logits(policy: LoraPolicy, settings: SDPOSettings, hidden: list[torch.Tensor]) -> torch.Tensor:
    """Teacher logits from the hidden states of `teacher_hidden` (sliced to the tokens wanted)."""
    if settings.teacher == "trust-region":
        base_logits, student_logits = (policy.head(h).float() for h in hidden)
        return torch.lerp(base_logits, student_logits, settings.teacher_update_rate)
    return policy.head(hidden[0]).float()


@torch.no_grad()
def update_teacher(policy: LoraPolicy, student: str, settings: SDPOSettings) -> None:
    """One EMA step after the student's optimizer step."""
    if settings.teacher != "ema":
        return
    rate = settings.teacher_update_rate
    teacher = policy.parameters(teacher_adapter(student))
    for key, param in policy.parameters(student).items():
        teacher[key].lerp_(param.detach(), rate)  # theta' <- theta' + r (theta - theta') = (1 - r) theta' + r theta
