"""The per-problem loop on a tiny random model: updates, teachers, budgets, baselines, events, resume."""

import io

import pytest
import torch
from conftest import solve_alone

from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings, SDPOSettings
from sdpo_core.teacher import teacher_adapter, update_teacher
from sdpo_core.update import DistillSample, make_optimizer, sdpo_update

# The tiny model never writes this, so every attempt fails with "no final answer" feedback.
UNSOLVABLE = Problem.model_validate({"prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra",
                                                                           "extract": "answer_tag"}})
ANYTHING = Problem.model_validate({"prompt": "Say anything.", "verifier": {"type": "regex", "pattern": "(?s).*",
                                                                         "target": "completion"}})


def settings(**overrides) -> RunSettings:
    sdpo = overrides.pop("sdpo", {})
    base = dict(method="sdpo", max_attempts=8, attempts_per_step=4, max_new_tokens=12, seed=0)
    return RunSettings(**{**base, **overrides}, sdpo=SDPOSettings(**{"learning_rate": 1e-2, **sdpo}))


def snapshot(policy, name):
    return {k: v.clone() for k, v in policy.state(name).items()}


def test_sdpo_run_records_attempts_and_changes_the_adapter(tiny_policy):
    events = []
    run = ProblemRun(UNSOLVABLE, settings(), tiny_policy, name="job", on_event=events.append)
    before = snapshot(tiny_policy, "job")
    engine = TransformersEngine(tiny_policy)
    while not run.done:
        run_step([run], engine)
    result = run.result()
    assert result.status == "exhausted" and result.steps == 2 and result.first_success_attempt is None
    assert [a.index for a in result.attempts] == list(range(1, 9))
    assert [a.step for a in result.attempts] == [1] * 4 + [2] * 4
    assert all(a.feedback.startswith("No final answer") and a.reward == 0 for a in result.attempts)
    assert all(a.token_count > 0 for a in result.attempts)
    after = tiny_policy.state("job")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert [e.type for e in events] == ["step", "step", "finished"]
    assert events[0].metrics.distilled_samples == 4 and events[0].metrics.loss > 0
    assert set(events[0].metrics.seconds) >= {"generate", "verify", "teacher_forward", "student_forward_backward"}
    run.close()
    assert tiny_policy.adapters == []


@pytest.mark.parametrize("context", ["feedback", "contrastive"])
def test_repeated_updates_on_a_fixed_batch_reduce_the_divergence(tiny_policy, context):
    sdpo = SDPOSettings(learning_rate=3e-3, teacher="frozen", teacher_context=context)
    tiny_policy.create_adapter("student", sdpo, seed=0)
    optimizer = make_optimizer(tiny_policy, "student", sdpo)
    tok = tiny_policy.tokenizer
    prompt = tiny_policy.chat_ids([{"role": "user", "content": "What is 2+2?"}])
    teacher_prompt = tiny_policy.chat_ids([{"role": "user", "content": "What is 2+2? Feedback: 5 is wrong."}])
    responses = [tok.encode("It is 5.", add_special_tokens=False), tok.encode("Four!", add_special_tokens=False)]
    control = tiny_policy.chat_ids([{"role": "user", "content": "What is 2+2? Feedback: not correct."}])
    samples = [DistillSample(prompt, teacher_prompt, r, [0.0] * len(r), control) for r in responses]
    losses = [sdpo_update(tiny_policy, optimizer, "student", samples, sdpo.model_copy(update={"is_clip": None})).loss
              for _ in range(15)]
    assert losses[0] > 0
    assert losses[-1] < 0.5 * losses[0], losses


def test_ema_teacher_follows_the_student_at_rate_r(tiny_policy):
    sdpo = SDPOSettings(teacher="ema", teacher_update_rate=0.25)
    run = ProblemRun(UNSOLVABLE, settings(sdpo={"teacher": "ema", "teacher_update_rate": 0.25}), tiny_policy,
                     name="job")
    teacher, student = teacher_adapter("job"), "job"
    assert all(torch.equal(a, b) for a, b in zip(tiny_policy.state(teacher).values(),
                                                   tiny_policy.state(student).values()))
    with torch.no_grad():
        for p in tiny_policy.parameters(student).values():
            p.add_(1.0)
    t0, s0 = snapshot(tiny_policy, teacher), snapshot(tiny_policy, student)
    update_teacher(tiny_policy, student, sdpo)
    for key, value in tiny_policy.state(teacher).items():
        torch.testing.assert_close(value, 0.75 * t0[key] + 0.25 * s0[key])
    assert not any(p.requires_grad for p in tiny_policy.parameters(teacher).values())
    run.close()


@pytest.mark.parametrize("teacher", ["frozen", "trust-region"])
def test_other_teachers_update_without_a_teacher_adapter(tiny_policy, teacher):
    result = solve_alone(UNSOLVABLE, settings(sdpo={"teacher": teacher}), tiny_policy,
                         TransformersEngine(tiny_policy), name="job")
    assert result.status == "exhausted" and len(result.attempts) == 8
    assert tiny_policy.adapters == []


def test_budget_not_a_multiple_of_the_step_is_respected(tiny_policy):
    result = solve_alone(UNSOLVABLE, settings(max_attempts=10, attempts_per_step=4), tiny_policy,
                         TransformersEngine(tiny_policy))
    assert len(result.attempts) == 10 and result.steps == 3


def test_stops_at_first_success_or_keeps_going_for_a_full_curve(tiny_policy):
    engine = TransformersEngine(tiny_policy)
    first = solve_alone(ANYTHING, settings(), tiny_policy, engine)
    assert first.status == "succeeded" and first.first_success_attempt == 1 and len(first.attempts) == 4
    assert first.solution == first.attempts[0].text
    full = solve_alone(ANYTHING, settings(stop_at_first_success=False), tiny_policy, engine)
    assert full.status == "succeeded" and len(full.attempts) == 8


def test_best_of_k_samples_the_base_model_and_shares_sdpos_first_step(tiny_policy):
    engine = TransformersEngine(tiny_policy)
    bok = solve_alone(UNSOLVABLE, settings(method="best-of-k"), tiny_policy, engine)
    sdpo = solve_alone(UNSOLVABLE, settings(), tiny_policy, engine)
    assert [a.text for a in bok.attempts[:4]] == [a.text for a in sdpo.attempts[:4]]  # adapter starts at the base
    assert [a.text for a in bok.attempts[4:]] != [a.text for a in sdpo.attempts[4:]]  # then SDPO has learned


def test_multi_turn_prompts_carry_earlier_feedback(tiny_policy):
    run = ProblemRun(UNSOLVABLE, settings(method="multi-turn"), tiny_policy)
    first = run.next_request()
    run_step([run], TransformersEngine(tiny_policy))
    second = run.next_request()
    text = tiny_policy.tokenizer.decode(second.prompt_ids)
    assert len(second.prompt_ids) > len(first.prompt_ids)
    assert "No final answer was found" in text and text.count("No final answer was found") == 1  # deduplicated
    assert tiny_policy.adapters == []


def test_contrastive_teacher_reads_feedback_and_control_reprompts_and_updates(tiny_policy):
    run = ProblemRun(UNSOLVABLE, settings(sdpo={"teacher_context": "contrastive", "teacher": "frozen",
                                                "alpha": 0.0, "top_k": None}), tiny_policy, name="job")
    before = snapshot(tiny_policy, "job")
    event = run_step([run], TransformersEngine(tiny_policy))[0]
    assert event.metrics.distilled_samples == 4 and event.metrics.loss > 0
    after = tiny_policy.state("job")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    run.close()


def test_hybrid_samples_with_feedback_in_context_and_distils_into_the_plain_prompt(tiny_policy, monkeypatch):
    import sdpo_core.update as update
    from sdpo_core.records import StepMetrics

    captured = []
    monkeypatch.setattr(update, "sdpo_update", lambda policy, opt, name, samples, *a: captured.append(samples)
                        or StepMetrics())
    run = ProblemRun(UNSOLVABLE, settings(max_attempts=12, method="hybrid"), tiny_policy,
                     name="job")
    engine = TransformersEngine(tiny_policy)
    first = run.next_request()
    run_step([run], engine)
    second = run.next_request()
    assert "No final answer was found" in tiny_policy.tokenizer.decode(second.prompt_ids)  # sampled in context
    assert second.adapter == "job"  # ... with the adapter that learns
    run_step([run], engine)
    assert all(s.prompt_ids == first.prompt_ids for s in captured[1])  # the student learns on the plain prompt
    assert all(s.response_logprobs is None for s in captured[1])  # in-context samples carry no importance weight
    assert all(s.response_logprobs is not None for s in captured[0])  # the first step sampled the plain prompt
    run.close()


def test_interleaved_runs_give_the_same_attempts_as_runs_alone(tiny_policy):
    engine = TransformersEngine(tiny_policy, max_batch_size=5)
    alone = solve_alone(UNSOLVABLE, settings(seed=3), tiny_policy, engine, name="alone").attempts
    a = ProblemRun(UNSOLVABLE, settings(seed=3), tiny_policy, name="a1")
    b = ProblemRun(ANYTHING, settings(method="best-of-k", seed=7), tiny_policy, name="b1")
    while not (a.done and b.done):
        run_step([a, b], engine)
    assert [x.text for x in a.attempts] == [x.text for x in alone]
    assert b.result().status == "succeeded"


def test_resume_from_state_dict_continues_exactly(tiny_policy, tiny_model_dir):
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    cfg = settings(max_attempts=16)
    engine = TransformersEngine(tiny_policy)
    straight = ProblemRun(UNSOLVABLE, cfg, tiny_policy, name="straight")
    while not straight.done:
        run_step([straight], engine)

    first_half = ProblemRun(UNSOLVABLE, cfg, tiny_policy, name="half")
    run_step([first_half], engine)
    run_step([first_half], engine)
    buffer = io.BytesIO()
    torch.save(first_half.state_dict(), buffer)  # a checkpoint: plain tensors and JSON-like values
    first_half.close()
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device="cpu", dtype="float32")  # as tiny_policy
    fresh_policy = LoraPolicy(model, tokenizer)  # as if on another worker
    resumed = ProblemRun.restore(state, fresh_policy, name="resumed")
    assert len(resumed.attempts) == 8 and resumed.step == 2
    fresh_engine = TransformersEngine(fresh_policy)
    while not resumed.done:
        run_step([resumed], fresh_engine)
    assert [a.text for a in resumed.attempts] == [a.text for a in straight.attempts]
    for key, value in fresh_policy.state("resumed").items():
        torch.testing.assert_close(value, tiny_policy.state("straight")[key], atol=1e-5, rtol=1e-4)


def test_cancel_ends_the_run_between_steps(tiny_policy):
    events = []
    run = ProblemRun(UNSOLVABLE, settings(), tiny_policy, on_event=events.append)
    run_step([run], TransformersEngine(tiny_policy))
    run.cancel()
    assert run.done and run.next_request() is None and run.result().status == "cancelled"
    assert events[-1].type == "finished" and events[-1].status == "cancelled"


def test_no_update_after_the_budgets_last_step(tiny_policy, monkeypatch):
    """The last step's update would train an adapter no attempt samples: SDPO and auto skip it."""
    import sdpo_core.update as update
    from sdpo_core.records import StepMetrics

    updates = []
    monkeypatch.setattr(update, "sdpo_update", lambda *a: updates.append(1) or StepMetrics())
    engine = TransformersEngine(tiny_policy)
    run = ProblemRun(UNSOLVABLE, settings(max_attempts=12), tiny_policy, name="job")
    while not run.done:
        run_step([run], engine)
    assert run.step == 3 and len(updates) == 2 and run.status == "exhausted"
    run.close()
