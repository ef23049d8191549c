"""The verifier pool and the verify callable the loop gets: order, parallelism, capping, routing, import rules."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sandbox_helpers import SUM_SOLUTION, block, sum_problem

from sdpo_core.problem import Problem
from sdpo_core.verification.pool import SHARED_LANE, VerifierPool
from sdpo_core.verification.verify import DEFAULT_STEP_BUDGET_S, verify_answer, verify_function
from sdpo_core.verifiers import verify_attempts
from sdpo_core.verifiers.base import FEEDBACK_MAX_CHARS
from sdpo_core.verifiers.webhook import ALLOW_PRIVATE_ENV

pytestmark = pytest.mark.sandbox  # the test tier (tests/conftest.py): it runs processes

ROOT = Path(__file__).resolve().parents[1]


def test_batch_keeps_the_order_of_the_attempts(pool):
    wrong = block("a, b = map(int, input().split())\nprint(a - b)")
    attempts = [block(SUM_SOLUTION), wrong, "no code", block(SUM_SOLUTION), wrong]
    verdicts = pool.verify_batch(sum_problem(), attempts)
    assert [v.solved for v in verdicts] == [True, False, False, True, False]
    assert verdicts[2].feedback.startswith("Incorrect Format")
    assert verdicts[1].feedback.startswith("Test Case 1: Wrong Answer")


def test_attempts_of_a_batch_run_in_parallel(monkeypatch):
    """Both attempts of a batch reach a loopback webhook at once: its handler waits for both at a barrier."""
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    barrier = threading.Barrier(2, timeout=20)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            try:
                barrier.wait()
                reply = b'{"reward": 1.0}'
            except threading.BrokenBarrierError:
                reply = b'{"reward": 0.0, "feedback": "the other attempt never came"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    problem = Problem.model_validate({"prompt": "?", "verifier": {
        "type": "webhook", "url": f"http://127.0.0.1:{server.server_address[1]}/", "secret": "s" * 16,
        "timeout_s": 30, "max_retries": 0}})
    try:
        with VerifierPool(max_workers=2) as two_workers:
            verdicts = two_workers.verify_batch(problem, ["first", "second"])
    finally:
        server.shutdown()
        server.server_close()
    assert [v.solved for v in verdicts] == [True, True], [v.feedback for v in verdicts]


def test_feedback_is_capped(pool):
    source = "def verify(c):\n    return {'reward': 0.0, 'feedback': 'x' * 100000}"
    problem = Problem.model_validate({"prompt": "?", "verifier": {"type": "python", "source": source}})
    assert len(pool.verify_batch(problem, ["a"])[0].feedback) <= FEEDBACK_MAX_CHARS


def test_every_verifier_type_runs_in_the_pool_with_the_step_budget(pool):
    """Answer types too: a regex or sympy stuck in C would otherwise hold the worker's GIL (issue 12, item 3)."""
    math_problem = Problem.model_validate({"prompt": "1+1?", "verifier": {"type": "math", "answer": "2"}})
    for problem in (math_problem, sum_problem()):
        verify = verify_function(problem, pool=pool)
        assert verify.func == pool.verify_batch
        assert verify.keywords == {"budget_s": DEFAULT_STEP_BUDGET_S, "lane": SHARED_LANE}
    assert verify_function(math_problem, pool=pool)(math_problem, ["\\boxed{2}", "\\boxed{3}"])[0].solved


def test_pool_and_in_process_agree_on_answer_types(pool):
    problem = Problem.model_validate({"prompt": "2+2?", "verifier": {"type": "exact", "answer": "4"}})
    attempts = ["<answer>4</answer>", "<answer>5</answer>", "nothing"]
    assert pool.verify_batch(problem, attempts) == verify_attempts(problem, attempts)


def test_verify_answer_for_one_attempt():
    assert verify_answer(sum_problem(), block(SUM_SOLUTION)).solved


def test_sdpo_core_never_imports_workers_or_service():
    """And the specs (shared with the light client) never import the code that runs them (sdpo_core.verification:
    processes, sandboxes, settings read from the environment)."""
    for path in (ROOT / "sdpo_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        specs = path.is_relative_to(ROOT / "sdpo_core" / "verifiers")
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("workers", "service"), f"{path} imports {name}"
                assert not (specs and name.startswith("sdpo_core.verification")), f"{path} imports {name}"


def test_spec_modules_import_without_heavy_dependencies():
    """The HTTP schemas and the client share the specs: math-verify, reasoning-gym and httpx load lazily."""
    code = ("import sys, sdpo_core; heavy = {'math_verify', 'reasoning_gym', 'sympy', 'torch', 'httpx'}"
            " & set(sys.modules); print(sorted(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
