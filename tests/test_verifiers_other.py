"""math, reasoning_gym and python verifiers, and spec validation that names the bad field."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from sdpo_core.problem import Problem
from sdpo_core.verifiers import VerifierError, build_verifier
from sdpo_core.verifiers.python_verifier import verdict_from


def problem_with(verifier: dict, prompt: str = "Solve it.") -> Problem:
    return Problem.model_validate({"prompt": prompt, "verifier": verifier})


# ---- math -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", ["\\boxed{\\frac{1}{2}}", "so \\boxed{0.5}.", "\\boxed{1/2}", "\\boxed{\\dfrac{2}{4}}"])
def test_math_accepts_equivalent_forms(answer):
    problem = problem_with({"type": "math", "answer": "\\frac{1}{2}"})
    verdict = build_verifier(problem.verifier).verify(problem, f"Working... {answer}")
    assert verdict.solved and verdict.reward == 1.0


def test_math_wrong_answer_does_not_reveal_gold():
    problem = problem_with({"type": "math", "answer": "\\frac{\\pi}{7}"})
    verdict = build_verifier(problem.verifier).verify(problem, "\\boxed{\\pi/6}")
    assert not verdict.solved and verdict.answer == "\\pi/6"
    assert "7" not in verdict.feedback and "incorrect" in verdict.feedback


def test_math_gold_goes_first():
    """math-verify is asymmetric (gold first): an attempt written as an equation, x = 3, matches the gold value 3."""
    problem = problem_with({"type": "math", "answer": "3"})
    assert build_verifier(problem.verifier).verify(problem, "\\boxed{x = 3}").solved


def test_math_without_box_says_how_to_answer():
    problem = problem_with({"type": "math", "answer": "42"})
    verdict = build_verifier(problem.verifier).verify(problem, "The answer is 42")
    assert not verdict.solved and "\\boxed{...}" in verdict.feedback


def test_math_works_off_the_main_thread():
    """math-verify's SIGALRM timeouts would raise in a thread; the verifier turns them off there."""
    problem = problem_with({"type": "math", "answer": "2"})
    results = []
    thread = threading.Thread(target=lambda: results.append(build_verifier(problem.verifier).verify(problem, "\\boxed{2}")))
    thread.start()
    thread.join()
    assert results[0].solved


# ---- reasoning_gym --------------------------------------------------------------------------------------------
GYM = {"type": "reasoning_gym", "dataset": "basic_arithmetic", "seed": 3, "index": 1}


def test_reasoning_gym_entry_is_deterministic():
    spec = problem_with(GYM).verifier
    assert spec.entry()["question"] == problem_with(GYM).verifier.entry()["question"]
    assert spec.entry()["question"] != problem_with({**GYM, "index": 2}).verifier.entry()["question"]


def test_reasoning_gym_scores_the_answer_tag():
    problem = problem_with(GYM)
    entry = problem.verifier.entry()
    verdict = build_verifier(problem.verifier).verify(problem, f"So <answer>{entry['answer']}</answer>")
    assert verdict.solved and verdict.reward == 1.0


def test_reasoning_gym_feedback_gives_score_and_format_not_answer():
    problem = problem_with(GYM)
    answer = str(problem.verifier.entry()["answer"])
    wrong = "123456789" if answer != "123456789" else "1"
    verdict = build_verifier(problem.verifier).verify(problem, f"<answer>{wrong}</answer>")
    assert not verdict.solved and verdict.reward == 0.0
    assert "scored 0.00 out of 1" in verdict.feedback and "<answer>" in verdict.feedback
    assert answer not in verdict.feedback


def test_reasoning_gym_missing_tag():
    problem = problem_with(GYM)
    verdict = build_verifier(problem.verifier).verify(problem, "I think it is 5")
    assert verdict.feedback.startswith("No <answer>...</answer> found")


def test_reasoning_gym_unknown_dataset_is_a_verifier_error():
    problem = problem_with({**GYM, "dataset": "no_such_dataset"})
    with pytest.raises(VerifierError, match="no_such_dataset"):
        build_verifier(problem.verifier).verify(problem, "<answer>1</answer>")


# ---- python (user-written verifier) ---------------------------------------------------------------------------
def python_problem(source: str, **overrides: object) -> Problem:
    return problem_with({"type": "python", "source": source, "timeout_s": 2.0, **overrides})


@pytest.mark.parametrize(("source", "reward", "solved", "feedback"), [
    ("def verify(c):\n    return 'ok' in c", 1.0, True, ""),
    ("def verify(c):\n    return 0.25", 0.25, False, ""),
    ("def verify(c):\n    return {'reward': 0, 'feedback': 'too short'}", 0.0, False, "too short"),
    ("def verify(c):\n    return {'reward': 1.0, 'feedback': ''}", 1.0, True, ""),
])
def test_python_verifier_return_shapes(sandbox, source, reward, solved, feedback):
    problem = python_problem(source)
    verdict = build_verifier(problem.verifier, sandbox=sandbox).verify(problem, "this is ok")
    assert (verdict.reward, verdict.solved, verdict.feedback) == (reward, solved, feedback)


def test_python_verifier_sees_the_completion_and_may_import(sandbox):
    source = "import json, re\n\ndef verify(completion):\n    return {'reward': 1.0 if re.search(r'\\d+', completion) " \
             "else 0.0, 'feedback': json.dumps(len(completion))}"
    problem = python_problem(source)
    verdict = build_verifier(problem.verifier, sandbox=sandbox).verify(problem, "abc 12")
    assert verdict.solved and verdict.feedback == "6"


def test_verdict_shapes_checked_outside_the_sandbox():
    assert verdict_from(True).solved
    assert verdict_from(1).reward == 1.0
    assert "not a number in [0, 1]" in verdict_from({"reward": 1.5}).feedback
    assert "must return" in verdict_from("yes").feedback
    assert "not a string" in verdict_from({"reward": 0.5, "feedback": 3}).feedback
    assert verdict_from({"reward": 0.5, "solved": True}).solved


def test_code_running_types_refuse_to_run_without_a_sandbox():
    problem = python_problem("def verify(c):\n    return True")
    with pytest.raises(VerifierError, match="needs a sandbox"):
        build_verifier(problem.verifier)


# ---- spec validation names the field --------------------------------------------------------------------------
@pytest.mark.parametrize(("verifier", "named"), [
    ({"type": "code_io"}, "verifier.code_io.public_tests"),
    ({"type": "code_io", "public_tests": [{"input": "1"}]}, "verifier.code_io.public_tests.0.output"),
    ({"type": "code_io", "public_tests": [{"output": "1"}], "time_limit_s": -1}, "verifier.code_io.time_limit_s"),
    ({"type": "code_functional", "entry_point": "f", "test": "assert f(1) =="}, "verifier.code_functional.test"),
    ({"type": "code_functional", "entry_point": "not valid", "test": "pass"}, "verifier.code_functional.entry_point"),
    ({"type": "python", "source": "def check(c):\n    return 1"}, "verifier.python.source"),
    ({"type": "python", "source": "def verify(c) return"}, "verifier.python.source"),
    ({"type": "math"}, "verifier.math.answer"),
    ({"type": "reasoning_gym", "dataset": "x", "config": {"seed": 1}}, "verifier.reasoning_gym.config"),
    ({"type": "webhook", "url": "ftp://example.org", "secret": "s" * 16}, "verifier.webhook.url"),
    ({"type": "webhook", "url": "https://example.org", "secret": "short"}, "verifier.webhook.secret"),
    ({"type": "code_io", "public_tests": [{"output": "1"}], "surprise": 1}, "verifier.code_io.surprise"),
])
def test_malformed_specs_are_rejected_naming_the_field(verifier, named):
    with pytest.raises(ValidationError) as info:
        problem_with(verifier)
    locations = [".".join(str(part) for part in error["loc"]) for error in info.value.errors()]
    assert named in locations


def test_unknown_verifier_type_is_rejected():
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        problem_with({"type": "telepathy"})


def test_specs_round_trip_through_json():
    """The pool sends problems to its workers as JSON; every type must come back the same."""
    for verifier in [GYM, {"type": "math", "answer": "1"}, {"type": "webhook", "url": "https://example.org/v",
                                                             "secret": "0123456789abcdef"}]:
        problem = problem_with(verifier)
        assert Problem.model_validate_json(problem.model_dump_json()) == problem


# ---- the spec contract: whether it runs code, its own worst case -------------------------------------------------
def test_every_spec_declares_whether_it_runs_code_and_its_own_worst_case():
    """No base class gives a default: a new type that leaves either out fails here, not with someone else's limit."""
    from sdpo_core.verifiers import SANDBOXED_TYPES, SPEC_CLASSES, VerifierSpecContract

    for spec in SPEC_CLASSES:
        for name in ("runs_code", "worst_case_seconds"):
            assert name in vars(spec), f"{spec.__name__} must declare {name} itself ({VerifierSpecContract.__name__})"
        assert isinstance(spec.runs_code, bool) and "runs_code" not in spec.model_fields, spec.__name__
        assert not spec.runs_code or "verifier" in vars(spec), f"{spec.__name__} runs code: it builds its verifier"
    assert SANDBOXED_TYPES == {"code_io", "code_functional", "python"}


@pytest.mark.parametrize("verifier, seconds", [
    ({"type": "exact", "answer": "4"}, 40.0),
    ({"type": "numeric", "answer": 4}, 40.0),
    ({"type": "regex", "pattern": "4"}, 40.0),
    ({"type": "checklist", "checks": [{"kind": "contains", "text": "owl"}]}, 40.0),
    ({"type": "math", "answer": "4", "timeout_s": 5}, 50.0),
    ({"type": "reasoning_gym", "dataset": "basic_arithmetic"}, 90.0),
    ({"type": "code_io", "public_tests": [{"input": "1", "output": "1"}] * 2, "hidden_tests": [
        {"input": "2", "output": "2"}], "time_limit_s": 2.0}, 3 * 3.0 * 1.5 + 30),
    ({"type": "code_functional", "entry_point": "f", "test": "assert f() == 1", "timeout_s": 10.0}, 50.0),
    ({"type": "python", "source": "def verify(completion):\n    return True", "timeout_s": 4.0}, 41.0),
    ({"type": "webhook", "url": "https://example.com/v", "secret": "s" * 16, "timeout_s": 10.0, "max_retries": 2},
     3 * (10.0 + 4.0) + 30),
])
def test_the_pools_time_limit_is_the_specs_worst_case_and_a_margin(verifier, seconds):
    from sdpo_core.verification.pool import time_limit_s

    assert time_limit_s(problem_with(verifier)) == pytest.approx(seconds)
