"""The arms of the accumulate issue (issue 16): FIFO and distinct multi-turn, the hybrid, a teacher that reads every
distinct feedback, auto's signal measured after the feedback an attempt was sampled with, the per-requirement
trace, and discovery ratios against an in-context arm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_core.engine import Completion
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.loop import ProblemRun, distill_samples, run_step
from sdpo_core.measure.trace import requirement_trace
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt
from sdpo_core.reprompt import fit_prompt
from sdpo_core.settings import RunSettings, SDPOSettings

SDPO = str(Path(sys.executable).parent / "sdpo")
TWO_WORDS = Problem.model_validate({"id": "sea", "prompt": "Write one sentence about the sea.", "verifier": {
    "type": "checklist", "checks": [{"kind": "contains", "text": "lighthouse"}, {"kind": "contains", "text": "gull"}],
    "report": "first"}})


def attempt(i: int, feedback: str, step: int = 1) -> Attempt:
    return Attempt(index=i, step=step, text="x", token_count=1, truncated=False, reward=0.0, solved=False,
                   feedback=feedback)


def test_fifo_multi_turn_keeps_every_feedback_and_multi_turn_each_once(tiny_policy):
    settings = RunSettings(method="multi-turn-fifo", max_attempts=8, attempts_per_step=2, max_new_tokens=4)
    fifo = ProblemRun(TWO_WORDS, settings, tiny_policy, name="fifo")
    distinct = ProblemRun(TWO_WORDS, settings.model_copy(update={"method": "multi-turn"}), tiny_policy, name="d")
    history = [attempt(1, "Use A."), attempt(2, "Use A."), attempt(3, "Use B.", 2), attempt(4, "Use A.", 2)]
    fifo.attempts = distinct.attempts = history
    assert fifo.method.prompt_feedback() == ["Use A.", "Use A.", "Use B.", "Use A."]
    assert distinct.method.prompt_feedback() == ["Use B.", "Use A."]  # each once, the latest seen last
    text = tiny_policy.tokenizer.decode(fifo.next_request().prompt_ids)
    assert text.count("Use A.") == 3 and "Attempt 4: Use A." in text
    tight = ProblemRun(TWO_WORDS, settings.model_copy(update={"max_prompt_tokens": 64}), tiny_policy, name="t")
    tight.attempts = history
    assert len(tight.next_request().prompt_ids) <= 64 or "Use" not in tiny_policy.tokenizer.decode(
        tight.next_request().prompt_ids)  # the oldest feedback is dropped to fit the budget


def test_the_distinct_teacher_reads_every_distinct_feedback_with_the_attempts_own_last(tiny_policy):
    completions = [Completion(token_ids=[5, 6], logprobs=[-1.0, -1.0], truncated=False, text="x")]
    new = [attempt(3, "The sentence must use 'gull'.", 2)]
    earlier = ["The sentence must use 'lighthouse'.", "The sentence must use 'gull'."]
    prompt = tiny_policy.chat_ids(TWO_WORDS.chat())

    def teacher_text(**settings) -> str:
        [sample] = distill_samples(TWO_WORDS, tiny_policy, SDPOSettings(**settings), prompt, completions, new,
                                   earlier_feedback=earlier)
        return tiny_policy.tokenizer.decode(sample.teacher_prompt_ids)

    own = teacher_text()
    assert "'gull'" in own and "'lighthouse'" not in own  # the paper's: the attempt's own feedback only
    every = teacher_text(teacher_feedback="distinct")
    assert every.index("'lighthouse'") < every.rindex("'gull'") and every.count("'gull'") == 1
    own_only = len(fit_prompt(TWO_WORDS, tiny_policy.chat_ids, 10**6, None, new[0].feedback))
    short = teacher_text(teacher_feedback="distinct", max_reprompt_tokens=own_only)
    assert "'gull'" in short and "'lighthouse'" not in short  # the oldest goes first when the reprompt is full


def test_hybrid_samples_with_the_feedback_from_its_adapter(tiny_policy):
    run = ProblemRun(TWO_WORDS, RunSettings(method="hybrid", max_attempts=12, attempts_per_step=4, max_new_tokens=6),
                     tiny_policy, name="h")
    engine = TransformersEngine(tiny_policy)
    assert run.next_request().adapter == "h"
    run_step([run], engine)
    second = run.next_request()
    assert "lighthouse" in tiny_policy.tokenizer.decode(second.prompt_ids) and second.adapter == "h"
    run.close()


def test_autos_shift_is_measured_after_the_feedback_the_attempts_were_sampled_with(tiny_policy):
    from sdpo_core.auto import feedback_shift

    new = [attempt(1, "The sentence must use the word 'gull'.")]
    ids = [[7, 8, 9, 10]]
    plain, _ = feedback_shift(tiny_policy, TWO_WORDS, new, ids, SDPOSettings(), limit=4)
    after, scored = feedback_shift(tiny_policy, TWO_WORDS, new, ids, SDPOSettings(), limit=4,
                                   context=["The sentence must use the word 'lighthouse'."])
    assert len(plain) == len(after) == 1 and plain != after and scored > 2 * len(ids[0])


def test_the_requirement_trace_rates_each_check_and_what_the_feedback_has_named():
    rates, revealed = requirement_trace(TWO_WORDS, ["a lighthouse here", "a gull and a lighthouse", "nothing"],
                                        ["The answer must use the word 'lighthouse'."])
    assert rates == pytest.approx([2 / 3, 1 / 3]) and revealed == [True, False]
    assert requirement_trace(Problem.model_validate({"prompt": "?", "verifier": {"type": "exact", "answer": "1"}}),
                             ["1"], []) == (None, None)


def test_discovery_ratios_against_an_in_context_arm_at_a_context_budget(tmp_path, tiny_model_dir):
    problems = tmp_path / "set.jsonl"
    problems.write_text(json.dumps({"id": "easy", "prompt": "Say anything.", "verifier": {
        "type": "regex", "pattern": "(?s).*", "target": "completion"}}) + "\n")
    proc = subprocess.run([SDPO, "bench", "discovery", "--problems", str(problems), "--model", str(tiny_model_dir),
                           "--seeds", "2", "--budget", "4", "--attempts-per-step", "2", "--max-new-tokens", "4",
                           "--out", str(tmp_path / "out"), "--quiet", "--methods", "multi-turn,hybrid,best-of-k",
                           "--against", "multi-turn", "--max-prompt-tokens", "300"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "discovery.json").read_text())
    assert report["max_prompt_tokens"] == 300
    assert report["ratios_against"]["multi-turn"]["hybrid"]["attempts"]["value"] == pytest.approx(1.0)
    assert "cost to reach multi-turn's P@4" in proc.stdout


def test_a_context_budget_of_one_feedback_holds_the_latest_and_drops_the_older(tiny_policy):
    from sdpo_core.measure.discovery import feedback_budget
    from sdpo_core.reprompt import feedback_kept
    from sdpo_core.verifiers import verify_attempts

    budget = feedback_budget(TWO_WORDS, tiny_policy, verify_attempts, 1)
    first, second = "The answer must use the word 'lighthouse'.", "The answer must use the word 'gull'."
    assert feedback_kept(TWO_WORDS, tiny_policy.chat_ids, [first], budget) == 1
    assert feedback_kept(TWO_WORDS, tiny_policy.chat_ids, [first, second], budget) == 1  # the newest only
    assert feedback_kept(TWO_WORDS, tiny_policy.chat_ids, [first, second],
                         feedback_budget(TWO_WORDS, tiny_policy, verify_attempts, 2)) == 2


def test_a_product_of_experts_target_sums_each_feedbacks_clipped_ratio():
    import torch

    from sdpo_core.loss import contrastive_target

    anchor, control = torch.zeros(1, 3), torch.zeros(1, 3)
    first, second = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 9.0, 0.0]])
    assert torch.equal(contrastive_target(anchor, first, control, 2.0, 5.0), torch.tensor([[4.0, 0.0, 0.0]]))
    both = contrastive_target(anchor, [first, second], control, 2.0, 5.0)
    assert torch.equal(both, torch.tensor([[4.0, 10.0, 0.0]]))  # each clipped to 5 before the sum


def test_the_each_teacher_gives_every_sample_the_other_distinct_feedbacks_as_experts(tiny_policy):
    completions = [Completion(token_ids=[5, 6], logprobs=[-1.0, -1.0], truncated=False, text="x")] * 2
    new = [attempt(3, "Use 'gull'.", 2), attempt(4, "Use 'lighthouse'.", 2)]
    earlier = ["Use 'lighthouse'.", "Use 'tide'.", "Use 'gull'."]
    prompt = tiny_policy.chat_ids(TWO_WORDS.chat())
    samples = distill_samples(TWO_WORDS, tiny_policy, SDPOSettings(teacher_feedback="each"), prompt, completions, new,
                              earlier_feedback=earlier)
    texts = [[tiny_policy.tokenizer.decode(p) for p in s.earlier_prompt_ids] for s in samples]
    assert [len(t) for t in texts] == [2, 2]
    assert "'lighthouse'" in texts[0][0] and "'tide'" in texts[0][1]  # the own feedback is not an expert again
    assert "'tide'" in texts[1][0] and "'gull'" in texts[1][1]
    plain = distill_samples(TWO_WORDS, tiny_policy, SDPOSettings(), prompt, completions, new, earlier_feedback=earlier)
    assert all(s.earlier_prompt_ids == [] for s in plain)


def test_replay_distils_the_latest_attempt_of_a_feedback_the_step_no_longer_gets(tiny_policy):
    from sdpo_core.loop import replay_samples

    prompt = tiny_policy.chat_ids(TWO_WORDS.chat())
    earlier = [attempt(1, "Use 'lighthouse'."), attempt(2, "Use 'lighthouse'."), attempt(3, "Use 'gull'.", 2)]
    earlier[1] = earlier[1].model_copy(update={"text": "the latest one"})
    now = [attempt(4, "Use 'gull'.", 3)]
    assert replay_samples(TWO_WORDS, tiny_policy, SDPOSettings(), prompt, earlier, now) == []  # replay 0: off
    [sample] = replay_samples(TWO_WORDS, tiny_policy, SDPOSettings(replay=2), prompt, earlier, now)
    assert "'lighthouse'" in tiny_policy.tokenizer.decode(sample.teacher_prompt_ids)  # only what the step lacks
    assert tiny_policy.tokenizer.decode(sample.response_ids).startswith("the latest one")
    assert sample.response_logprobs is None  # re-tokenised: no importance weight
