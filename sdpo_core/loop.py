"""The per-problem discovery loop: every method in one code path.

    run = ProblemRun(problem, settings, policy)        # the method (sdpo_core.methods) makes its adapter, if any
    while not run.done:
        request = run.next_request()                    # the method's prompt and weights
        completions = engine.generate([request])[0]
        run.finish_step(request, completions)           # verify -> record -> the method's turn (update, decision)

Each step samples attempts_per_step attempts in parallel from the same prompt (a departure from the paper's
multi-turn baseline, which runs one attempt per turn; attempts_per_step=1 gives its sequential form). A run stops
at its first verified solution (or runs on, for a full curve) or when the budget is spent.

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

from sdpo_core.engine import Completion, GenerationEngine, GenerationRequest
from sdpo_core.methods import METHODS
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt, EventSink, ProgressEvent, RunResult, RunStatus, StepMetrics, ignore_events
from sdpo_core.reprompt import AttemptOutcome, fit_feedbacks, fit_prompt, multi_turn_prompt, teacher_sections
from sdpo_core.settings import RunSettings, SDPOSettings
from sdpo_core.update import DistillSample
from sdpo_core.verifiers import Verdict, VerifyFn, verify_attempts

STATE_VERSION = 1
MAX_EXPERTS = 4  # teacher_feedback "each": the own feedback and the 3 most recent other distinct ones


class ProblemRun:
    """One problem under one method and budget: its state between steps, and how a step advances it. What differs
    between methods (the prompt, the weights that sample, what follows a step) is the method's
    (sdpo_core.methods); everything else is here."""

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
        self.prompt_ids = policy.chat_ids(problem.chat())
        self.method = METHODS[settings.method](self)  # a learning method makes its adapter here

    # ---- state ------------------------------------------------------------------------------------------------
    @property
    def adapter(self) -> str | None:
        """The adapter the next step samples with (None: the base model)."""
        return self.name if self.method.samples_adapter() else None

    @property
    def done(self) -> bool:
        return self.status != "running"

    @property
    def first_success(self) -> Attempt | None:
        return next((a for a in self.attempts if a.solved), None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run elsewhere (tensors on CPU; save with torch.save)."""
        return {
            "version": STATE_VERSION,
            "problem": self.problem.model_dump(mode="json"),
            "settings": self.settings.model_dump(mode="json"),
            "step": self.step,
            "status": self.status,
            "cost": {"seconds": self.seconds, "tokens": self.tokens},
            "attempts": [a.model_dump() for a in self.attempts],
            **self.method.state_dict(),
        }

    @classmethod
    def restore(cls, state: dict[str, Any], policy: LoraPolicy, **kwargs: Any) -> ProblemRun:
        """A run continued from `state_dict()` output, on this policy (the same base model)."""
        assert state.get("version") == STATE_VERSION, f"unknown run state version {state.get('version')}"
        run = cls(Problem.model_validate(state["problem"]), RunSettings.model_validate(state["settings"]), policy,
                  **kwargs)
        run.step, run.status = state["step"], state["status"]
        run.seconds, run.tokens = state.get("cost", {}).get("seconds", 0.0), state.get("cost", {}).get("tokens", 0)
        run.attempts = [Attempt.model_validate(a) for a in state["attempts"]]
        run.method.load_state_dict(state)
        return run

    def close(self) -> None:
        """Free what the method holds (the policy is shared with other runs)."""
        self.method.close()

    def cancel(self) -> None:
        if not self.done:
            self.status = "cancelled"
            self.emit("finished")

    def settle(self) -> None:
        """End a run that has sampled enough before its budget (a baseline whose estimate is settled)."""
        if not self.done:
            self.status = "succeeded" if self.first_success else "exhausted"
            self.emit("finished")

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
        """Verify the step's attempts (unless `verified` brings verify_step's answer), record them, let the method
        act on them (not after the budget's last step, which no later attempt would use), report progress."""
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
        spent = len(self.attempts) >= self.settings.max_attempts  # no step follows: an update would go unused
        if any(a.solved for a in new) and self.settings.stop_at_first_success:
            self.status = "succeeded"
        elif not spent:
            metrics = self.method.after_step(request, completions, new)
        if not self.done and spent:
            self.status = "succeeded" if self.first_success else "exhausted"
        metrics.seconds = {"generate": generate_seconds, "verify": verify_seconds, **metrics.seconds}
        metrics.tokens_generated = sum(len(c.token_ids) for c in completions)
        self.seconds += sum(metrics.seconds.values())
        self.tokens += metrics.tokens_generated + metrics.tokens_scored
        metrics.verdicts = dict(Counter(a.verdict for a in new))
        event = self.emit("step", metrics)
        if self.done:
            self.emit("finished")
        return event

    def _step_prompt(self) -> list[int]:
        feedback = self.method.prompt_feedback() if self.attempts else None
        if not feedback:
            return self.prompt_ids
        return multi_turn_prompt(self.problem, self.policy.chat_ids, feedback, self.settings.max_prompt_tokens)

    def emit(self, kind: str, metrics: StepMetrics | None = None, reason: str | None = None) -> ProgressEvent:
        """Report progress (a step, the end, a method's decision with its reason) to the run's event sink."""
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
    earlier_feedback: Sequence[str] = (),
) -> list[DistillSample]:
    """The step's attempts that have a teacher context, each with its reprompt (the others get zero loss).

    `prompt_ids` is the student's prompt (the plain question); `sampled_with` the prompt the attempts were sampled
    from, when it differs (the hybrid samples with feedback in context): then their sampling log-probs are not the
    student's and carry no importance weight. An attempt the verifier failed on (error, timeout, not run) gets no
    teacher context: its feedback is about the verifier, and whether the attempt was right is unknown. With
    `teacher_feedback="distinct"`, the teacher reads `earlier_feedback` (the run's distinct feedback before this
    step) before the attempt's own."""
    outcomes = [AttemptOutcome(a.text, a.reward, a.feedback if a.judged else "") for a in attempts]
    on_policy = sampled_with is None or sampled_with == prompt_ids
    control = (fit_prompt(problem, policy.chat_ids, settings.max_reprompt_tokens, None, settings.control_feedback)
               if settings.teacher_context == "contrastive" else None)
    experts: dict[str, list[int]] = {}  # teacher_feedback "each": one reprompt per earlier distinct feedback

    def expert(feedback: str) -> list[int]:
        if feedback not in experts:
            experts[feedback] = fit_prompt(problem, policy.chat_ids, settings.max_reprompt_tokens, None, feedback)
        return experts[feedback]

    samples = []
    for completion, attempt, sections in zip(completions, attempts, teacher_sections(outcomes, settings),
                                             strict=True):
        if sections is None or not completion.token_ids or not attempt.judged:
            continue  # zero loss: the teacher would know nothing more than the student
        solution, feedback = sections
        sample_control = control
        if feedback and settings.teacher_feedback == "distinct":
            feedbacks = [f for f in earlier_feedback if f != feedback] + [feedback]
            teacher_prompt = fit_feedbacks(problem, policy.chat_ids, settings.max_reprompt_tokens, solution, feedbacks)
            if control is not None and len(feedbacks) > 1:  # the same numbered list of content-free feedback
                sample_control = fit_feedbacks(problem, policy.chat_ids, settings.max_reprompt_tokens, None,
                                               [settings.control_feedback] * len(feedbacks))
        else:
            teacher_prompt = fit_prompt(problem, policy.chat_ids, settings.max_reprompt_tokens, solution, feedback)
        earlier = []
        if feedback and settings.teacher_feedback == "each" and control is not None:
            earlier = [expert(f) for f in [f for f in earlier_feedback if f != feedback][-MAX_EXPERTS + 1:]]
        samples.append(DistillSample(prompt_ids, teacher_prompt, completion.token_ids,
                                     completion.logprobs if on_policy else None, sample_control, earlier))
    return samples


def replay_samples(problem: Problem, policy: LoraPolicy, settings: SDPOSettings, prompt_ids: list[int],
                   earlier: Sequence[Attempt], now: Sequence[Attempt], also: Sequence[str] = ()
                   ) -> list[DistillSample]:
    """The latest failed attempt of each of the `settings.replay` most recent earlier distinct feedbacks that no
    attempt of this step got, and of each feedback in `also` (auto: those that fell out of the prompt), as samples
    with their own feedback (re-tokenised from their text; no importance weight): the adapter keeps hearing what an
    earlier requirement taught it after the feedback has moved on."""
    current = {a.feedback for a in now}
    latest: dict[str, Attempt] = {}
    for attempt in earlier:
        if attempt.feedback and attempt.judged and not attempt.solved and attempt.feedback not in current:
            latest.pop(attempt.feedback, None)
            latest[attempt.feedback] = attempt
    recent = list(latest)[-settings.replay:] if settings.replay else []
    picked = [latest[f] for f in latest if f in recent or f in also]
    if not picked:
        return []
    eos = policy.tokenizer.eos_token_id
    completions = [Completion(token_ids=policy.tokenizer.encode(a.text, add_special_tokens=False)
                              + ([eos] if eos is not None and not a.truncated else []), logprobs=[], truncated=False)
                   for a in picked]
    return distill_samples(problem, policy, settings, prompt_ids, completions, picked, sampled_with=[])


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
