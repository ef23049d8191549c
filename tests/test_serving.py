"""Serving in one place (sdpo_core.serving): model -> policy -> engine from typed EngineSettings, vLLM's adapter slots
tied to the runs served, and runs driven to their end by one loop (DiscoveryRuns.run_until_done)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from sdpo_core.engine_choice import add_engine_arguments
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.loop import ProblemRun
from sdpo_core.problem import Problem
from sdpo_core.runs import DiscoveryRuns
from sdpo_core.serving import EngineSettings, adapter_slots, load_serving
from sdpo_core.settings import RunSettings
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = Problem.model_validate({"prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra"}})
SETTINGS = RunSettings(method="sdpo", max_attempts=4, attempts_per_step=2, max_new_tokens=4)


def test_a_worker_serves_one_adapter_slot_per_job(monkeypatch):
    for name in ("SDPO_MAX_JOBS", "SDPO_ENGINE", "SDPO_MODEL", "SDPO_MAX_BATCH_SIZE", "SDPO_DTYPE"):
        monkeypatch.delenv(name, raising=False)
    served = WorkerSettings(max_jobs=7, max_batch_size=12, engine="vllm", dtype="float32", model="m").engine_settings
    assert served == EngineSettings(model="m", engine="vllm", dtype="float32", max_batch_size=12, max_adapters=7)
    assert adapter_slots(0) == 1  # vLLM needs a slot even where no run learns


def test_engine_settings_come_from_the_flags_and_refuse_a_misspelling():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--max-batch-size", type=int, default=64)
    add_engine_arguments(parser)
    settings = EngineSettings.from_args(parser.parse_args(["--engine", "vllm"]), max_adapters=3)
    assert (settings.engine, settings.max_batch_size, settings.max_adapters, settings.dtype) == ("vllm", 64, 3, None)
    with pytest.raises(ValidationError):
        EngineSettings(max_adapter=3)


def test_load_serving_builds_the_engine_the_settings_name(contract_model_dir, monkeypatch):
    monkeypatch.delenv("SDPO_ENGINE", raising=False)
    serving = load_serving(EngineSettings(model=str(contract_model_dir), engine="transformers", dtype="float32",
                                          max_batch_size=5), device="cpu")
    assert isinstance(serving.engine, TransformersEngine) and serving.engine.max_batch_size == 5
    assert serving.engine.policy is serving.policy and serving.resolved_model == str(contract_model_dir)
    assert serving.model_name == str(contract_model_dir)


def test_run_until_done_admits_as_room_frees_and_raises_the_first_failure(tiny_policy):
    engine = TransformersEngine(tiny_policy)
    runs, waiting, most = DiscoveryRuns(engine), [f"r{i}" for i in range(3)], []

    def admit() -> bool:
        while waiting and len(runs.active) < 2:
            name = waiting.pop(0)
            runs.add(name, ProblemRun(PROBLEM, SETTINGS.model_copy(update={"seed": len(waiting)}), tiny_policy,
                                      name=name))
        most.append(len(runs.active))
        return bool(waiting)

    def close_finished(report) -> None:
        for group in runs.finished:
            runs.close(group)

    runs.run_until_done(close_finished, admit=admit)
    assert max(most) == 2 and not runs.groups and tiny_policy.adapters == []

    def broken(problem, texts):
        raise RuntimeError("verifier down")

    runs.add("broken", ProblemRun(PROBLEM, SETTINGS, tiny_policy, name="broken", verify=broken))
    with pytest.raises(RuntimeError, match="verifier down"):
        runs.run_until_done()
    runs.close_all()


def test_only_the_serving_module_assembles_an_engine():
    """Model -> policy -> engine is built in sdpo_core.serving; every other caller asks it."""
    callers = []
    for path in [*ROOT.glob("sdpo_core/**/*.py"), *ROOT.glob("workers/**/*.py"), *ROOT.glob("service/**/*.py"),
                 *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "make_engine", "LoraPolicy", "TransformersEngine", "VLLMEngine"):
                callers.append(str(path.relative_to(ROOT)))
    assert set(callers) <= {"sdpo_core/serving.py", "sdpo_core/engine_choice.py", "service/bench_commands.py",
                            "benchmarks/bench_adapter_switch.py", "benchmarks/teacher_signal.py"}, sorted(set(callers))
