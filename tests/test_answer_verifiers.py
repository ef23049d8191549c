"""Answer extraction and the exact / numeric / regex verifiers: rewards, and feedback that never leaks the answer."""

import pytest
from pydantic import ValidationError

from sdpo_core.problem import Problem
from sdpo_core.verifiers import Verdict, verify_attempts
from sdpo_core.verifiers.extract import extract_answer, parse_number


def problem(verifier: dict) -> Problem:
    return Problem.model_validate({"prompt": "question", "verifier": verifier})


@pytest.mark.parametrize("text,mode,numeric,expected", [
    ("so <answer> 42 </answer> done", "auto", False, "42"),
    ("first <answer>1</answer> then <answer>2</answer>", "auto", False, "2"),
    (r"we get \boxed{\frac{1}{2}} finally", "auto", False, r"\frac{1}{2}"),
    (r"\boxed{x^{2}+1}", "boxed", False, "x^{2}+1"),
    (r"cut off \boxed{12", "boxed", False, None),
    ("12 + 30 = 42.", "auto", True, "42"),
    ("The answer is Paris.", "auto", False, "Paris"),
    ("total 1,234 apples", "last_number", False, "1234"),
    ("no digits here", "auto", True, None),
    ("<answer>x = 7 apples</answer>", "auto", True, "7"),
])
def test_extract_answer(text, mode, numeric, expected):
    assert extract_answer(text, mode, numeric=numeric) == expected


def test_parse_number_forms():
    assert parse_number("1,234") == 1234
    assert parse_number(r"\frac{3}{4}") == 0.75
    assert parse_number("3/4") == 0.75
    assert parse_number("42.") == 42
    assert parse_number("abc") is None


def test_exact_match_normalises_and_gives_feedback_without_the_answer():
    p = problem({"type": "exact", "answer": "Paris"})
    assert p.verifier.verify(p, "The answer is paris.").solved
    wrong = p.verifier.verify(p, "The answer is London.")
    assert not wrong.solved and wrong.reward == 0 and "London" in wrong.feedback and "Paris" not in wrong.feedback
    none = p.verifier.verify(p, "I am not sure.")
    assert not none.solved and "No final answer" in none.feedback


def test_exact_numeric_gold_accepts_equivalent_numbers():
    p = problem({"type": "exact", "answer": "391"})
    assert p.verifier.verify(p, "17*23 = 391.0").solved
    assert not p.verifier.verify(p, "17*23 = 381").solved


def test_numeric_tolerance_and_direction_hint():
    p = problem({"type": "numeric", "answer": 3.14159, "abs_tol": 1e-3})
    assert p.verifier.verify(p, "pi is about 3.1416").solved
    wrong = p.verifier.verify(p, "pi is 3.2")
    assert not wrong.solved and "3.14159" not in wrong.feedback and "too" not in wrong.feedback
    hinted = problem({"type": "numeric", "answer": 10, "reveal_direction": True})
    assert "too high" in hinted.verifier.verify(hinted, "12").feedback
    assert "too low" in hinted.verifier.verify(hinted, "8").feedback
    not_number = problem({"type": "numeric", "answer": 1, "extract": "answer_tag"})
    assert "not a number" in not_number.verifier.verify(not_number, "<answer>seven</answer>").feedback


def test_regex_on_answer_and_on_whole_completion():
    p = problem({"type": "regex", "pattern": r"[a-z]{5}"})
    assert p.verifier.verify(p, "<answer>hello</answer>").solved
    miss = p.verifier.verify(p, "<answer>hi</answer>")
    assert not miss.solved and "[a-z]" not in miss.feedback and "required form" in miss.feedback
    whole = problem({"type": "regex", "pattern": "lemma", "target": "completion", "full_match": False})
    assert whole.verifier.verify(whole, "by the lemma above").solved


@pytest.mark.parametrize("verifier,field", [
    ({"type": "regex", "pattern": "("}, "pattern"),
    ({"type": "numeric", "answer": "nan"}, "answer"),
    ({"type": "nope"}, "verifier"),
    ({"type": "exact"}, "answer"),
    ({"type": "exact", "answer": "1", "color": "red"}, "color"),
])
def test_bad_specs_are_rejected_naming_the_field(verifier, field):
    with pytest.raises(ValidationError) as info:
        problem(verifier)
    assert field in str(info.value)


def test_problem_needs_exactly_one_way_to_ask():
    with pytest.raises(ValidationError, match="exactly one"):
        Problem.model_validate({"verifier": {"type": "exact", "answer": "1"}})
    with pytest.raises(ValidationError, match="last message"):
        Problem.model_validate({"messages": [{"role": "assistant", "content": "hi"}],
                                "verifier": {"type": "exact", "answer": "1"}})
    p = Problem.model_validate({"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"},
                                             {"role": "user", "content": "q2"}],
                                "system_prompt": "be brief", "verifier": {"type": "exact", "answer": "1"}})
    assert [m["role"] for m in p.chat()] == ["system", "user", "assistant", "user"] and p.question == "q2"


def test_verify_attempts_turns_a_crashing_verifier_into_a_zero_reward_verdict():
    class Broken:
        def verify(self, problem, completion):
            raise RuntimeError("boom")

    p = problem({"type": "exact", "answer": "1"})
    verdicts = verify_attempts(p, ["a", "b"], verifier=Broken())
    assert verdicts == [Verdict(reward=0.0, solved=False, feedback="The verifier failed: RuntimeError: boom",
                                status="error")] * 2
