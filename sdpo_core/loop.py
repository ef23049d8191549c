"""The per-problem discovery loop: SDPO and its two baselines in one code path.

    run = ProblemRun(problem, settings, policy)        # a fresh adapter (sdpo) or none (baselines)
    while not run.done:
        completions = engine.generate([run.next_request()])
        run.finish_step(completions[0])                 # verify -> record -> teacher contexts -> update -> event

- sdpo: attempts from the run's own adapter; after each step one SDPO update (sdpo_core.update).
- best-of-k: attempts from the frozen base model, i.i.d.; no update.
- multi-turn: the frozen base model, its prompt extended with the feedback of earlier attempts (oldest dropped
  when the prompt would exceed max_prompt_tokens); no update.
- auto: per step, sample the base model, sample with the feedback in context, and/or distil, by the rule in
  sdpo_core.auto (a decision event says which and why). Departure from the paper's baseline, which runs
  one attempt per turn: here a turn samples attempts_per_step attempts in parallel from the same prompt
  (attempts_per_step=1 gives the paper's sequential form).
A run stops at its first verified solution (or runs on, for a full curve) or when the budget is spent.

The state between steps is explicit: `state_dict()` holds the problem, settings, attempts, adapter, teacher and
optimizer; the random state is the seed plus the attempt count (each attempt samples from its own stream keyed
by (seed, attempt index)), so `ProblemRun.restore(state)` continues exactly where the run stopped.
`run_step(runs, engine)` advances several runs at once with one generation batch: the worker's multi-problem mode.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from sdpo_core.auto import SIGNAL_ATTEMPTS, decide, feedback_shift
from sdpo_core.engine import Completion, GenerationEngine, GenerationRequest
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt, EventSink, ProgressEvent, RunResult, RunStatus, StepMetrics, ignore_events
from sdpo_core.reprompt import AttemptOutcome, fit_prompt, multi_turn_prompt, teacher_sections
from sdpo_core.settings import LEARNING_METHODS, RunSettings, SDPOSettings
from sdpo_core.teacher import drop_teacher, init_teacher, teacher_adapter
from sdpo_core.update import DistillSample, make_optimizer, sdpo_update
from sdpo_core.verifiers import Verdict, VerifyFn, verify_attempts

STATE_VERSION = 1


class ProblemRun:
    """One problem under one method and budget: its state between steps, and how a step advances it."""

    def __init__(
        self,
        problem: Problem,
        settings: RunSettings,
        policy: LoraPolicy,
        *,
        name: str = "run",
        verify: VerifyFn = verify_attempts,
        on_event: EventSink = ignore_events,
    ) -> None:
        self.problem, self.settings, self.policy = problem, settings, policy
        self.name, self.verify, self.on_event = name, verify, on_event
        self.attempts: list[Attempt] = []
        self.step = 0
        self.seconds, self.tokens = 0.0, 0  # what the run has cost so far
        self.status: RunStatus = "running"
        self.optimizer: torch.optim.Optimizer | None = None
        self.prompt_ids = policy.chat_ids(problem.chat())
        self.in_context = False  # the next step samples with the feedback so far in its prompt
        self.adapter_trained = settings.method == "sdpo"  # auto samples the base model until it has distilled
        self.shifts: list[float] = []  # auto: the feedback's shift on each failed attempt scored so far
        self.tried_in_context = False  # auto: a step has been sampled with feedback in its prompt
        if settings.method in LEARNING_METHODS:
            policy.create_adapter(name, settings.sdpo, seed=settings.seed)
            init_teacher(policy, name, settings.sdpo, seed=settings.seed)
            self.optimizer = make_optimizer(policy, name, settings.sdpo)

    # ---- state ------------------------------------------------------------------------------------------------
    @property
    def adapter(self) -> str | None:
        """The adapter the next step samples with (None: the base model)."""
        return self.name if self.settings.method in LEARNING_METHODS and self.adapter_trained else None

    @property
    def done(self) -> bool:
        return self.status != "running"

    @property
    def first_success(self) -> Attempt | None:
        return next((a for a in self.attempts if a.solved), None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run elsewhere (tensors on CPU; save with torch.save)."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "problem": self.problem.model_dump(mode="json"),
            "settings": self.settings.model_dump(mode="json"),
            "step": self.step,
            "status": self.status,
            "cost": {"seconds": self.seconds, "tokens": self.tokens},
            "attempts": [a.model_dump() for a in self.attempts],
            "plan": {"in_context": self.in_context, "adapter_trained": self.adapter_trained, "shifts": self.shifts,
                     "tried_in_context": self.tried_in_context},
        }
        if self.settings.method in LEARNING_METHODS:
            state["adapter"] = self.policy.state(self.name)
            state["optimizer"] = self.optimizer.state_dict()
            if self.settings.sdpo.teacher == "ema":
                state["teacher"] = self.policy.state(teacher_adapter(self.name))
        return state

    @classmethod
    def restore(cls, state: dict[str, Any], policy: LoraPolicy, **kwargs: Any) -> ProblemRun:
        """A run continued from `state_dict()` output, on this policy (the same base model)."""
        assert state.get("version") == STATE_VERSION, f"unknown run state version {state.get('version')}"
        run = cls(Problem.model_validate(state["problem"]), RunSettings.model_validate(state["settings"]), policy,
                  **kwargs)
        run.step, run.status = state["step"], state["status"]
        run.seconds, run.tokens = state.get("cost", {}).get("seconds", 0.0), state.get("cost", {}).get("tokens", 0)
        run.attempts = [Attempt.model_validate(a) for a in state["attempts"]]
        plan = state.get("plan", {})
        run.in_context = plan.get("in_context", run.in_context)
        run.adapter_trained = plan.get("adapter_trained", run.adapter_trained)
        run.shifts = list(plan.get("shifts", []))
        run.tried_in_context = plan.get("tried_in_context", run.tried_in_context)
        if run.settings.method in LEARNING_METHODS:
            policy.load_state(run.name, state["adapter"])
            run.optimizer.load_state_dict(state["optimizer"])
            if "teacher" in state:
                policy.load_state(teacher_adapter(run.name), state["teacher"])
        return run

    def close(self) -> None:
        """Free the run's adapters (the policy is shared with other runs)."""
        if self.settings.method in LEARNING_METHODS:
            drop_teacher(self.policy, self.name)
            self.policy.delete_adapter(self.name)

    def cancel(self) -> None:
        if not self.done:
            self.status = "cancelled"
            self._emit("finished")

    # ---- one step ---------------------------------------------------------------------------------------------
    def next_request(self) -> GenerationRequest | None:
        """The attempts of the next step, or None when the run is over."""
        if self.done:
            return None
        n = min(self.settings.attempts_per_step, self.settings.max_attempts - len(self.attempts))
        return GenerationRequest(
            prompt_ids=self._step_prompt(),
            adapter=self.adapter,
            seed=self.settings.seed,
            attempt_indices=list(range(len(self.attempts) + 1, len(self.attempts) + n + 1)),
            max_new_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature,
        )

    def verify_step(self, completions: list[Completion]) -> tuple[list[Verdict], float]:
        """The verdicts on a step's attempts, and the seconds they took."""
        clock = time.perf_counter()
        verdicts = self.verify(self.problem, [c.text for c in completions])
        return verdicts, time.perf_counter() - clock

    def finish_step(self, request: GenerationRequest, completions: list[Completion],
                    generate_seconds: float = 0.0, verified: tuple[list[Verdict], float] | None = None
                    ) -> ProgressEvent:
        """Verify the step's attempts (unless `verified` brings verify_step's answer), record them, update the
        adapter (sdpo; not after the budget's last step, whose update no attempt would use), report progress."""
        assert not self.done, "finish_step on a finished run"
        self.step += 1
        verdicts, verify_seconds = verified or self.verify_step(completions)
        new = [
            Attempt(
                index=index, step=self.step, text=c.text, token_count=len(c.token_ids), truncated=c.truncated,
                reward=v.reward, solved=v.solved, feedback=v.feedback, answer=v.answer, verdict=v.status,
            )
            for index, c, v in zip(request.attempt_indices, completions, verdicts, strict=True)
        ]
        self.attempts += new

        metrics = StepMetrics()
        solved_now = any(a.solved for a in new)
        spent = len(self.attempts) >= self.settings.max_attempts  # no step follows: an update would go unused
        if solved_now and self.settings.stop_at_first_success:
            self.status = "succeeded"
        elif self.settings.method == "sdpo" and not spent:
            metrics = self._update(request, completions, new)
        elif self.settings.method == "auto" and not solved_now and not spent:
            metrics = self._auto_step(request, completions, new)
        if not self.done and spent:
            self.status = "succeeded" if self.first_success else "exhausted"
        metrics.seconds = {"generate": generate_seconds, "verify": verify_seconds, **metrics.seconds}
        metrics.tokens_generated = sum(len(c.token_ids) for c in completions)
        self.seconds += sum(metrics.seconds.values())
        self.tokens += metrics.tokens_generated + metrics.tokens_scored
        metrics.verdicts = dict(Counter(a.verdict for a in new))
        event = self._emit("step", metrics)
        if self.done:
            self._emit("finished")
        return event

    def _step_prompt(self) -> list[int]:
        in_context = {"multi-turn": True, "sdpo": self.settings.sdpo.sample_with_feedback, "auto": self.in_context}
        if not in_context.get(self.settings.method, False) or not self.attempts:
            return self.prompt_ids
        latest: dict[str, None] = {}  # distinct feedback, most recent last
        for attempt in self.attempts:
            if attempt.feedback and attempt.judged:  # a verifier's own failure says nothing about the attempt
                latest.pop(attempt.feedback, None)
                latest[attempt.feedback] = None
        return multi_turn_prompt(self.problem, self.policy.chat_ids, list(latest), self.settings.max_prompt_tokens)

    def _update(self, request: GenerationRequest, completions: list[Completion], new: list[Attempt]) -> StepMetrics:
        samples = distill_samples(self.problem, self.policy, self.settings.sdpo, self.prompt_ids, completions, new,
                                  sampled_with=request.prompt_ids)
        return sdpo_update(self.policy, self.optimizer, self.name, samples, self.settings.sdpo,
                           self.settings.temperature)

    def _auto_step(self, request: GenerationRequest, completions: list[Completion], new: list[Attempt]
                   ) -> StepMetrics:
        """Decide the next step (scoring the failed attempts' feedback once the in-context bet has failed), distil
        if the decision says so."""
        clock = time.perf_counter()
        in_context = request.prompt_ids != self.prompt_ids
        self.tried_in_context |= in_context
        shifts, scored = [], 0
        if self.tried_in_context and len(self.shifts) < SIGNAL_ATTEMPTS:
            shifts, scored = feedback_shift(self.policy, self.problem, new, [c.token_ids for c in completions],
                                            self.settings.sdpo, limit=SIGNAL_ATTEMPTS - len(self.shifts))
        self.shifts += shifts
        signal_seconds = time.perf_counter() - clock
        decision = decide(self.shifts, step_was_in_context=in_context, tried_in_context=self.tried_in_context)
        metrics = self._update(request, completions, new) if decision.distil else StepMetrics()
        self.adapter_trained |= decision.distil
        self.in_context = decision.in_context
        metrics.seconds["signal"] = signal_seconds
        metrics.tokens_scored += scored
        self._emit("decision", reason=decision.reason)
        return metrics

    def _emit(self, kind: str, metrics: StepMetrics | None = None, reason: str | None = None) -> ProgressEvent:
        first = self.first_success
        event = ProgressEvent(
            type=kind, method=self.settings.method, step=self.step, attempts=len(self.attempts),
            max_attempts=self.settings.max_attempts, best_reward=max((a.reward for a in self.attempts), default=0.0),
            solved=first is not None, first_success_attempt=first.index if first else None, status=self.status,
            metrics=metrics, reason=reason,
        )
        self.on_event(event)
        return event

    def result(self) -> RunResult:
        first = self.first_success
        return RunResult(
            method=self.settings.method, status=self.status, attempts=list(self.attempts), steps=self.step,
            first_success_attempt=first.index if first else None, solution=first.text if first else None,
            seconds=self.seconds, tokens=self.tokens,
        )


def distill_samples(
    problem: Problem, policy: LoraPolicy, settings: SDPOSettings, prompt_ids: list[int],
    completions: Sequence[Completion], attempts: Sequence[Attempt], sampled_with: list[int] | None = None,
) -> list[DistillSample]:
    """The step's attempts that have a teacher context, each with its reprompt (the others get zero loss).

    `prompt_ids` is the student's prompt (the plain question); `sampled_with` the prompt the attempts were sampled
    from, when it differs (the hybrid samples with feedback in context): then their sampling log-probs are not the
    student's and carry no importance weight. An attempt the verifier failed on (error, timeout) gets no teacher
    context: its feedback is about the verifier, and whether the attempt was right is unknown."""
    outcomes = [AttemptOutcome(a.text, a.reward, a.feedback if a.judged else "") for a in attempts]
    on_policy = sampled_with is None or sampled_with == prompt_ids
    control = (fit_prompt(problem, policy.chat_ids, settings.max_reprompt_tokens, None, settings.control_feedback)
               if settings.teacher_context == "contrastive" else None)
    samples = []
    for completion, attempt, sections in zip(completions, attempts, teacher_sections(outcomes, settings),
                                             strict=True):
        if sections is None or not completion.token_ids or not attempt.judged:
            continue  # zero loss: the teacher would know nothing more than the student
        solution, feedback = sections
        teacher_prompt = fit_prompt(problem, policy.chat_ids, settings.max_reprompt_tokens, solution, feedback)
        samples.append(DistillSample(prompt_ids, teacher_prompt, completion.token_ids,
                                     completion.logprobs if on_policy else None, control))
    return samples


@dataclass
class GeneratedStep:
    """A run's step between generation and verification: its attempts and its share of the generation seconds."""

    run: ProblemRun
    request: GenerationRequest
    completions: list[Completion]
    generate_seconds: float

    def finish(self, engine: GenerationEngine, verified: tuple[list[Verdict], float] | None = None) -> ProgressEvent:
        """Record the verdicts, update, report; the engine samples the updated adapter from the next step on."""
        event = self.run.finish_step(self.request, self.completions, self.generate_seconds, verified)
        if self.run.adapter is not None:
            engine.publish_adapter(self.run.adapter)
        return event


def generate_steps(runs: Sequence[tuple[ProblemRun, GenerationRequest]], engine: GenerationEngine
                   ) -> list[GeneratedStep]:
    """The attempts of every run's next step, sampled in one generation call; each run pays for its own tokens."""
    if not runs:
        return []
    clock = time.perf_counter()
    completions = engine.generate([request for _, request in runs])
    seconds = time.perf_counter() - clock
    tokens = [sum(len(c.token_ids) for c in run_completions) for run_completions in completions]
    return [GeneratedStep(run, request, run_completions,
                          seconds * (n / sum(tokens) if sum(tokens) else 1 / len(runs)))
            for (run, request), run_completions, n in zip(runs, completions, tokens, strict=True)]


def run_step(runs: Sequence[ProblemRun], engine: GenerationEngine) -> list[ProgressEvent]:
    """Advance every unfinished run by one step, their attempts sampled in one generation call and verified at once;
    returns when every run has finished its step (DiscoveryRuns does not wait for slow verifiers)."""
    live = [(run, run.next_request()) for run in runs if not run.done]
    steps = generate_steps([(run, request) for run, request in live if request is not None], engine)
    if not steps:
        return []
    with ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="verify-step") as threads:
        verified = list(threads.map(lambda step: step.run.verify_step(step.completions), steps))
    return [step.finish(engine, step_verified) for step, step_verified in zip(steps, verified, strict=True)]


def solve(
    problem: Problem,
    settings: RunSettings,
    policy: LoraPolicy,
    engine: GenerationEngine,
    *,
    verify: VerifyFn = verify_attempts,
    on_event: EventSink = ignore_events,
    name: str = "run",
) -> RunResult:
    """Run one problem to its end and free its adapter (in the policy and in the engine)."""
    run = ProblemRun(problem, settings, policy, name=name, verify=verify, on_event=on_event)
    try:
        while not run.done:
            run_step([run], engine)
        return run.result()
    finally:
        run.close()
        if run.adapter is not None:
            engine.drop_adapter(run.adapter)
