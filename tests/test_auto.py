"""The auto method: its rule, and a run that follows its decisions (tiny model; the shift is forced)."""

import pytest

import sdpo_core.loop as loop
from sdpo_core.auto import decide
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings

UNSOLVABLE = Problem.model_validate({"prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra",
                                                                           "extract": "answer_tag"}})


def test_rule_reads_the_sign_of_the_mean_shift():
    assert not decide([], step_was_in_context=False).in_context
    copy = decide([0.4, -0.1], step_was_in_context=False)
    assert not copy.in_context and not copy.distil and "cannot use it" in copy.reason
    usable = decide([-0.2, 0.1], step_was_in_context=False)
    assert usable.in_context and not usable.distil and "in context" in usable.reason
    again = decide([-0.2, -0.3], step_was_in_context=True)
    assert again.in_context and again.distil and "distil" in again.reason


@pytest.mark.parametrize("shift,in_context", [(-0.5, True), (0.5, False)])
def test_auto_run_follows_its_decisions_and_reports_them(tiny_policy, monkeypatch, shift, in_context):
    monkeypatch.setattr(loop, "feedback_shift", lambda policy, problem, attempts, ids, settings:
                        ([shift] * len(attempts), 10 * len(attempts)))
    events = []
    settings = RunSettings(method="auto", max_attempts=12, attempts_per_step=4, max_new_tokens=8)
    run = ProblemRun(UNSOLVABLE, settings, tiny_policy, name="job", on_event=events.append)
    engine = TransformersEngine(tiny_policy)
    plain = run.next_request()
    assert plain.adapter is None  # the first step samples the base model
    run_step([run], engine)
    second = run.next_request()
    assert (second.prompt_ids != plain.prompt_ids) == in_context
    decisions = [e for e in events if e.type == "decision"]
    assert len(decisions) == 1 and decisions[0].reason
    step_events = [e for e in events if e.type == "step"]
    assert step_events[0].metrics.tokens_scored == 40 and "signal" in step_events[0].metrics.seconds
    run_step([run], engine)  # the second step failed too: in context, auto now distils it
    third = run.next_request()
    assert (third.adapter == "job") == in_context
    step2 = [e for e in events if e.type == "step"][1]
    assert (step2.metrics.distilled_samples > 0) == in_context
    assert run.result().seconds > 0 and run.result().tokens > 0
    run.close()
    assert tiny_policy.adapters == []
