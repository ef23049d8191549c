"""The checklist verifier: requirements on an answer's text, feedback that names each unmet one (or the first, or
inside a test-runner or build log)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from sdpo_core.problem import Problem
from sdpo_core.verifiers import verify_attempts
from sdpo_core.verifiers.base import FEEDBACK_MAX_CHARS

SDPO = str(Path(sys.executable).parent / "sdpo")


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


def test_a_list_of_words_is_one_check_any_word_meets_contains_and_excludes_names_those_used():
    topic = checklist({"kind": "contains", "text": ["sea", "ocean"]})
    assert verdict(topic, "Waves roll in from the open sea.").solved
    assert verdict(topic, "A seal sleeps.").feedback == "The answer must use one of the words 'sea', 'ocean'."
    meta = checklist({"kind": "excludes", "text": ["answer", "attempt", "feedback"]})
    assert verdict(meta, "Waves roll in from the open sea.").solved
    v = verdict(meta, "My answer to the feedback: waves.")
    assert v.feedback == "The answer must not use the words 'answer', 'feedback'." and v.reward == 0.0
    with pytest.raises(ValidationError, match="1 to 50 words"):
        checklist({"kind": "excludes", "text": []})


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


# ---- report: "first" and log-like feedback (issue 16: the accumulate family) ----------------------------------

WORDS = ("lighthouse", "seagull", "anchor")


def hidden_words(**options) -> Problem:
    return checklist(*({"kind": "contains", "text": w} for w in WORDS), report="first", **options)


def test_report_first_names_only_the_first_unmet_check_in_the_lists_order():
    p = hidden_words()
    none = verdict(p, "The sea was calm.")
    assert none.feedback == "The answer must use the word 'lighthouse'."
    assert none.reward == 0.0 and not none.solved
    second = verdict(p, "A lighthouse watched the calm sea.")
    assert second.feedback == "The answer must use the word 'seagull'."
    assert second.reward == pytest.approx(1 / 3)  # the reward still counts every check passed
    assert verdict(p, "A seagull and a lighthouse.").feedback == "The answer must use the word 'anchor'."
    solved = verdict(p, "A seagull sat on the anchor below the lighthouse.")
    assert solved.solved and solved.reward == 1.0 and solved.feedback == ""
    assert verdict(checklist(*({"kind": "contains", "text": w} for w in WORDS)), "Sea.").feedback.count("must") == 3


def test_all_requirements_states_every_check_without_an_attempt():
    p = checklist({"kind": "contains", "text": "candles"}, {"kind": "number", "min": 6, "max": 9, "unit": "cm"},
                  {"kind": "excludes", "text": "very"}, {"kind": "words", "max": 12},
                  {"kind": "contains", "text": "cake", "feedback": "Say what was eaten."}, report="first")
    assert p.verifier.all_requirements() == (
        "The answer must use the word 'candles'. The answer's first number must be between 6 and 9 in cm. "
        "The answer must not use the word 'very'. The answer must have at most 12 words. Say what was eaten.")


@pytest.mark.parametrize("fmt", ["test_log", "build_log"])
def test_log_feedback_carries_only_the_first_unmet_requirement(fmt):
    p = hidden_words(feedback_format=fmt)
    v = verdict(p, "A lighthouse watched the calm sea.")
    assert not v.solved and v.reward == pytest.approx(1 / 3)
    assert "The answer must use the word 'seagull'." in v.feedback
    assert "lighthouse" not in v.feedback and "anchor" not in v.feedback  # nothing about other requirements
    assert 800 <= len(v.feedback) <= FEEDBACK_MAX_CHARS  # a few hundred tokens, inside the service's cap
    assert len(v.feedback.splitlines()) >= 15
    assert verdict(p, "A lighthouse on a rock.").feedback == v.feedback  # same requirement, same text
    assert verdict(p, "The sea.").feedback != v.feedback
    assert verdict(p, "A seagull sat on the anchor below the lighthouse.").solved


def test_log_feedback_depends_on_the_problem_not_on_chance():
    first = hidden_words(feedback_format="test_log")
    other = Problem.model_validate({**first.model_dump(), "prompt": "Write one sentence about a harbour."})
    text = "The sea was calm."
    assert verdict(first, text).feedback == verdict(first, text).feedback
    assert verdict(other, text).feedback != verdict(first, text).feedback
    assert "The answer must use the word 'lighthouse'." in verdict(other, text).feedback


@pytest.mark.parametrize("fmt", ["test_log", "build_log"])
def test_a_long_message_keeps_whole_and_the_log_fits_the_cap(fmt):
    message = "Requirement: " + "mention the harbour master by name and rank " * 10
    p = checklist({"kind": "contains", "text": "harbour", "feedback": message.strip()}, report="first",
                  feedback_format=fmt)
    v = verdict(p, "The sea.")
    assert message.strip() in v.feedback and len(v.feedback) <= FEEDBACK_MAX_CHARS


def test_report_all_in_a_log_names_every_failed_check():
    p = checklist(*({"kind": "contains", "text": w} for w in WORDS), feedback_format="build_log")
    v = verdict(p, "A seagull.")
    assert "'lighthouse'" in v.feedback and "'anchor'" in v.feedback and "'seagull'" not in v.feedback
    assert len(v.feedback) <= FEEDBACK_MAX_CHARS


def test_unknown_report_and_format_are_refused_naming_the_field():
    with pytest.raises(ValidationError, match="report"):
        checklist({"kind": "contains", "text": "owl"}, report="last")
    with pytest.raises(ValidationError, match="feedback_format"):
        checklist({"kind": "contains", "text": "owl"}, feedback_format="xml")


def test_sdpo_verify_reports_the_first_requirement_inside_the_log(tmp_path):
    problem = tmp_path / "problem.json"
    problem.write_text(json.dumps({"prompt": "Write one sentence about the sea.", "verifier": {
        "type": "checklist", "report": "first", "feedback_format": "test_log",
        "checks": [{"kind": "contains", "text": w} for w in WORDS]}}))
    (tmp_path / "wrong.txt").write_text("A lighthouse watched the calm sea.")
    (tmp_path / "right.txt").write_text("A seagull sat on the anchor below the lighthouse.")
    wrong = subprocess.run([SDPO, "verify", str(problem), str(tmp_path / "wrong.txt")], capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 1, wrong.stderr
    feedback = json.loads(wrong.stdout)["feedback"]
    assert "AssertionError: The answer must use the word 'seagull'." in feedback and "anchor" not in feedback
    right = subprocess.run([SDPO, "verify", str(problem), str(tmp_path / "right.txt")], capture_output=True,
                           text=True, timeout=120)
    assert right.returncode == 0 and json.loads(right.stdout)["solved"] is True


# ---- the demo's problem (issue 21): what a person means by a sentence about a farm, not only a word ----------------
DEMO = Path(__file__).resolve().parent.parent / "examples" / "farm-tractor.json"


@pytest.mark.parametrize("text,solved", [
    ("An old red tractor rumbles past the barn as the farmer waves from the field.", True),
    ("Tractors pull the ploughs across the farm before the spring rain.", True),
    # meta-talk a 135M model writes with the feedback in its prompt (the old demo's verified solution)
    ('The answer to certianly the previous attempt seems to be correctly putting the word "tractor" into farm.', False),
    ("The farm is not a tractor. The incorrect answer is in a list and not in a question.", False),
    ("A tractor.", False),  # too short to be a sentence about a farm
    ("The tractor was most likely utilized for drafting purposes.", False),  # off the topic
    ("A farm sits on the hill where cows graze in the sun.", False),  # no tractor
])
def test_the_demo_checklist_accepts_a_plain_sentence_on_the_farm_and_rejects_talk_about_the_task(
        tmp_path, text, solved):
    answer = tmp_path / "answer.txt"
    answer.write_text(text)
    proc = subprocess.run([SDPO, "verify", str(DEMO), str(answer)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == (0 if solved else 1), proc.stderr
    assert json.loads(proc.stdout)["solved"] is solved
