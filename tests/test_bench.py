"""`sdpo bench discovery` and `sdpo bench throughput` through the command line, on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_core.measure.discovery import MethodOutcome, load_problems, matched_ratio

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
                           "--concurrency", "3", "--out", str(out), "--quiet", "--methods", "sdpo,best-of-k,multi-turn"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "discovery.json").read_text())
    by_id = {p["problem_id"]: p for p in report["problems"]}
    assert by_id["easy"]["outcomes"]["sdpo"]["first_success"] == [1, 1]
    assert by_id["easy"]["outcomes"]["multi-turn"]["first_success"] == [1, 1]
    assert len(by_id["easy"]["outcomes"]["best-of-k"]["sample_solved"]) == 16  # budget x seeds samples
    assert by_id["never"]["outcomes"]["sdpo"]["first_success"] == [None, None]
    assert by_id["easy"]["ratios"]["sdpo"]["attempts"] == pytest.approx(1.0)  # best-of-k also solves at attempt 1
    assert by_id["never"]["ratios"]["sdpo"]["attempts"] is None
    assert [c["label"] for c in report["average_curves"]] == ["sdpo", "best-of-k", "multi-turn"]
    assert report["average_curves"][0]["mean"][0] == pytest.approx(0.5)  # half the problems solved at k=1
    assert report["mean_cost"]["sdpo"]["attempts"] == pytest.approx((1 + 8) / 2)
    easy = by_id["easy"]["outcomes"]
    assert all(s > 0 for s in easy["sdpo"]["run_seconds"]) and easy["best-of-k"]["seconds_per_sample"] > 0
    assert all(t > 0 for t in easy["multi-turn"]["run_tokens"]) and easy["best-of-k"]["tokens_per_sample"] > 0
    assert report["ratios"]["sdpo"]["seconds"]["value"] > 0
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


def test_builtin_problem_families_load():
    for family in ("binary", "informative", "accumulate"):
        problems = load_problems(family)
        assert len(problems) >= 8 and all(p.id for p in problems)


def test_accumulate_problems_hide_several_requirements_told_one_at_a_time():
    problems = load_problems("accumulate")
    assert all(p.verifier.type == "checklist" and p.verifier.report == "first" for p in problems)
    assert all(2 <= len(p.verifier.checks) <= 4 for p in problems)
    long_feedback = [p for p in problems if p.verifier.feedback_format != "plain"]
    assert 3 * len(long_feedback) >= len(problems)
    for p in problems:  # the prompt does not give the hidden words away
        hidden = [c.text for c in p.verifier.checks if c.kind == "contains"]
        assert not any(word.lower() in p.prompt.lower() for word in hidden)


def test_ratios_on_every_axis_at_matched_probability():
    """Best-of-k p = 1/4 at 1 s and 10 tokens a sample; a method solving at attempt 2 in 5 s and 40 tokens."""
    baseline = MethodOutcome(sample_solved=[True, False, False, False] * 25, seconds_per_sample=1.0,
                             tokens_per_sample=10.0)
    method = MethodOutcome(first_success=[2, 2], run_seconds=[5.0, 5.0], run_tokens=[40, 40])
    budget = 8
    target = baseline.discovery(budget)(budget)  # 1 - (3/4)^8 ~ 0.9
    assert method.discovery(budget)(2) == 1 and method.discovery(budget, "seconds")(4.9) == 0
    assert matched_ratio([method], [baseline], budget, "attempts") == pytest.approx(8 / 2)
    assert matched_ratio([method], [baseline], budget, "seconds") == pytest.approx(8 * 1.0 / 5.0)
    assert matched_ratio([method], [baseline], budget, "tokens") == pytest.approx(8 * 10 / 40)
    assert 0.85 < target < 0.95
    never = MethodOutcome(first_success=[None], run_seconds=[9.0], run_tokens=[90])
    assert matched_ratio([never], [baseline], budget, "seconds") is None
    assert never.mean_cost_to_success(budget, "seconds") == 9.0


def _two_problems(tmp_path) -> Path:
    path = tmp_path / "two.jsonl"
    path.write_text(
        json.dumps({"id": "anything", "prompt": "Say anything.",
                    "verifier": {"type": "regex", "pattern": "(?s).*", "target": "completion"}}) + "\n"
        + json.dumps({"id": "needs-word", "prompt": "Say something.",
                      "verifier": {"type": "checklist", "checks": [{"kind": "contains", "text": "zebra"}]}}) + "\n")
    return path


def test_signal_bench_reports_base_and_in_context_rates_and_the_gap(tmp_path, tiny_model_dir):
    out = tmp_path / "signal.json"
    proc = subprocess.run([SDPO, "bench", "signal", "--problems", str(_two_problems(tmp_path)), "--model",
                           str(tiny_model_dir), "--samples", "6", "--gap-attempts", "3", "--max-new-tokens", "6",
                           "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = {r["problem_id"]: r for r in json.loads(out.read_text())}
    assert rows["anything"]["base_solved"] == 6 and rows["anything"]["feedback_solved"] == 6
    assert rows["anything"]["gap_attempts"] == 0  # nothing failed: no gap to measure
    word = rows["needs-word"]
    assert word["base_solved"] == 0 and word["gap_attempts"] == 3
    assert word["feedback_examples"] == ["The answer must use the word 'zebra'."]
    assert word["gap_feedback"] > 0 and word["gap_contrastive"] >= 0 and word["peak_contrastive"] >= 0
    assert "with feedback" in proc.stdout


def test_signal_bench_measures_pass_at_1_with_all_requirements_told(tmp_path, tiny_model_dir):
    """A checklist states its requirements at once; a verifier that cannot (regex) shows '-' there."""
    path = tmp_path / "told.jsonl"
    path.write_text(
        json.dumps({"id": "regex", "prompt": "Say anything.",
                    "verifier": {"type": "regex", "pattern": "(?s).*", "target": "completion"}}) + "\n"
        + json.dumps({"id": "never-said", "prompt": "Say something.", "verifier": {
            "type": "checklist", "report": "first", "checks": [{"kind": "excludes", "text": "zzyzx"}]}}) + "\n"
        + json.dumps({"id": "hidden-words", "prompt": "Say something.", "verifier": {
            "type": "checklist", "report": "first", "feedback_format": "test_log",
            "checks": [{"kind": "contains", "text": "zebra"}, {"kind": "contains", "text": "quokka"}]}}) + "\n")
    out = tmp_path / "signal.json"
    proc = subprocess.run([SDPO, "bench", "signal", "--problems", str(path), "--model", str(tiny_model_dir),
                           "--samples", "5", "--feedback-samples", "3", "--gap-attempts", "2",
                           "--max-new-tokens", "6", "--json", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = {r["problem_id"]: r for r in json.loads(out.read_text())}
    assert rows["regex"]["all_told_samples"] is None and rows["regex"]["all_told_solved"] is None
    assert rows["never-said"]["all_told_samples"] == 5 and rows["never-said"]["all_told_solved"] == 5
    hidden = rows["hidden-words"]
    assert hidden["all_told_samples"] == 5 and hidden["all_told_solved"] == 0  # the tiny model never says them
    assert hidden["feedback_samples"] == 3 and hidden["base_solved"] == 0
    [log] = hidden["feedback_examples"]  # only the first requirement, inside the log
    assert "AssertionError: The answer must use the word 'zebra'." in log and "quokka" not in log
    table = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 3}
    assert "all told" in proc.stdout
    assert table["regex"].split("│")[4].strip() == "-"
    assert table["never-said"].split("│")[4].strip() == "5/5 = 1.000"


def test_trace_bench_evaluates_the_plain_prompt_after_every_update(tmp_path, tiny_model_dir):
    out = tmp_path / "trace.json"
    proc = subprocess.run([SDPO, "bench", "trace", "--problems", str(_two_problems(tmp_path)), "--model",
                           str(tiny_model_dir), "--updates", "2", "--attempts", "3", "--eval-samples", "4",
                           "--max-new-tokens", "6", "--variant", "default=", "--variant",
                           "contrast=alpha:0,top_k:none,teacher_context:contrastive,teacher:frozen,learning_rate:0.01",
                           "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    traces = json.loads(out.read_text())
    assert sorted((t["problem_id"], t["variant"]) for t in traces) == [
        ("anything", "contrast"), ("anything", "default"), ("needs-word", "contrast"), ("needs-word", "default")]
    for t in traces:
        assert [s["update"] for s in t["steps"]] == [0, 1, 2]
        assert all(s["eval_samples"] == 4 and 0 <= s["meta_talk"] <= 1 and 0 < s["distinct2"] <= 1
                   for s in t["steps"])
        assert [s["train_samples"] for s in t["steps"]] == [None, 3, 3]
        if t["problem_id"] == "anything":
            assert all(s["eval_solved"] == 4 for s in t["steps"]) and t["feedback_rate"] == 1.0
    changed = [t for t in traces if t["problem_id"] == "needs-word" and t["variant"] == "contrast"][0]
    assert changed["steps"][1]["loss"] > 0
    assert "average" in proc.stdout


def test_quality_measures():
    from sdpo_core.measure.quality import distinct_ratio, meta_talk

    assert distinct_ratio("the owl the owl the owl the owl") < 0.5 < distinct_ratio("an owl sat on a branch")
    feedback = ["The answer must use the word 'lighthouse'."]
    assert meta_talk("Sure! The answer must use the word lighthouse, so here it is.", feedback)
    assert not meta_talk("The lighthouse stood above the calm ocean.", feedback)
    assert meta_talk("Correctly solve the original question: the ocean is blue.", [])
