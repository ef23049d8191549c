"""Integration: a short SDPO loop and `sdpo solve` on the real offline default model, SmolLM2-135M-Instruct."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parent.parent / "examples"


def test_short_sdpo_loop_on_smollm2(smollm2_policy):
    problem = Problem.model_validate_json((EXAMPLES / "arithmetic.json").read_text())
    settings = RunSettings(method="sdpo", max_attempts=6, attempts_per_step=3, max_new_tokens=32, seed=1,
                           stop_at_first_success=False)
    events = []
    run = ProblemRun(problem, settings, smollm2_policy, name="e2e", on_event=events.append)
    before = {k: v.clone() for k, v in smollm2_policy.state("e2e").items()}
    engine = TransformersEngine(smollm2_policy)
    while not run.done:
        run_step([run], engine)
    result = run.result()
    run_state = run.state_dict()
    run.close()

    assert len(result.attempts) == 6 and result.steps == 2
    assert all(a.text.strip() and a.token_count > 0 for a in result.attempts)
    failed = [a for a in result.attempts if not a.solved]
    assert all(a.feedback and "225" not in a.feedback for a in failed)  # feedback, never the answer
    step_events = [e for e in events if e.type == "step"]
    assert step_events[0].metrics.distilled_samples > 0 and torch.isfinite(torch.tensor(step_events[0].metrics.loss))
    assert any(not torch.equal(before[k], run_state["adapter"][k]) for k in before)  # the adapter learned
    assert smollm2_policy.adapters == []


def test_sdpo_solve_command_on_smollm2(tmp_path):
    curve = tmp_path / "curve.svg"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "sdpo"), "solve", str(EXAMPLES / "arithmetic.json"), "--max-attempts", "4",
         "--attempts-per-step", "2", "--max-new-tokens", "24", "--baseline-attempts", "4", "--json",
         "--curve", str(curve)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model"] == "smollm2-135m-instruct"
    assert report["result"]["method"] == "auto" and len(report["baseline"]["attempts"]) == 4
    assert 1 <= len(report["result"]["attempts"]) <= 4
    assert curve.read_text().startswith("<svg")
