"""No verifier runs in the caller, every verification has a hard time limit, catastrophic math is refused, and a batch's
verification has a budget that it shares fairly (issue 12, items 3 and 8)."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import ValidationError
from sandbox_helpers import SUM_SOLUTION, block, sum_problem

from sdpo_core.problem import Problem
from sdpo_core.verification.pool import VerifierPool
from sdpo_core.verification.verify import verify_function

pytestmark = pytest.mark.sandbox  # the test tier (tests/conftest.py): it runs processes

CATASTROPHIC = Problem.model_validate({"prompt": "Say it.", "verifier": {
    "type": "regex", "pattern": "(.|.)*Q", "target": "completion"}})


@pytest.fixture(scope="module")
def short_pool():
    """Two processes, a 3 s hard limit per verification."""
    with VerifierPool(max_workers=2, task_timeout_s=3.0) as pool:
        yield pool


@pytest.mark.timeout(120)
def test_a_backtracking_regex_is_stopped_by_the_hard_limit_not_run_in_the_caller(short_pool):
    """(.|.)*Q on 200 characters is 2^200 paths; it runs in a pool process that is killed at the limit."""
    verify = verify_function(CATASTROPHIC, pool=short_pool)
    verdicts = verify(CATASTROPHIC, ["a" * 200, "a" * 10 + "Q"])
    assert not verdicts[0].solved and "did not finish within 3 s" in verdicts[0].feedback
    assert verdicts[1].solved
    assert verify(CATASTROPHIC, ["bQ"])[0].solved  # the pool replaced the killed process


@pytest.mark.timeout(120)
def test_the_caller_keeps_running_python_while_a_verification_hangs(short_pool):
    """The thread that waits for a verdict holds no GIL: another thread (the worker's event loop, its lease
    heartbeat) keeps ticking the whole time."""
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.05)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        verify_function(CATASTROPHIC, pool=short_pool)(CATASTROPHIC, ["a" * 200])
    finally:
        stop.set()
        ticker.join()
    during = [t for t in ticks if t > started]
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert len(during) > 20 and max(gaps) < 1.0, f"{len(during)} ticks, longest gap {max(gaps, default=0):.2f} s"


@pytest.mark.parametrize("answer", ["9^{9^{9}}", "9^9^9", "2^{387420489}", "100000!"])
def test_a_gold_answer_that_cannot_be_evaluated_is_refused_naming_the_field(answer):
    with pytest.raises(ValidationError) as caught:
        Problem.model_validate({"prompt": "?", "verifier": {"type": "math", "answer": answer}})
    error = caught.value.errors()[0]
    assert error["loc"] == ("verifier", "math", "answer") and "not accepted" in error["msg"]


def test_symbolic_towers_and_ordinary_powers_are_accepted():
    for answer in ("e^{-x^2/2}", "2^{10}", "{9^9}^9", "\\frac{1}{2}", "10^{100000}", "10000!"):
        Problem.model_validate({"prompt": "?", "verifier": {"type": "math", "answer": answer}})


@pytest.mark.timeout(120)
def test_a_power_tower_in_an_attempt_is_not_evaluated():
    """The screen, not the pool's limit, stops the tower: evaluated, it would take minutes, so a 30 s limit
    (room for a loaded machine's first sympy import) would end it as a timeout, not with this feedback."""
    problem = Problem.model_validate({"prompt": "?", "verifier": {"type": "math", "answer": "2"}})
    with VerifierPool(max_workers=2, task_timeout_s=30.0) as pool:
        tower, good = verify_function(problem, pool=pool)(problem, ["\\boxed{9^{9^{9}}}", "\\boxed{2}"])
    assert not tower.solved and "power tower" in tower.feedback and "not evaluated" in tower.feedback
    assert good.solved


def test_a_batch_that_overruns_its_budget_marks_the_rest_not_run():
    """Four attempts that each take their full 4 s time limit, one (warm) process, an 8 s budget: the first is
    checked (Time Limit Exceeded), the one running when the budget ends is stopped, the others never start; those
    are `not_run`, never a wrong answer."""
    slow = block("import time\ntime.sleep(60)")
    with VerifierPool(max_workers=1) as pool:
        assert pool.verify_batch(sum_problem(), [block(SUM_SOLUTION)])[0].solved
        verdicts = pool.verify_batch(sum_problem(time_limit_s=4.0), [slow] * 4, budget_s=8.0)
        assert "Time Limit Exceeded" in verdicts[0].feedback and verdicts[0].status == "rejected"
        assert all(v.feedback.startswith("Not verified: the verification budget of this step (8 s)")
                   and v.status == "not_run" for v in verdicts[1:]), [v.feedback for v in verdicts]
        assert pool.verify_batch(sum_problem(), [block(SUM_SOLUTION)], budget_s=60)[0].solved


def test_a_slow_verifier_holds_only_its_own_lane():
    """Job A's attempts each hold a process for 20 s; job B verifies 16 correct answers on the same pool, in its
    own lane, while A's are pending: every one of B's answers is scored solved, and B's batch is done while A's is
    still running (issue 17, item 2)."""
    slow = block("import time\ntime.sleep(60)")
    with VerifierPool(max_workers=2) as pool:
        a = threading.Thread(target=pool.verify_batch, args=(sum_problem(time_limit_s=20.0), [slow] * 8),
                             kwargs={"budget_s": 60, "lane": "job-a"})
        a.start()
        time.sleep(1.0)  # A's processes are busy
        verdicts = pool.verify_batch(sum_problem(), [block(SUM_SOLUTION)] * 16, budget_s=60, lane="job-b")
        a_still_running = a.is_alive()
        assert sorted(pool.lanes) == ["job-a", "job-b"]
        pool.close_lane("job-a")  # its job ended: its processes stop, its pending attempts end
        a.join(timeout=30)
    assert [v.status for v in verdicts] == ["ok"] * 16, [v.feedback for v in verdicts]
    assert a_still_running
    assert not a.is_alive()


def test_a_process_that_fails_to_start_is_not_run_and_the_next_call_starts_one(monkeypatch):
    """A verifier process whose start fails (no processes left) leaves its attempt `not_run`, and the pool slot
    is not broken: the next verification starts a process and checks the answer."""
    from multiprocessing.process import BaseProcess

    real_start, failures = BaseProcess.start, []

    def start_once_failing(process):
        if not failures:
            failures.append(process)
            raise OSError(11, "Resource temporarily unavailable")
        return real_start(process)

    monkeypatch.setattr(BaseProcess, "start", start_once_failing)
    with VerifierPool(max_workers=1) as pool:
        [first] = pool.verify_batch(sum_problem(), [block(SUM_SOLUTION)])
        [second] = pool.verify_batch(sum_problem(), [block(SUM_SOLUTION)])
    assert first.status == "not_run" and "could not start" in first.feedback
    assert second.solved
