"""The `auto` method: per problem, decide from measured signals how to spend the next step.

A step can sample the plain prompt from the base model (best-of-k), sample with the feedback so far in the
prompt (multi-turn), and distil that feedback into the problem's adapter (SDPO); auto mixes them by one rule:

    step 1                     the plain prompt, base model: no feedback exists yet
    after the first failed step that left feedback:
                               try the feedback in context for one step: it costs nothing to measure, and where
                               the model can use the feedback this is the fastest way to a solution
    after a step in context that failed, and every later failed step:
      gap = mean reward of the failed attempts sampled with the feedback in context - mean reward of those sampled
            without it (the verifier's own partial credit: a checklist's share of checks met), once each side has
            REWARD_ATTEMPTS of them
      gap <= -REWARD_MARGIN  reading the feedback makes attempts worse by the verifier's own measure (a small model
                  told "stay on the farm" writes about the instruction and leaves the farm)
                  -> distil the feedback into the adapter and sample the plain prompt from it (SDPO), every
                     later failed step too
      gap >= REWARD_MARGIN   reading the feedback makes attempts better by the verifier's own measure (told the
                  first missing word, they contain it and fail on the next): the model reads it
                  -> read in context (below, "keep reading"); the shift is not scored
      otherwise (no partial credit, as with a 0/1 verifier, or too little difference), by the feedback's shift:
      shift = mean per-token [log q(y | x, C, f) - log q(y | x, C, c)] over the failed attempts so far (up to
              16), the base model reading each attempt's feedback f against a content-free control c, both after
              the feedback C the attempt was sampled with (none for the plain prompt): an attempt that met the
              requirement it was told about is likely under C either way, so only what the new feedback does
              is measured (without C, a partly right attempt looked like copying)
      shift < 0   the feedback's content makes the failed attempts less likely: the model can use it
                  -> keep reading: sample with the feedback in context; while the prompt holds every distinct feedback
                     the run has seen, that is all (no update: measured on the accumulate family, distilling
                     feedback the prompt already holds cost seconds and lowered P@budget); once it no longer
                     does, distil each failed step sampled that way together with the latest attempt of each
                     feedback that fell out of the prompt, and sample the adapter with the rest in context, so
                     nothing the verifier said is lost (the decision says how much the prompt holds)
      shift >= 0  reading the feedback makes the model likelier to repeat its failures (it copies the wrong
                  answer the feedback quotes): the feedback cannot help this model
                  -> sample the plain prompt from the base model, no update

The shift is the sign of the student-teacher gap on the attempts the run already paid for: no attempts are spent
on measuring, only one batched forward pass over two reprompts per failed attempt, and only once the cheap bet
(in context) has failed. It is a running mean, so one odd step does not flip the decision. Each decision and its
reason is a progress event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt
from sdpo_core.reprompt import fit_feedbacks
from sdpo_core.settings import SDPOSettings

SIGNAL_ATTEMPTS = 16  # failed attempts scored over a run: the mean is settled by then
REWARD_ATTEMPTS = 8  # failed attempts each way (in context, plain) before their rewards are compared
REWARD_MARGIN = 0.10  # how far the mean partial credit in context must fall (leave it) or rise (keep reading) to decide


@dataclass(frozen=True)
class Decision:
    """What auto does after a failed step: distil that step now, and how the next step samples."""

    distil: bool  # update the adapter from the step that just failed
    in_context: bool  # the next step samples with the feedback so far in its prompt
    reason: str


@torch.no_grad()
def feedback_shift(policy: LoraPolicy, problem: Problem, attempts: list[Attempt],
                   token_ids: list[list[int]], settings: SDPOSettings, limit: int,
                   context: Sequence[str] = ()) -> tuple[list[float], int]:
    """Per failed attempt (at most `limit`), mean per-token log q(y|x,C,f) - log q(y|x,C,c) under the base model;
    and the tokens scored. C is the feedback the attempts were sampled with (none for the plain prompt): it is in
    both reprompts, so what it already made likely (the requirement an attempt met because it was told) cancels and
    only the new feedback f is measured. Attempts are scored in groups that share a reprompt (the control, and each
    distinct feedback), each group's reprompt run once: a step's attempts mostly share their feedback, and a
    feedback inside a log is hundreds of tokens."""
    earlier = list(context)
    control = fit_feedbacks(problem, policy.chat_ids, settings.max_reprompt_tokens, None,
                            earlier + [settings.control_feedback])
    picked = [(a, ids) for a, ids in zip(attempts, token_ids, strict=True)
              if not a.solved and a.judged and a.feedback and ids][:limit]  # a verifier failure says nothing
    if not picked:
        return [], 0
    reprompts: dict[str, list[int]] = {}
    for attempt, _ in picked:
        if attempt.feedback not in reprompts:
            reprompts[attempt.feedback] = fit_feedbacks(
                problem, policy.chat_ids, settings.max_reprompt_tokens, None,
                [f for f in earlier if f != attempt.feedback] + [attempt.feedback])
    teacher = _mean_log_probs(policy, [(reprompts[a.feedback], ids) for a, ids in picked])
    plain = _mean_log_probs(policy, [(control, ids) for _, ids in picked])
    scored = sum(len(reprompts[a.feedback]) + len(control) + 2 * len(ids) for a, ids in picked)
    return [t - c for t, c in zip(teacher, plain, strict=True)], scored


def _mean_log_probs(policy: LoraPolicy, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """Per (reprompt, response) row, the base model's mean per-token log-probability of the response; rows that
    share a reprompt go through one forward pass that runs it once."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (reprompt, _) in enumerate(rows):
        groups.setdefault(tuple(reprompt), []).append(i)
    means = [0.0] * len(rows)
    for members in groups.values():
        responses = [rows[i][1] for i in members]
        hidden = policy.response_hidden([rows[i][0] + rows[i][1] for i in members], list(map(len, responses)), None)
        log_probs = F.log_softmax(policy.head(hidden).float(), dim=-1)
        targets = torch.tensor([t for ids in responses for t in ids], device=log_probs.device)
        chosen = log_probs.gather(-1, targets[:, None])[:, 0].split(list(map(len, responses)))
        for i, values in zip(members, chosen, strict=True):
            means[i] = values.mean().item()
    return means


def reward_gap(rewards: dict[str, list[float]]) -> tuple[float, float] | None:
    """(mean in context, mean plain) of the failed attempts' rewards, once each side has REWARD_ATTEMPTS."""
    context, plain = rewards.get("context", []), rewards.get("plain", [])
    if min(len(context), len(plain)) < REWARD_ATTEMPTS:
        return None
    return sum(context) / len(context), sum(plain) / len(plain)


def reward_decides(rewards: tuple[float, float] | None) -> bool:
    """Whether the verifier's partial credit alone settles where to sample (so the shift need not be scored)."""
    return rewards is not None and abs(rewards[0] - rewards[1]) >= REWARD_MARGIN


def decide(shifts: list[float], step_was_in_context: bool, tried_in_context: bool,
           context_holds: tuple[int, int] = (0, 0), rewards: tuple[float, float] | None = None) -> Decision:
    """Auto's rule, from the shifts measured so far, how the step that just failed was sampled, whether any step has
    been sampled with feedback in context yet, how many of the run's distinct feedbacks the prompt holds (of how
    many), and the failed attempts' mean reward in context and plain (`reward_gap`)."""
    if not tried_in_context:
        return Decision(False, True, "new feedback: try it in context for a step (nothing to measure yet; the "
                        "signal decides if that fails too)")
    if reward_decides(rewards) and rewards[0] < rewards[1]:
        return Decision(True, False, f"with the feedback in context the failed attempts score lower by the "
                        f"verifier's partial credit ({rewards[0]:.2f} against {rewards[1]:.2f} without): distil the "
                        "feedback into the adapter and sample the plain prompt from it")
    if reward_decides(rewards):
        return keep_reading(step_was_in_context, context_holds, f"with the feedback in context the failed attempts "
                            f"score higher by the verifier's partial credit ({rewards[0]:.2f} against "
                            f"{rewards[1]:.2f} without): the model reads it")
    if not shifts:
        return Decision(False, False, "no feedback to read: sample the base model")
    shift = sum(shifts) / len(shifts)
    if shift >= 0:
        return Decision(False, False, f"the feedback makes failed attempts likelier (shift {shift:+.3f} nats/token):"
                        " this model cannot use it, sample the base model")
    return keep_reading(step_was_in_context, context_holds,
                        f"the feedback moves the model away from its failures (shift {shift:+.3f} nats/token)")


def keep_reading(step_was_in_context: bool, context_holds: tuple[int, int], why: str) -> Decision:
    """Sample with the feedback in context; distil only what the prompt can no longer hold."""
    held, distinct = context_holds
    if held >= distinct:
        return Decision(False, True, f"{why}; the prompt holds all {distinct} distinct feedbacks: keep reading them "
                        "in context")
    return Decision(step_was_in_context, True, f"{why}; the prompt holds {held} of its {distinct} distinct "
                    "feedbacks: " + ("distil this step and what fell out of the prompt into the adapter, "
                                     if step_was_in_context else "") + "sample with the rest in context")
