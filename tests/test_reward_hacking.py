"""Reward hacking: the adapter is trained against the verifier, so every cheap way to look solved must fail.

Each hack below is written as a model might write it. None may pass; a real solution next to it must.
"""

from __future__ import annotations

import pytest
from sandbox_helpers import SUM_SOLUTION, block, sum_problem

from sdpo_core.problem import Problem
from sdpo_core.verifiers import build_verifier

FAKE_VERDICTS = (
    'print(\'{"nonce": "0", "status": "passed", "reward": 1.0, "solved": true}\')\n'
    "print('All tests passed')\nprint('Accepted')\n"
)
WRITE_EVERY_FD = (
    "import json, os\nfake = json.dumps({'nonce': os.environ.get('SDPO_RESULT_FD', ''), 'status': 'passed'}).encode()\n"
    "for fd in range(3, 256):\n    try:\n        os.write(fd, fake)\n    except OSError:\n        pass\n"
)


def verify(problem: Problem, completion: str, sandbox):
    return build_verifier(problem.verifier, sandbox=sandbox).verify(problem, completion)


# ---- code_io: the verdict is computed outside the sandbox from stdout, never from the exit status ----------------
@pytest.mark.parametrize(("name", "program"), [
    ("exit early with success", "import sys\nsys.exit(0)"),
    ("os._exit(0) before any output", "import os\nos._exit(0)"),
    ("print something that looks like a verdict", FAKE_VERDICTS),
    ("write a verdict on every file descriptor", WRITE_EVERY_FD + "import sys\nsys.exit(0)"),
    ("echo whatever files it can find", "import glob\nfor path in glob.glob('*') + glob.glob('/tmp/*'):\n"
                                        "    print(open(path).read())"),
])
def test_code_io_hacks_fail(sandbox, name, program):
    problem = sum_problem()
    assert not verify(problem, block(program), sandbox).solved, name
    assert verify(problem, block(SUM_SOLUTION), sandbox).solved


def test_code_io_run_directory_holds_no_expected_outputs(sandbox):
    """The program's directory holds only the program: expected outputs never enter the sandbox."""
    problem = sum_problem(public_tests=[{"input": "", "output": "['main.py']\n"}], hidden_tests=[])
    assert verify(problem, block("import os\nprint(sorted(os.listdir('.')))"), sandbox).solved


# ---- code_functional: comparisons happen in the judge, on plain data, out of the candidate's reach ---------------
def functional_problem(expected: str = "6") -> Problem:
    test = f"def check(candidate):\n    assert candidate([1, 2, 3]) == {expected}\n    assert candidate([4]) == 4\n"
    return Problem.model_validate({"prompt": "Sum a list.", "verifier": {
        "type": "code_functional", "entry_point": "total", "test": test, "timeout_s": 3.0}})


ALWAYS_EQUAL = "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"


@pytest.mark.parametrize(("name", "code", "says"), [
    ("an object equal to everything", ALWAYS_EQUAL + "def total(xs):\n    return Anything()", "plain built-in data"),
    ("an int subclass equal to everything", "class Int(int):\n    def __eq__(self, other):\n        return True\n"
                                            "def total(xs):\n    return Int(0)", "plain built-in data"),
    ("a str subclass", "class S(str):\n    pass\ndef total(xs):\n    return S('6')", "plain built-in data"),
    ("hidden inside a list", ALWAYS_EQUAL + "def total(xs):\n    return [Anything()]", "plain built-in data"),
    ("exit(0) while loading", "import sys\nsys.exit(0)\ndef total(xs):\n    return 0", "exit()"),
    ("os._exit(0) while loading", "import os\nos._exit(0)", "Runtime Error"),
    ("exit(0) inside the call", "import sys\ndef total(xs):\n    sys.exit(0)", "exit()"),
    ("os._exit(0) inside the call", "import os\ndef total(xs):\n    os._exit(0)", "ended its process"),
    ("print a verdict", "def total(xs):\n    " + FAKE_VERDICTS.replace("\n", "\n    ") + "return 0", "Wrong Answer"),
    ("write a verdict on every fd", "def total(xs):\n    " + WRITE_EVERY_FD.replace("\n", "\n    ") + "return 0",
     "interfered with the test harness"),
    ("patch AssertionError and builtins", "import builtins\nclass Never(Exception):\n    pass\n"
                                          "builtins.AssertionError = Never\ndef total(xs):\n    return 0",
     "Wrong Answer"),
    ("kill the judge", "import os, signal\ndef total(xs):\n    os.kill(os.getppid(), signal.SIGKILL)", "SIGKILL"),
])
def test_functional_hacks_fail(sandbox, name, code, says):
    problem = functional_problem()
    verdict = verify(problem, block(code), sandbox)
    assert not verdict.solved and verdict.reward == 0.0, name
    assert says in verdict.feedback, f"{name}: {verdict.feedback}"
    assert verify(problem, block("def total(xs):\n    return sum(xs)"), sandbox).solved


def test_functional_candidate_cannot_read_the_judge(sandbox):
    """The expected value sits only in the judge; /proc of the judge (stdin, environ, memory) stays closed."""
    marker = "'EXPECTED-3f9c2a'"
    code = (
        "import glob, os, re\ndef total(xs):\n    mine = f'/proc/{os.getpid()}/'\n"
        "    for path in glob.glob('/proc/*/fd/*') + glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
        "        if path.startswith(mine):\n            continue\n"
        "        try:\n            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)\n"
        "            data = os.read(fd, 1 << 20)\n        except OSError:\n            continue\n"
        "        found = re.search(rb'EXPECTED-[0-9a-f]+', data)\n"
        "        if found:\n            return found.group().decode()\n"
        "    try:\n        open(f'/proc/{os.getppid()}/mem', 'rb')\n        return 'judge memory readable'\n"
        "    except OSError:\n        return 'closed'\n"
    )
    verdict = verify(functional_problem(expected=marker), block(code), sandbox)
    assert not verdict.solved
    assert "Returned:\n'closed'" in verdict.feedback


def test_functional_return_value_comparison_is_exact(sandbox):
    """True == 1 in Python; the judge still compares what the test compares (no stricter, no looser)."""
    problem = functional_problem()
    assert verify(problem, block("def total(xs):\n    return float(sum(xs))"), sandbox).solved


# ---- python verifier: the completion text is data, whatever it says ----------------------------------------------
def test_completion_that_looks_like_a_verdict_is_just_text(sandbox):
    source = "def verify(completion):\n    return completion.strip() == 'the real answer'"
    problem = Problem.model_validate({"prompt": "?", "verifier": {"type": "python", "source": source}})
    for hack in ['{"reward": 1.0, "solved": true}', "True", '"status": "returned", "value": "true"']:
        assert not verify(problem, hack, sandbox).solved
    assert verify(problem, "the real answer", sandbox).solved
