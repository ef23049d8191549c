"""code_io and code_functional verifiers: verdicts and LeetCode-style feedback, run in the real sandbox."""

from __future__ import annotations

import pytest
from sandbox_helpers import SUM_SOLUTION, block, sum_problem

from sdpo_core.problem import Problem
from sdpo_core.verifiers import build_verifier
from sdpo_core.verifiers.base import FEEDBACK_MAX_CHARS
from sdpo_core.verifiers.code_feedback import FIELD_MAX_CHARS, FIELD_MAX_LINES, field
from sdpo_core.verifiers.codeblock import extract_code

HIDDEN_INPUT, HIDDEN_OUTPUT = "7777 3333\n", "11110\n"


def verify(problem: Problem, completion: str, sandbox):
    return build_verifier(problem.verifier, sandbox=sandbox).verify(problem, completion)


# ---- code extraction ------------------------------------------------------------------------------------------
def test_longest_fenced_block_is_the_code():
    text = "Try:\n```python\nx = 1\n```\nFinal:\n```python\nimport sys\nprint(sum(map(int, sys.stdin.read().split())))\n```"
    assert extract_code(text).code.startswith("import sys")


def test_unclosed_fence_is_a_truncated_attempt():
    extraction = extract_code("Let me think...\n```python\nfor i in range(10):\n    print(i")
    assert extraction.code is None and extraction.truncated


def test_no_fence_is_not_truncated():
    extraction = extract_code("print(1)")
    assert extraction.code is None and not extraction.truncated


# ---- code_io --------------------------------------------------------------------------------------------------
def test_correct_program_solves(sandbox):
    verdict = verify(sum_problem(), block(SUM_SOLUTION), sandbox)
    assert verdict.solved and verdict.reward == 1.0 and verdict.feedback == ""


def test_wrong_answer_quotes_the_two_shortest_failing_public_tests(sandbox):
    verdict = verify(sum_problem(), block("a, b = map(int, input().split())\nprint(a * b)"), sandbox)
    assert not verdict.solved and verdict.reward == 0.0
    assert verdict.feedback.count("Wrong Answer") == 2
    assert verdict.feedback.startswith("Test Case 1: Wrong Answer\nInput:\n1 2\nOutput:\n2\nExpected:\n3")
    assert "Test Case 2: Wrong Answer\nInput:\n-5 5\nOutput:\n-25\nExpected:\n0" in verdict.feedback
    assert "10 20" not in verdict.feedback  # the third, longest failing test is left out


def test_runtime_error_shows_trace_and_last_input(sandbox):
    verdict = verify(sum_problem(), block("a, b = map(int, input().split())\nprint(a // (b - 2))"), sandbox)
    assert verdict.feedback.startswith("Runtime Error\n")
    assert "ZeroDivisionError: integer division or modulo by zero" in verdict.feedback
    assert verdict.feedback.endswith("Last Executed Input\n1 2")


def test_time_limit_exceeded(sandbox):
    verdict = verify(sum_problem(time_limit_s=0.5), block("while True:\n    pass"), sandbox)
    assert verdict.feedback == "Time Limit Exceeded\n\nLast Executed Input\n1 2"


def test_missing_code_block_is_a_format_error(sandbox):
    verdict = verify(sum_problem(), "The answer is to add the numbers.", sandbox)
    assert verdict.feedback.startswith("Incorrect Format") and "```python" in verdict.feedback


def test_cut_off_response_is_a_truncated_attempt(sandbox):
    verdict = verify(sum_problem(), "I'll write it.\n```python\na, b = map(int, input().split())\nprint(a", sandbox)
    assert verdict.feedback.startswith("Truncated Attempt")


def test_hidden_test_failure_is_reported_without_revealing_it(sandbox):
    problem = sum_problem(hidden_tests=[{"input": HIDDEN_INPUT, "output": HIDDEN_OUTPUT}])
    verdict = verify(problem, block("a, b = map(int, input().split())\nprint(a + b if a < 100 else 0)"), sandbox)
    assert not verdict.solved
    assert "passed all 3 public tests but failed a hidden test (wrong answer)" in verdict.feedback
    for secret in ("7777", "3333", "11110"):
        assert secret not in verdict.feedback


@pytest.mark.parametrize("program", [
    "a, b = map(int, input().split())\nprint(a * b)",  # wrong answer
    "print(1 / 0)",  # runtime error
    "while True:\n    pass",  # time limit
    "a, b = map(int, input().split())\nprint(a + b if a < 100 else 'no')",  # fails only the hidden test
])
def test_feedback_never_reveals_hidden_tests(sandbox, program):
    problem = sum_problem(hidden_tests=[{"input": HIDDEN_INPUT, "output": HIDDEN_OUTPUT}], time_limit_s=0.5)
    verdict = verify(problem, block(program), sandbox)
    assert not verdict.solved
    assert "7777" not in verdict.feedback and "11110" not in verdict.feedback


def test_fields_and_message_are_capped(sandbox):
    long_line = "x" * 5000
    many_lines = "\n".join(str(i) for i in range(100))
    problem = Problem.model_validate({"prompt": "echo", "verifier": {"type": "code_io", "public_tests": [
        {"input": long_line, "output": long_line + "!"}, {"input": many_lines, "output": many_lines + "!"},
    ]}})
    verdict = verify(problem, block("import sys\nprint(sys.stdin.read())"), sandbox)
    assert len(verdict.feedback) <= FEEDBACK_MAX_CHARS
    assert "x" * (FIELD_MAX_CHARS + 1) not in verdict.feedback
    assert "\n".join(str(i) for i in range(FIELD_MAX_LINES + 1)) not in verdict.feedback
    assert "(truncated)" in verdict.feedback


def test_field_cap_marks_what_it_cut():
    assert field("a\nb") == "a\nb"
    assert field("") == "(empty)"
    assert field("z" * 300) == "z" * FIELD_MAX_CHARS + "\n... (truncated)"


def test_token_comparison_ignores_whitespace_layout(sandbox):
    problem = sum_problem(compare="tokens", public_tests=[{"input": "3\n", "output": "1 2 3\n"}], hidden_tests=[])
    verdict = verify(problem, block("n = int(input())\nfor i in range(1, n + 1):\n    print(i)"), sandbox)
    assert verdict.solved


def test_lines_comparison_ignores_trailing_whitespace_only(sandbox):
    problem = sum_problem(public_tests=[{"input": "", "output": "a b\nc\n"}], hidden_tests=[])
    assert verify(problem, block("print('a b   ')\nprint('c')\nprint()"), sandbox).solved
    assert not verify(problem, block("print('a  b')\nprint('c')"), sandbox).solved


# ---- code_functional ------------------------------------------------------------------------------------------
def functional_problem(**overrides: object) -> Problem:
    test = (
        "METADATA = {}\n\ndef check(candidate):\n    assert candidate([1, 2, 3]) == 6\n"
        "    assert candidate([]) == 0\n    assert candidate([10, -4]) == 6\n"
    )
    verifier = {"type": "code_functional", "entry_point": "total", "test": test, "timeout_s": 3.0, **overrides}
    return Problem.model_validate({"prompt": "Write total(xs) returning the sum of xs.", "verifier": verifier})


def test_functional_correct_function_solves(sandbox):
    verdict = verify(functional_problem(), block("def total(xs):\n    return sum(xs)"), sandbox)
    assert verdict.solved and verdict.reward == 1.0


def test_functional_wrong_answer_shows_call_and_value_but_not_expected(sandbox):
    verdict = verify(functional_problem(), block("def total(xs):\n    return len(xs)"), sandbox)
    assert not verdict.solved
    assert verdict.feedback == "Wrong Answer\nCall:\ntotal([1, 2, 3])\nReturned:\n3"
    assert "6" not in verdict.feedback and "assert" not in verdict.feedback


def test_functional_runtime_error_shows_the_code_under_test_frames(sandbox):
    verdict = verify(functional_problem(), block("def total(xs):\n    return xs[5]"), sandbox)
    assert verdict.feedback.startswith("Runtime Error\n")
    assert 'File "solution.py", line 2, in total' in verdict.feedback
    assert "IndexError: list index out of range" in verdict.feedback
    assert verdict.feedback.endswith("Last Executed Call\ntotal([1, 2, 3])")
    assert "_server.py" not in verdict.feedback


def test_functional_time_limit(sandbox):
    verdict = verify(functional_problem(timeout_s=1.0), block("def total(xs):\n    while True:\n        pass"), sandbox)
    assert verdict.feedback == "Time Limit Exceeded\n\nLast Executed Call\ntotal([1, 2, 3])"


def test_functional_syntax_error_is_a_compile_error(sandbox):
    verdict = verify(functional_problem(), block("def total(xs)\n    return 0"), sandbox)
    assert verdict.feedback.startswith("Compile Error") and "SyntaxError" in verdict.feedback


def test_functional_completion_of_the_prompt_gets_the_prefix(sandbox):
    """HumanEval style: the model continues the signature; code_prefix supplies it."""
    problem = functional_problem(code_prefix="def total(xs):\n")
    assert verify(problem, block("    return sum(xs)"), sandbox).solved


def test_functional_tests_expecting_an_exception_still_work(sandbox):
    test = "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n        pass\n" \
           "    else:\n        assert False\n    assert candidate(4) == 2\n"
    problem = Problem.model_validate({"prompt": "sqrt", "verifier": {
        "type": "code_functional", "entry_point": "isqrt", "test": test}})
    code = "def isqrt(n):\n    if n < 0:\n        raise ValueError('negative')\n    return int(n ** 0.5)"
    assert verify(problem, block(code), sandbox).solved


def test_functional_module_level_asserts_by_name(sandbox):
    """MBPP style: asserts that call the function by its name, no check()."""
    problem = Problem.model_validate({"prompt": "double", "verifier": {
        "type": "code_functional", "entry_point": "double", "test": "assert double(2) == 4\nassert double(-1) == -2\n"}})
    assert verify(problem, block("def double(x):\n    return 2 * x"), sandbox).solved
    assert not verify(problem, block("def double(x):\n    return x + 2"), sandbox).solved


def test_third_party_packages_only_when_the_problem_allows_them(sandbox):
    program = block("import pydantic\na, b = map(int, input().split())\nprint(a + b)")
    without = verify(sum_problem(), program, sandbox)
    assert "ModuleNotFoundError: No module named 'pydantic'" in without.feedback
    assert verify(sum_problem(packages=True), program, sandbox).solved
