"""Discovery methods: one class each, and the one registry (`METHODS`) that everything else reads.

A method decides three things about a run (sdpo_core.loop.ProblemRun): what the next step's prompt carries (the
plain question, or the feedback so far), which weights sample it (the base model, or the run's own adapter), and
what happens after a step that did not end the run (an update, a decision). The run does the rest: sampling,
verifying, recording, stopping and its checkpoints. The API's `method` values and OpenAPI enum, the CLI's
choices, the bench's method list and the web page's select all come from `METHODS`.

To add a method: subclass `DiscoveryMethod` (or `LearningMethod`, when it owns an adapter) and add it to `METHODS`
below, or call `register()` from a module named in SDPO_METHOD_MODULES (comma-separated, imported with this one).

This module imports no torch at load: the light client and the API read the registry; the update and auto's signal
are imported where a run calls them.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from sdpo_core.records import Attempt, StepMetrics

if TYPE_CHECKING:
    from sdpo_core.engine import Completion, GenerationRequest
    from sdpo_core.loop import ProblemRun

METHOD_MODULES_ENV = "SDPO_METHOD_MODULES"


def distinct_feedback(attempts: Sequence[Attempt]) -> list[str]:
    """Each distinct feedback once, the most recently seen last; a verifier's own failure says nothing about the
    attempt and is left out."""
    latest: dict[str, None] = {}
    for attempt in attempts:
        if attempt.feedback and attempt.judged:
            latest.pop(attempt.feedback, None)
            latest[attempt.feedback] = None
    return list(latest)


class DiscoveryMethod:
    """How a run spends its steps. The default: the plain prompt, the base model, nothing after a step."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help, the docs and the web page
    learns: ClassVar[bool] = False  # owns an adapter (trained during the run, exported at its end)

    def __init__(self, run: ProblemRun) -> None:
        self.run = run

    def prompt_feedback(self) -> list[str] | None:
        """The feedback the next step's prompt carries, oldest first (the oldest is dropped when the prompt
        exceeds max_prompt_tokens); None for the plain question."""
        return None

    def samples_adapter(self) -> bool:
        """The next step samples the run's adapter (else the base model)."""
        return False

    def after_step(self, request: GenerationRequest, completions: list[Completion], new: list[Attempt]
                   ) -> StepMetrics:
        """After a step that did not end the run (not the budget's last step, not a stopping success)."""
        return StepMetrics()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the method, merged into the run's state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The reverse of state_dict, from the run's state."""

    def close(self) -> None:
        """Free what the method holds (the run ended)."""


class BestOfK(DiscoveryMethod):
    name = "best-of-k"
    summary = "the plain prompt, frozen model, i.i.d. samples"


class MultiTurn(DiscoveryMethod):
    name = "multi-turn"
    summary = "the prompt plus each distinct feedback so far (newest last), frozen model"

    def prompt_feedback(self) -> list[str] | None:
        return distinct_feedback(self.run.attempts)


class MultiTurnFIFO(DiscoveryMethod):
    """The paper's multi-turn baseline: every failed attempt's feedback in order, repeats included."""

    name = "multi-turn-fifo"
    summary = "the prompt plus every earlier attempt's feedback in order (oldest dropped first), frozen model"

    def prompt_feedback(self) -> list[str] | None:
        return [a.feedback for a in self.run.attempts if a.feedback and a.judged]


class LearningMethod(DiscoveryMethod):
    """A method that owns an adapter: created (with its teacher and optimizer) with the run, in its checkpoints,
    updated by `distil`, freed with the run."""

    learns = True

    def __init__(self, run: ProblemRun) -> None:
        from sdpo_core.teacher import init_teacher
        from sdpo_core.update import make_optimizer

        super().__init__(run)
        settings = run.settings.sdpo
        run.policy.create_adapter(run.name, settings, seed=run.settings.seed)
        init_teacher(run.policy, run.name, settings, seed=run.settings.seed)
        self.optimizer = make_optimizer(run.policy, run.name, settings)

    def samples_adapter(self) -> bool:
        return True

    def distil(self, request: GenerationRequest, completions: list[Completion], new: list[Attempt],
               replay: Sequence[str] = ()) -> StepMetrics:
        """One SDPO update of the adapter from the step's attempts and, for each feedback in `replay`, its latest
        earlier attempt (sdpo_core.update)."""
        from sdpo_core.loop import distill_samples, replay_samples
        from sdpo_core.update import sdpo_update

        run = self.run
        samples = distill_samples(run.problem, run.policy, run.settings.sdpo, run.prompt_ids, completions, new,
                                  sampled_with=request.prompt_ids, earlier_feedback=distinct_feedback(run.attempts))
        samples += replay_samples(run.problem, run.policy, run.settings.sdpo, run.prompt_ids,
                                  run.attempts[: len(run.attempts) - len(new)], new, also=replay)
        return sdpo_update(run.policy, self.optimizer, run.name, samples, run.settings.sdpo, run.settings.temperature)

    def state_dict(self) -> dict[str, Any]:
        from sdpo_core.teacher import teacher_adapter

        run = self.run
        state = {"adapter": run.policy.state(run.name), "optimizer": self.optimizer.state_dict()}
        if run.settings.sdpo.teacher == "ema":
            state["teacher"] = run.policy.state(teacher_adapter(run.name))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from sdpo_core.teacher import teacher_adapter

        run = self.run
        run.policy.load_state(run.name, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "teacher" in state:
            run.policy.load_state(teacher_adapter(run.name), state["teacher"])

    def close(self) -> None:
        from sdpo_core.teacher import drop_teacher

        drop_teacher(self.run.policy, self.run.name)
        self.run.policy.delete_adapter(self.run.name)


class SDPO(LearningMethod):
    name = "sdpo"
    summary = "the plain prompt from the run's adapter; every failed step's feedback distilled into it"

    def after_step(self, request, completions, new) -> StepMetrics:
        return self.distil(request, completions, new)


class Hybrid(SDPO):
    """SDPO that samples with the feedback in context: the context acts at once, the adapter keeps what the
    context cannot hold."""

    name = "hybrid"
    summary = "the prompt plus each distinct feedback, from the run's adapter; every failed step distilled into it"

    def prompt_feedback(self) -> list[str] | None:
        return distinct_feedback(self.run.attempts)


class Auto(LearningMethod):
    """Per problem, from measured signals: the base model, the feedback in context, distillation (sdpo_core.auto
    has the rule and why)."""

    name = "auto"
    summary = "decides per problem: feedback in context, distillation or the base model, by measurement"

    def __init__(self, run: ProblemRun) -> None:
        super().__init__(run)
        self.in_context = False  # the next step samples with the feedback so far in its prompt
        self.adapter_trained = False  # samples the base model until it has distilled
        self.shifts: list[float] = []  # the feedback's shift on each failed attempt scored so far
        self.tried_in_context = False  # a step has been sampled with feedback in its prompt
        self.rewards: dict[str, list[float]] = {"plain": [], "context": []}  # failed attempts' partial credit

    def prompt_feedback(self) -> list[str] | None:
        return distinct_feedback(self.run.attempts) if self.in_context else None

    def samples_adapter(self) -> bool:
        return self.adapter_trained

    def after_step(self, request, completions, new) -> StepMetrics:
        """Decide the next step (scoring the failed attempts' feedback once the in-context bet has failed), distil
        if the decision says so."""
        from sdpo_core.auto import SIGNAL_ATTEMPTS, decide, feedback_shift, reward_decides, reward_gap
        from sdpo_core.reprompt import feedback_kept

        if any(a.solved for a in new):
            return StepMetrics()  # a full-curve run that solved: nothing to decide
        run, clock = self.run, time.perf_counter()
        in_context = request.prompt_ids != run.prompt_ids
        self.tried_in_context |= in_context
        self.rewards["context" if in_context else "plain"] += [a.reward for a in new if a.judged]
        sampled_with = distinct_feedback(run.attempts[: len(run.attempts) - len(new)]) if in_context else []
        rewards = reward_gap(self.rewards)
        shifts, scored = [], 0
        if self.tried_in_context and len(self.shifts) < SIGNAL_ATTEMPTS and not reward_decides(rewards):
            shifts, scored = feedback_shift(run.policy, run.problem, new, [c.token_ids for c in completions],
                                            run.settings.sdpo, limit=SIGNAL_ATTEMPTS - len(self.shifts),
                                            context=sampled_with)
        self.shifts += shifts
        signal_seconds = time.perf_counter() - clock
        distinct = distinct_feedback(run.attempts)
        held = feedback_kept(run.problem, run.policy.chat_ids, distinct, run.settings.max_prompt_tokens)
        decision = decide(self.shifts, step_was_in_context=in_context, tried_in_context=self.tried_in_context,
                          context_holds=(held, len(distinct)), rewards=rewards)
        fell_out = distinct[: len(distinct) - held] if decision.in_context else []  # the oldest are dropped first
        metrics = self.distil(request, completions, new, replay=fell_out) if decision.distil else StepMetrics()
        self.adapter_trained |= decision.distil
        self.in_context = decision.in_context
        metrics.seconds["signal"] = signal_seconds
        metrics.tokens_scored += scored
        run.emit("decision", reason=decision.reason)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "plan": {
            "in_context": self.in_context, "adapter_trained": self.adapter_trained, "shifts": self.shifts,
            "tried_in_context": self.tried_in_context, "rewards": self.rewards}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        plan = state.get("plan", {})
        self.in_context = plan.get("in_context", self.in_context)
        self.adapter_trained = plan.get("adapter_trained", self.adapter_trained)
        self.shifts = list(plan.get("shifts", []))
        self.tried_in_context = plan.get("tried_in_context", self.tried_in_context)
        self.rewards = {kind: list(values) for kind, values in plan.get("rewards", self.rewards).items()}


METHODS: dict[str, type[DiscoveryMethod]] = {
    cls.name: cls for cls in (Auto, SDPO, BestOfK, MultiTurn, MultiTurnFIFO, Hybrid)}
DEFAULT_METHOD = "auto"


def register(method: type[DiscoveryMethod]) -> type[DiscoveryMethod]:
    """Add a method to the registry (usable as a class decorator)."""
    METHODS[method.name] = method
    return method


def learns(name: str) -> bool:
    """Whether the method `name` owns an adapter (its job exports one); False for a name not registered here."""
    method = METHODS.get(name)
    return method is not None and method.learns


for _module in filter(None, (m.strip() for m in os.environ.get(METHOD_MODULES_ENV, "").split(","))):
    importlib.import_module(_module)  # each registers its methods
