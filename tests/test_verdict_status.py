"""Verdicts carry a status (ok / rejected / error / timeout). A verifier's own failure is never shown to the
self-teacher as feedback on the attempt (neither in the SDPO reprompt nor in the multi-turn prompt), and errors
and timeouts are counted apart from rejections in the step's events and in the worker's metrics."""

from __future__ import annotations

import pytest

from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt
from sdpo_core.settings import RunSettings, SDPOSettings
from sdpo_core.verification.pool import VerifierPool
from sdpo_core.verifiers import Verdict, verifier_failed
from workers.metrics import step_metrics, verifier_outcome

pytestmark = pytest.mark.sandbox  # the test tier (tests/conftest.py): it runs processes

PROBLEM = Problem.model_validate({"prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra"}})
BROKEN = "The verifier failed: RuntimeError: the judge's database is down"
SLOW = "Verification did not finish within 5 s and was stopped."
WRONG = "Your answer is not the word we are looking for."


def mixed_verdicts(problem, completions):
    """One step's verdicts: a crash, a timeout and two real rejections."""
    kinds = [verifier_failed(BROKEN), verifier_failed(SLOW, "timeout"), Verdict(reward=0.0, solved=False,
                                                                              feedback=WRONG)]
    return [kinds[min(i, 2)] for i in range(len(completions))]


def settings(method: str) -> RunSettings:
    return RunSettings(method=method, max_attempts=8, attempts_per_step=4, max_new_tokens=8, seed=0,
                       sdpo=SDPOSettings(learning_rate=1e-2))


def test_a_verdict_status_agrees_with_solved():
    assert Verdict(reward=1.0, solved=True).status == "ok"
    assert Verdict(reward=0.2, solved=False).status == "rejected"
    assert verifier_failed("boom").status == "error" and not verifier_failed("boom").judged
    with pytest.raises(ValueError, match="cannot have solved"):
        Verdict(reward=1.0, solved=True, status="error")
    old = Attempt.model_validate({"index": 1, "step": 1, "text": "x", "token_count": 1, "truncated": False,
                                  "reward": 0.0, "solved": False, "feedback": "no"})
    assert old.verdict == "rejected"  # attempts stored before statuses still read


def test_sdpo_distils_nothing_from_verifier_failures_and_counts_them_apart(tiny_policy, monkeypatch):
    """The update's teacher contexts come only from judged attempts; the step event counts each status."""
    import sdpo_core.loop as loop

    prompts: list[str] = []
    real_fit = loop.fit_prompt

    def recording_fit(problem, tokenize, max_tokens, solution, feedback):
        prompts.append(feedback or "")
        return real_fit(problem, tokenize, max_tokens, solution, feedback)

    monkeypatch.setattr(loop, "fit_prompt", recording_fit)
    events = []
    run = ProblemRun(PROBLEM, settings("sdpo"), tiny_policy, name="job", verify=mixed_verdicts,
                     on_event=events.append)
    try:
        run_step([run], TransformersEngine(tiny_policy))
    finally:
        run.close()
    assert [a.verdict for a in run.attempts] == ["error", "timeout", "rejected", "rejected"]
    assert events[0].metrics.verdicts == {"error": 1, "timeout": 1, "rejected": 2}
    assert events[0].metrics.distilled_samples == 2  # the two rejections, not the verifier's failures
    assert prompts and all(BROKEN not in p and SLOW not in p for p in prompts)
    assert any(WRONG in p for p in prompts)

    counters, _ = step_metrics([verifier_outcome(a.verdict) for a in run.attempts], seconds=1.0)
    assert counters["verifier:error"] == 1 and counters["verifier:timeout"] == 1
    assert counters["verifier:rejected"] == 2 and "verifier:solved" not in counters


def test_multi_turn_prompts_carry_only_judged_feedback(tiny_policy):
    run = ProblemRun(PROBLEM, settings("multi-turn"), tiny_policy, name="mt", verify=mixed_verdicts)
    run_step([run], TransformersEngine(tiny_policy))
    prompt = tiny_policy.tokenizer.decode(run.next_request().prompt_ids)
    assert WRONG in prompt and BROKEN not in prompt and SLOW not in prompt


def test_the_pool_reports_its_timeouts_and_crashes_as_such():
    """A verification that overruns the pool's deadline is a timeout, not a rejection of the attempt."""
    slow = Problem.model_validate({"prompt": "q", "verifier": {
        "type": "python", "source": "import time\ndef verify(answer):\n    time.sleep(30)\n    return True\n",
        "timeout_s": 20}})
    with VerifierPool(max_workers=1, task_timeout_s=2.0) as pool:
        [verdict] = pool.verify_batch(slow, ["anything"])
    assert verdict.status == "timeout" and not verdict.solved and "did not finish" in verdict.feedback
