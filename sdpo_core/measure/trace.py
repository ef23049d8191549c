"""`sdpo bench trace`: does the adapter absorb what the feedback-informed self-teacher knows? A per-step trace.

For every problem and every SDPO variant, one run trains for `updates` steps of `attempts` attempts without
stopping at a success, and after each update (and once before any) `eval_samples` fresh attempts are sampled on
the plain prompt with the adapter: the student's pass@1 with no feedback in sight, which is what the adapter has
learned. Beside it, per problem, the rate the frozen model reaches with the feedback in its prompt (the teacher's
headroom, from the same base attempts' feedback), and two checks that the student is still answering: the share
of attempts that talk about the feedback instead (meta-talk) and their distinct bigram ratio (degeneration).
All runs share generation batches; everything is seeded, so a variant differs from another only by its settings.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from sdpo_core.engine import GenerationEngine, GenerationRequest
from sdpo_core.loop import ProblemRun
from sdpo_core.measure.quality import distinct_ratio, meta_talk
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import ProgressEvent
from sdpo_core.reprompt import multi_turn_prompt
from sdpo_core.runs import DiscoveryRuns
from sdpo_core.settings import RunSettings, SDPOSettings
from sdpo_core.verifiers import ChecklistSpec, VerifyFn, verify_attempts
from sdpo_core.verifiers.checklist import MAX_SCAN_CHARS
from sdpo_core.verifiers.extract import extract_answer

EVAL_SEED = 30_000  # evaluation attempts are independent of the training attempts (seed 0)


class TraceStep(BaseModel):
    update: int  # 0: before any update
    train_solved: int | None = None  # successes among this step's training attempts
    train_samples: int | None = None
    eval_solved: int
    eval_samples: int
    meta_talk: float  # share of eval attempts that talk about the feedback
    distinct2: float  # mean distinct-bigram ratio of the eval attempts
    loss: float | None = None
    seconds: float = 0.0  # this step's generate + verify + update, seconds
    examples: list[str] = []
    # Checklist problems: per check, its pass rate on the eval attempts, and whether the training feedback has
    # named it by now (a requirement the adapter can have learned)
    requirement_rates: list[float] | None = None
    revealed: list[bool] | None = None

    @property
    def eval_rate(self) -> float:
        return self.eval_solved / self.eval_samples


class VariantTrace(BaseModel):
    variant: str
    problem_id: str
    feedback_rate: float  # frozen model, feedback of failed base attempts in the prompt
    base_distinct2: float
    steps: list[TraceStep]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """'name=key:value,key:value' -> (name, SDPOSettings overrides); values are JSON, 'none' is None."""
    name, _, spec = text.partition("=")
    overrides: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, raw = item.partition(":")
        try:
            overrides[key.strip()] = None if raw.strip().lower() == "none" else json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw.strip()
    SDPOSettings(**overrides)  # fail early on a bad key or value
    return name.strip(), overrides


def requirement_trace(problem: Problem, texts: Sequence[str], feedbacks: Sequence[str]
                      ) -> tuple[list[float] | None, list[bool] | None]:
    """For a checklist problem: each check's pass rate on `texts`, and whether its requirement appears in any of
    `feedbacks` (the run's training feedback so far); (None, None) for other verifiers."""
    spec = problem.verifier
    if not isinstance(spec, ChecklistSpec):
        return None, None
    answers = [extract_answer(text[:MAX_SCAN_CHARS], spec.extract) for text in texts]
    rates = [sum(a is not None and check.failure(a) is None for a in answers) / max(1, len(texts))
             for check in spec.checks]
    return rates, [any(check.requirement() in f for f in feedbacks) for check in spec.checks]


def _eval_requests(runs: Sequence[ProblemRun], update: int, samples: int, max_new_tokens: int
                   ) -> list[GenerationRequest]:
    return [GenerationRequest(run.prompt_ids, run.adapter, EVAL_SEED + update, list(range(1, samples + 1)),
                              max_new_tokens) for run in runs]


def trace(
    problems: Sequence[Problem], policy: LoraPolicy, engine: GenerationEngine, *,
    variants: dict[str, dict[str, Any]], updates: int = 6, attempts: int = 8, eval_samples: int = 16,
    max_new_tokens: int = 48, verify_for: Callable[[Problem], VerifyFn] = lambda problem: verify_attempts,
    on_progress: Callable[[], None] = lambda: None,
) -> list[VariantTrace]:
    verifiers = {p.id: verify_for(p) for p in problems}
    keys = [(p, name) for p in problems for name in variants]
    last_step: dict[str, ProgressEvent] = {}  # run name -> its latest step event

    def keep_step(name: str) -> Callable[[ProgressEvent], None]:
        return lambda event: last_step.__setitem__(name, event) if event.type == "step" else None

    runs = [
        ProblemRun(p, RunSettings(method="sdpo", max_attempts=attempts * updates, attempts_per_step=attempts,
                                  max_new_tokens=max_new_tokens, stop_at_first_success=False,
                                  sdpo=SDPOSettings(**variants[name])),
                   policy, name=f"trace-{p.id}-{name}", verify=verifiers[p.id],
                   on_event=keep_step(f"trace-{p.id}-{name}"))
        for p, name in keys
    ]
    scheduler = DiscoveryRuns(engine, patience_s=None)  # one update per step, every run
    for run in runs:
        scheduler.add(run.name, run)
    # ---- the headroom: the frozen model with the feedback of its own failed attempts in the prompt ----
    base = engine.generate(_eval_requests(runs[:: len(variants)], 0, eval_samples, max_new_tokens))
    feedback_rate, base_distinct = {}, {}
    for p, completions in zip(problems, base, strict=True):
        verdicts = verifiers[p.id](p, [c.text for c in completions])
        feedback = [v.feedback for v in verdicts if v.feedback] or [""]
        prompts = [multi_turn_prompt(p, policy.chat_ids, [feedback[i % len(feedback)]] if feedback[0] else [], 4096)
                   for i in range(eval_samples)]
        in_context = engine.generate([GenerationRequest(prompt, None, EVAL_SEED - 1, [i + 1], max_new_tokens)
                                      for i, prompt in enumerate(prompts)])
        feedback_rate[p.id] = sum(v.solved for v in verifiers[p.id](p, [c[0].text for c in in_context])) / eval_samples
        base_distinct[p.id] = statistics.fmean(distinct_ratio(c.text) for c in completions)
    on_progress()

    traces = [VariantTrace(variant=name, problem_id=p.id, feedback_rate=feedback_rate[p.id],
                           base_distinct2=base_distinct[p.id], steps=[]) for p, name in keys]

    def evaluate(update: int) -> None:
        """Every run's plain-prompt pass rate (and what it trained on) after `update` updates."""
        evals = engine.generate(_eval_requests(runs, update, eval_samples, max_new_tokens))
        for run, record, completions in zip(runs, traces, evals, strict=True):
            texts = [c.text for c in completions]
            verdicts = run.verify(run.problem, texts)
            feedbacks = {a.feedback for a in run.attempts if a.feedback} | {v.feedback for v in verdicts if v.feedback}
            new = [a for a in run.attempts if a.step == update] if update else []
            metrics = last_step[run.name].metrics if update else None
            rates, revealed = requirement_trace(run.problem, texts, [a.feedback for a in run.attempts])
            record.steps.append(TraceStep(
                requirement_rates=rates, revealed=revealed,
                update=update, train_solved=sum(a.solved for a in new) if update else None,
                train_samples=len(new) if update else None, eval_solved=sum(v.solved for v in verdicts),
                eval_samples=len(texts), meta_talk=sum(meta_talk(t, feedbacks) for t in texts) / len(texts),
                distinct2=statistics.fmean(distinct_ratio(t) for t in texts),
                loss=metrics.loss if metrics else None,
                seconds=sum(metrics.seconds.values()) if metrics else 0.0, examples=texts[:2],
            ))
        on_progress()

    evaluate(0)
    updates_done = iter(range(1, updates + 1))
    scheduler.run_until_done(lambda report: evaluate(next(updates_done)))  # every run takes one update a step
    scheduler.close_all()
    return traces
