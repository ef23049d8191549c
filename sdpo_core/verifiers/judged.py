"""Running a judge script in the sandbox and reading its verdict from the result channel, checked by a nonce.

The nonce is fresh per run and only the judge learns it (on stdin, before the code under test starts), so a
verdict printed by the code under test, or written where it guesses the channel is, never counts.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from sdpo_core.verifiers.harness import judge_script, server_script
from sdpo_core.verifiers.sandbox import RunLimits, RunResult, Sandbox

logger = logging.getLogger(__name__)

JUDGE_STARTUP_S = 3.0  # two interpreter starts (judge and child) on a loaded machine, on top of the verifier's limit


def run_judge(
    sandbox: Sandbox, judge: str, payload: Mapping[str, Any], files: Mapping[str, str], limits: RunLimits
) -> tuple[dict[str, Any] | None, RunResult]:
    """Run judge script `judge` on `payload`; its outcome (None when it gave none) and the raw run."""
    nonce = secrets.token_hex(16)
    run = sandbox.run_python(
        judge_script(judge),
        stdin=json.dumps({**payload, "nonce": nonce}),
        files={**files, "_server.py": server_script()},
        limits=limits,
    )
    outcome = read_outcome(run.result, nonce)
    if outcome is None:
        logger.warning("judge %s gave no verdict (%s); stderr tail: %s", judge, run.describe(), run.stderr[-500:])
    return outcome, run


def read_outcome(text: str | None, nonce: str) -> dict[str, Any] | None:
    """The judge's JSON object if it carries this run's nonce, else None."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not hmac.compare_digest(str(data.get("nonce", "")), nonce):
        return None
    return data


def no_verdict(run: RunResult, what: str) -> str:
    """Feedback for a judge that ended without a verdict."""
    if run.timed_out:
        return f"Time Limit Exceeded: {what} did not finish within {run.limits.wall_s:g} s."
    return f"{what} ended without a verdict: {run.describe()}."


def judge_limits(timeout_s: float, memory_mb: int) -> RunLimits:
    return RunLimits(wall_s=timeout_s + JUDGE_STARTUP_S, cpu_s=timeout_s + JUDGE_STARTUP_S, memory_mb=memory_mb)


def judge_worst_case_s(timeout_s: float) -> float:
    """The worst case of one judged run of a spec with `timeout_s`: its wall clock and start-up, with room."""
    return timeout_s * 1.5 + 5.0
