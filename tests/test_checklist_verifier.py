"""The checklist verifier: requirements on an answer's text, feedback that names each unmet one."""

import pytest
from pydantic import ValidationError

from sdpo_core.problem import Problem
from sdpo_core.verifiers import verify_attempts


def checklist(*checks: dict, **options) -> Problem:
    return Problem.model_validate({"prompt": "Write one sentence.",
                                   "verifier": {"type": "checklist", "checks": list(checks), **options}})


def verdict(problem: Problem, text: str):
    return verify_attempts(problem, [text])[0]


def test_contains_matches_whole_words_and_names_the_missing_word():
    p = checklist({"kind": "contains", "text": "owl"})
    assert verdict(p, "An Owl hooted in the dark.").solved
    missing = verdict(p, "A bowl of soup sat on the table.")
    assert not missing.solved and missing.reward == 0.0
    assert missing.feedback == "The answer must use the word 'owl'."


def test_phrases_allow_any_whitespace_and_custom_feedback_replaces_the_default():
    p = checklist({"kind": "contains", "text": "Marie Curie", "feedback": "The scientist must be Marie Curie."})
    assert verdict(p, "Marie\n  Curie discovered polonium.").solved
    assert verdict(p, "Isaac Newton found gravity.").feedback == "The scientist must be Marie Curie."


def test_excludes():
    p = checklist({"kind": "excludes", "text": "very"})
    assert verdict(p, "Every day is sunny.").solved
    assert verdict(p, "It is very sunny.").feedback == "The answer must not use the word 'very'."


@pytest.mark.parametrize("text,feedback", [
    ("The door is 200 cm tall.", ""),
    ("The door is 2 meters tall.", "The number must be given in cm."),
    ("The door is 300 cm tall.", "The number must be at most 250 (it is 300)."),
    ("The door is 90cm tall.", "The number must be at least 180 (it is 90)."),
    ("A tall door.", "The answer must contain a number."),
])
def test_number_with_unit_and_range(text, feedback):
    v = verdict(checklist({"kind": "number", "unit": "cm", "min": 180, "max": 250}), text)
    assert v.feedback == feedback and v.solved == (feedback == "")


def test_every_failed_check_is_named_and_the_reward_is_the_share_passed():
    p = checklist({"kind": "contains", "text": "lighthouse"}, {"kind": "words", "max": 5},
                  {"kind": "excludes", "text": "boat"})
    v = verdict(p, "The calm blue ocean stretched far beyond the horizon.")
    assert v.feedback == "The answer must use the word 'lighthouse'. The answer has 9 words; at most 5 are allowed."
    assert v.reward == pytest.approx(1 / 3) and not v.solved
    strict = checklist({"kind": "contains", "text": "lighthouse"}, {"kind": "words", "max": 50},
                       partial_credit=False)
    assert verdict(strict, "The ocean.").reward == 0.0


def test_bad_specs_are_refused_with_the_reason():
    with pytest.raises(ValidationError, match="min .* is larger than max"):
        checklist({"kind": "number", "min": 10, "max": 1})
    with pytest.raises(ValidationError, match="checks"):
        checklist()
    with pytest.raises(ValidationError):
        checklist({"kind": "regex", "text": "(a|a)*"})  # no user patterns: nothing here can stall a worker
