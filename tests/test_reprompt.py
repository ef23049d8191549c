"""Self-teacher reprompting: the reference templates, which attempts get which context, and safe shortening."""

import pytest

from sdpo_core.problem import Problem
from sdpo_core.reprompt import (
    INSTRUCTION,
    AttemptOutcome,
    fit_prompt,
    multi_turn_prompt,
    reprompt_text,
    strip_thinking,
    teacher_sections,
)
from sdpo_core.settings import SDPOSettings


@pytest.fixture
def problem():
    return Problem.model_validate({"prompt": "What is 2+2?", "system_prompt": "Be brief.",
                                   "verifier": {"type": "numeric", "answer": 4}})


def test_reprompt_text_is_the_reference_template():
    assert reprompt_text("Q", None, "wrong") == (
        "Q\nThe following is feedback from your unsuccessful earlier attempt:\n\nwrong\n\n"
        "\n\nCorrectly solve the original question.\n"
    )
    assert reprompt_text("Q", "sol", None) == "Q\nCorrect solution:\n\nsol\n\n\n\nCorrectly solve the original question.\n"
    assert reprompt_text("Q", "sol", "fb").index("Correct solution") < reprompt_text("Q", "sol", "fb").index("feedback")


def outcome(text, reward, feedback=""):
    return AttemptOutcome(text=text, reward=reward, feedback=feedback)


def test_failed_attempts_get_a_sibling_solution_and_the_success_never_its_own():
    settings = SDPOSettings()
    outcomes = [outcome("wrong 5", 0.0, "5 is incorrect"), outcome("<think>hmm</think>it is 4", 1.0),
                outcome("also 4", 1.0), outcome("wrong 3", 0.0, "3 is incorrect")]
    sections = teacher_sections(outcomes, settings)
    assert sections[0] == ("it is 4", None)  # first success, thinking stripped; feedback dropped (has a solution)
    assert sections[1] == ("also 4", None)  # a success is taught by the *other* success
    assert sections[2] == ("it is 4", None)
    assert sections[3] == ("it is 4", None)


def test_lone_success_and_feedbackless_failures_get_no_context():
    outcomes = [outcome("4", 1.0), outcome("x", 0.0, ""), outcome("y", 0.0, "y is wrong")]
    sections = teacher_sections(outcomes, SDPOSettings())
    assert sections[0] is None  # own success is never its demonstration, and there is no other
    assert sections[1] == ("4", None)
    no_success = teacher_sections([outcome("x", 0.0, ""), outcome("y", 0.0, "y is wrong")], SDPOSettings())
    assert no_success == [None, (None, "y is wrong")]


def test_feedback_with_solution_when_gating_is_off_and_no_feedback_when_disabled():
    outcomes = [outcome("4", 1.0), outcome("5", 0.0, "5 is wrong")]
    both = teacher_sections(outcomes, SDPOSettings(feedback_only_without_solution=False))
    assert both[1] == ("4", "5 is wrong")
    none = teacher_sections([outcome("5", 0.0, "5 is wrong")], SDPOSettings(include_feedback=False))
    assert none == [None]


def test_strip_thinking():
    assert strip_thinking("<think>a\nb</think>\n answer") == "answer"


def test_teacher_prompt_uses_chat_template_and_keeps_system_prompt(tiny_policy, problem):
    ids = fit_prompt(problem, tiny_policy.chat_ids, 4096, None, "5 is wrong")
    text = tiny_policy.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "What is 2+2?\nThe following is feedback" in text
    assert text.endswith(INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n")


def test_over_long_reprompt_is_shortened_in_the_feedback_never_the_instruction(tiny_policy, problem):
    long_feedback = "Wrong answer on test 1. " * 200
    full = fit_prompt(problem, tiny_policy.chat_ids, 100_000, None, long_feedback)
    ids = fit_prompt(problem, tiny_policy.chat_ids, 300, None, long_feedback)
    text = tiny_policy.tokenizer.decode(ids)
    assert len(full) > 300 >= len(ids) > 250  # shortened to fit, not more than needed
    assert "...[shortened]" in text and "What is 2+2?" in text
    assert text.endswith(INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n")


def test_over_long_demonstration_is_shortened_after_the_feedback(tiny_policy, problem):
    ids = fit_prompt(problem, tiny_policy.chat_ids, 200, "4 " * 500, None)
    text = tiny_policy.tokenizer.decode(ids)
    assert len(ids) <= 200 and "Correct solution" in text and text.endswith("<|im_start|>assistant\n")


def test_multi_turn_drops_oldest_feedback_first(tiny_policy, problem):
    feedbacks = [f"feedback number {i} " + "x" * 40 for i in range(20)]
    ids = multi_turn_prompt(problem, tiny_policy.chat_ids, feedbacks, 400)
    text = tiny_policy.tokenizer.decode(ids)
    assert len(ids) <= 400
    assert "feedback number 19" in text and "feedback number 0 " not in text
    assert text.endswith(INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n")
    assert multi_turn_prompt(problem, tiny_policy.chat_ids, [], 400) == tiny_policy.chat_ids(problem.chat())
