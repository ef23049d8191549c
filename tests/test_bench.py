"""`sdpo bench discovery` and `sdpo bench throughput` through the command line, on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_core.measure.discovery import MethodOutcome, load_problems

SDPO = str(Path(sys.executable).parent / "sdpo")


def test_discovery_bench_writes_curves_and_ratio(tmp_path, tiny_model_dir):
    problems = tmp_path / "set.jsonl"
    problems.write_text(
        json.dumps({"id": "easy", "prompt": "Say anything.",
                    "verifier": {"type": "regex", "pattern": "(?s).*", "target": "completion"}}) + "\n"
        + json.dumps({"id": "never", "prompt": "Say the word.",
                      "verifier": {"type": "exact", "answer": "zebra", "extract": "answer_tag"}}) + "\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run([SDPO, "bench", "discovery", "--problems", str(problems), "--model", str(tiny_model_dir),
                           "--seeds", "2", "--budget", "8", "--attempts-per-step", "4", "--max-new-tokens", "6",
                           "--concurrency", "3", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "discovery.json").read_text())
    by_id = {p["problem_id"]: p for p in report["problems"]}
    assert by_id["easy"]["outcomes"]["sdpo"]["first_success"] == [1, 1]
    assert by_id["easy"]["outcomes"]["multi-turn"]["first_success"] == [1, 1]
    assert len(by_id["easy"]["outcomes"]["best-of-k"]["sample_solved"]) == 16  # budget x seeds samples
    assert by_id["never"]["outcomes"]["sdpo"]["first_success"] == [None, None]
    assert by_id["easy"]["attempts_ratio"] == pytest.approx(8.0) and by_id["never"]["attempts_ratio"] is None
    assert [c["label"] for c in report["average_curves"]] == ["sdpo", "best-of-k", "multi-turn"]
    assert report["average_curves"][0]["mean"][0] == pytest.approx(0.5)  # half the problems solved at k=1
    assert report["mean_attempts"]["sdpo"] == pytest.approx((1 + 8) / 2)
    for name in ("discovery.svg", "discovery-easy.svg", "discovery-never.svg"):
        assert (out / name).read_text().startswith("<svg")
    assert "average" in proc.stdout


def test_throughput_bench_reports_every_concurrency_and_method(tmp_path, tiny_model_dir):
    out = tmp_path / "tp.json"
    proc = subprocess.run([SDPO, "bench", "throughput", "--model", str(tiny_model_dir), "--concurrency", "1,2",
                           "--attempts-per-step", "2", "--max-new-tokens", "4", "--steps", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(r["concurrency"], r["method"]) for r in report["rows"]] == [
        (1, "best-of-k"), (1, "sdpo"), (2, "best-of-k"), (2, "sdpo")]
    for row in report["rows"]:
        assert row["attempts_per_s"] > 0 and row["tokens_per_s"] > 0
        assert row["decode_ms_per_step"] > 0 and row["decode_floor_ms"] > 0
        assert (row["update_s_per_step"] is not None) == (row["method"] == "sdpo")
    assert report["bandwidth_gb_s"] > 0 and report["weight_bytes"] > 0
    assert "SDPO / best-of-k wall time per attempt at C=2" in proc.stdout


def test_mean_attempts_conventions():
    assert MethodOutcome(first_success=[4, None]).mean_attempts_to_success(10) == 7
    always = MethodOutcome(sample_solved=[True] * 4)
    assert always.mean_attempts_to_success(10) == 1
    never = MethodOutcome(sample_solved=[False] * 4)
    assert never.mean_attempts_to_success(10) == 10
    assert never.discovery(10)(10) == 0 and always.discovery(10)(1) == 1


def test_builtin_problem_set_loads():
    problems = load_problems(None)
    assert len(problems) >= 2 and all(p.id for p in problems)
