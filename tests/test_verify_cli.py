"""`sdpo verify PROBLEM.json ANSWER.txt` as a user runs it: a subprocess, JSON on stdout, the exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_core.problem import Problem
from sdpo_core.verification.verify import verify_answer

pytestmark = pytest.mark.sandbox  # the test tier (tests/conftest.py): it runs processes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SDPO = str(Path(sys.executable).parent / "sdpo")


def sdpo_verify(problem: str | Path, answer: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SDPO, "verify", str(problem), str(answer)], capture_output=True, text=True, input=stdin,
                          cwd=ROOT, timeout=120)


def test_known_answer_is_solved():
    done = sdpo_verify("examples/code_io_lis.json", "examples/answers/code_io_lis.txt")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reward": 1.0, "solved": True, "feedback": "", "answer": None}


def test_wrong_answer_prints_feedback_and_exits_1(tmp_path):
    answer = tmp_path / "answer.txt"
    answer.write_text("```python\nn = int(input())\nprint(n)\n```\n")
    done = sdpo_verify(EXAMPLES / "code_io_lis.json", answer)
    assert done.returncode == 1
    verdict = json.loads(done.stdout)
    assert verdict["reward"] == 0.0 and verdict["solved"] is False
    assert verdict["feedback"].startswith("Test Case 1: Wrong Answer\nInput:\n")


def test_answer_from_stdin():
    done = sdpo_verify(EXAMPLES / "math_roots.json", "-", stdin="so the answer is \\boxed{18}")
    assert done.returncode == 1
    assert json.loads(done.stdout)["answer"] == "18"


@pytest.mark.parametrize(("problem", "names"), [
    ('{"prompt": "x", "verifier": {"type": "telepathy"}}', "verifier: Input tag 'telepathy'"),
    ('{"prompt": "x", "verifier": {"type": "code_io", "public_tests": [{"input": "1"}]}}',
     "verifier.code_io.public_tests.0.output: Field required"),
    ('{"prompt": "x", "verifier": {"type": "python", "source": "x = 1"}}', "verifier.python.source"),
    ('{"prompt": "x", "verifier": ', "not valid JSON"),
])
def test_bad_problem_gives_one_line_naming_the_field(tmp_path, problem, names):
    (tmp_path / "problem.json").write_text(problem)
    (tmp_path / "answer.txt").write_text("42")
    done = sdpo_verify(tmp_path / "problem.json", tmp_path / "answer.txt")
    assert done.returncode == 2 and done.stdout == ""
    assert names in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_answer_file(tmp_path):
    done = sdpo_verify(EXAMPLES / "math_roots.json", tmp_path / "nope.txt")
    assert done.returncode == 2 and "nope.txt: no such file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES.glob("*.json")))
def test_every_example_is_valid_and_its_known_answer_solves(example):
    problem = Problem.model_validate_json((EXAMPLES / f"{example}.json").read_text())
    answer = EXAMPLES / "answers" / f"{example}.txt"
    if answer.exists():
        verdict = verify_answer(problem, answer.read_text())
        assert verdict.solved, verdict.feedback
