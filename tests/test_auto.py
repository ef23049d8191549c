"""The auto method: its rule, and a run that follows its decisions (tiny model; the shift is forced)."""

import pytest

import sdpo_core.auto as auto
from sdpo_core.auto import decide
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings

UNSOLVABLE = Problem.model_validate({"prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra",
                                                                           "extract": "answer_tag"}})


def test_rule_tries_the_feedback_in_context_first_then_reads_the_sign_of_the_mean_shift():
    first = decide([], step_was_in_context=False, tried_in_context=False)
    assert first.in_context and not first.distil and "try it in context" in first.reason
    assert not decide([], step_was_in_context=True, tried_in_context=True).in_context
    copy = decide([0.4, -0.1], step_was_in_context=True, tried_in_context=True)
    assert not copy.in_context and not copy.distil and "cannot use it" in copy.reason
    usable = decide([-0.2, 0.1], step_was_in_context=False, tried_in_context=True)
    assert usable.in_context and not usable.distil and "in context" in usable.reason
    fits = decide([-0.2, -0.3], step_was_in_context=True, tried_in_context=True, context_holds=(2, 2))
    assert fits.in_context and not fits.distil and "holds all 2 distinct feedbacks" in fits.reason
    full = decide([-0.2, -0.3], step_was_in_context=True, tried_in_context=True, context_holds=(1, 3))
    assert full.in_context and full.distil and "holds 1 of its 3 distinct feedbacks: distil" in full.reason


def test_the_shift_of_a_batch_equals_each_attempt_scored_alone(tiny_policy):
    """feedback_shift scores every attempt's two reprompts in one pass: the same numbers as one at a time."""
    from sdpo_core.auto import feedback_shift
    from sdpo_core.records import Attempt
    from sdpo_core.settings import SDPOSettings

    attempts = [Attempt(index=i, step=1, text="x", token_count=3, truncated=False, reward=0.0, solved=False,
                        feedback=f"Use the word number {i}.") for i in range(3)]
    ids = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    together, scored = feedback_shift(tiny_policy, UNSOLVABLE, attempts, ids, SDPOSettings(), limit=8)
    alone = [feedback_shift(tiny_policy, UNSOLVABLE, [a], [i], SDPOSettings(), limit=1)[0][0] for a, i in zip(attempts, ids)]
    assert together == pytest.approx(alone, abs=1e-4) and len(set(together)) == 3 and scored > 2 * sum(map(len, ids))


@pytest.mark.parametrize("shift,in_context", [(-0.5, True), (0.5, False)])
def test_auto_run_follows_its_decisions_and_reports_them(tiny_policy, monkeypatch, shift, in_context):
    contexts = []
    monkeypatch.setattr(auto, "feedback_shift", lambda policy, problem, attempts, ids, settings, limit, context=():
                        contexts.append(list(context)) or ([shift] * len(attempts), 10 * len(attempts)))
    events = []
    settings = RunSettings(method="auto", max_attempts=16, attempts_per_step=4, max_new_tokens=8)
    run = ProblemRun(UNSOLVABLE, settings, tiny_policy, name="job", on_event=events.append)
    engine = TransformersEngine(tiny_policy)
    plain = run.next_request()
    assert plain.adapter is None  # the first step samples the base model
    run_step([run], engine)
    second = run.next_request()
    assert second.prompt_ids != plain.prompt_ids and second.adapter is None  # the feedback is tried in context
    step1 = [e for e in events if e.type == "step"][0]
    assert step1.metrics.tokens_scored == 0  # nothing measured for that bet
    run_step([run], engine)  # the in-context step failed: now the signal decides
    third = run.next_request()
    assert (third.prompt_ids != plain.prompt_ids) == in_context and third.adapter is None
    step2 = [e for e in events if e.type == "step"][1]
    assert "signal" in step2.metrics.seconds  # 40 tokens for the signal and no update: the prompt holds it all
    assert step2.metrics.tokens_scored == 40 and step2.metrics.distilled_samples == 0
    decisions = [e for e in events if e.type == "decision"]
    assert len(decisions) == 2 and all(d.reason for d in decisions)
    assert contexts[0] == sorted({a.feedback for a in run.attempts if a.step == 1})  # measured after what it read
    assert run.result().seconds > 0 and run.result().tokens > 0
    run.close()
    assert tiny_policy.adapters == []


def test_auto_says_when_the_prompt_holds_only_part_of_the_feedback(tiny_policy, monkeypatch):
    """Two distinct feedbacks and a prompt budget that holds one: auto distils the step and the feedback that fell
    out of the prompt, and says so."""
    monkeypatch.setattr(auto, "feedback_shift", lambda *a, **k: ([-0.5] * len(a[2]), 10))
    problem = Problem.model_validate({"prompt": "Write one sentence.", "verifier": {
        "type": "checklist", "checks": [{"kind": "contains", "text": "lighthouse"}, {"kind": "contains",
                                                                                   "text": "gull"}], "report": "first"}})
    events = []
    from sdpo_core.measure.discovery import feedback_budget
    from sdpo_core.verifiers import verify_attempts

    one_feedback = feedback_budget(problem, tiny_policy, verify_attempts, 1)
    settings = RunSettings(method="auto", max_attempts=16, attempts_per_step=4, max_new_tokens=8,
                           max_prompt_tokens=one_feedback)
    run = ProblemRun(problem, settings, tiny_policy, name="job", on_event=events.append)
    engine = TransformersEngine(tiny_policy)
    run_step([run], engine)
    run.attempts[-1] = run.attempts[-1].model_copy(update={"feedback": "The answer must use the word 'gull'."})
    run_step([run], engine)
    reasons = [e.reason for e in events if e.type == "decision"]
    assert "the prompt holds 1 of its 2 distinct feedbacks: distil this step and what fell out" in reasons[-1]
    step2 = [e for e in events if e.type == "step"][1]
    failed = sum(1 for a in run.attempts if a.step == 2 and not a.solved)
    assert step2.metrics.distilled_samples == failed + 1  # this step's attempts and the one that fell out
    assert run.next_request().adapter == "job"
    run.close()


def test_rule_leaves_the_context_when_the_verifiers_partial_credit_drops_there():
    from sdpo_core.auto import reward_gap

    assert reward_gap({"context": [0.2] * 7, "plain": [0.6] * 8}) is None  # too few to compare
    assert reward_gap({"context": [0.2] * 8, "plain": [0.6] * 8}) == pytest.approx((0.2, 0.6))
    worse = decide([-0.4], step_was_in_context=True, tried_in_context=True, rewards=(0.2, 0.6))
    assert worse.distil and not worse.in_context and "partial credit (0.20 against 0.60" in worse.reason
    even = decide([-0.4], step_was_in_context=True, tried_in_context=True, rewards=(0.55, 0.6))
    assert even.in_context and "shift" in even.reason  # within the margin: the shift decides as before
    assert decide([], step_was_in_context=False, tried_in_context=False, rewards=(0.0, 0.9)).in_context  # first bet


def test_rule_keeps_reading_when_the_verifiers_partial_credit_rises_in_context_whatever_the_shift():
    """Told the first missing word, the attempts contain it and fail on the next: the verifier's own credit says the
    model reads the feedback, even where the shift (confounded by the partly right attempts) says it copies."""
    better = decide([0.3], step_was_in_context=True, tried_in_context=True, context_holds=(2, 2), rewards=(0.5, 0.0))
    assert better.in_context and not better.distil and "score higher by the verifier's partial credit" in better.reason
    full = decide([0.3], step_was_in_context=True, tried_in_context=True, context_holds=(1, 2), rewards=(0.5, 0.0))
    assert full.in_context and full.distil and "holds 1 of its 2 distinct feedbacks: distil" in full.reason
    assert not decide([0.3], step_was_in_context=True, tried_in_context=True, rewards=(0.05, 0.0)).in_context


def two_steps_with_credit(policy, credits: tuple[float, float], feedbacks: tuple[str, str]):
    """An auto run of two steps of 8 (plain, then in context) whose verifier gives every attempt of step i the
    partial credit credits[i] and the feedback feedbacks[i]: the plain prompt, the third request, the step-2
    metrics and the last decision's reason."""
    from sdpo_core.verifiers import Verdict

    calls = []

    def verify(problem, texts):
        calls.append(len(texts))
        i = min(len(calls), 2) - 1
        return [Verdict(reward=credits[i], solved=False, feedback=feedbacks[i]) for _ in texts]

    events = []
    settings = RunSettings(method="auto", max_attempts=32, attempts_per_step=8, max_new_tokens=8)
    run = ProblemRun(UNSOLVABLE, settings, policy, name="job", verify=verify, on_event=events.append)
    engine = TransformersEngine(policy)
    plain = run.next_request()
    run_step([run], engine)
    assert run.next_request().prompt_ids != plain.prompt_ids  # the feedback is tried in context
    run_step([run], engine)
    third = run.next_request()
    step2 = [e for e in events if e.type == "step"][1]
    reason = [e.reason for e in events if e.type == "decision"][-1]
    run.close()
    return plain, third, step2.metrics, reason


def test_auto_reads_in_context_without_scoring_the_shift_when_context_raises_the_verifiers_score(tiny_policy,
                                                                                                   monkeypatch):
    def no_shift(*args, **kwargs):
        raise AssertionError("the shift is not scored when the partial credit decides")

    monkeypatch.setattr(auto, "feedback_shift", no_shift)
    plain, third, metrics, reason = two_steps_with_credit(tiny_policy, (0.0, 0.5), ("Use 'a'.", "Use 'b'."))
    assert third.prompt_ids != plain.prompt_ids and third.adapter is None  # in context, the base model
    assert metrics.tokens_scored == 0 and metrics.distilled_samples == 0
    assert "partial credit (0.50 against 0.00 without)" in reason and "holds all 2" in reason


def test_auto_takes_the_adapters_road_when_context_lowers_the_verifiers_score(tiny_policy, monkeypatch):
    """A verifier whose partial credit is 0.6 for the plain first step and 0.1 for the in-context second: auto then
    distils and samples the plain prompt from its adapter, whatever the shift says."""
    monkeypatch.setattr(auto, "feedback_shift", lambda *a, **k: ([-0.5] * len(a[2]), 10))
    plain, third, metrics, reason = two_steps_with_credit(tiny_policy, (0.6, 0.1), ("Mention a tractor.",) * 2)
    assert third.prompt_ids == plain.prompt_ids and third.adapter == "job"  # plain prompt, from the adapter
    assert metrics.distilled_samples > 0
    assert "partial credit (0.10 against 0.60 without)" in reason
