"""Settings: one typed object per process, flags and environment variables derived from it, one page for all."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from sdpo_core.verification.settings import SettingsInvalid, VerifierPoolSettings
from service.cli import CLIError, _settings, build_parser, main
from service.config import ApiSettings
from service.settings_doc import render
from workers.settings import StoreSettings, WorkerSettings, from_flags

ROOT = Path(__file__).resolve().parent.parent


def test_the_settings_page_is_generated_from_the_code():
    assert (ROOT / "docs" / "settings.md").read_text() == render(), "run: python -m service.settings_doc > docs/settings.md"


def test_every_sdpo_variable_the_code_reads_is_documented():
    page = (ROOT / "docs" / "settings.md").read_text()
    names = set(re.findall(r"SDPO_[A-Z0-9_]*[A-Z0-9]", (ROOT / "Dockerfile").read_text()))
    for folder in ("sdpo_core", "workers", "service", "deploy"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".example"):
                names |= set(re.findall(r"SDPO_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    missing = sorted(n for n in names if f"`{n}`" not in page)
    assert not missing, f"not in docs/settings.md: {missing}"


def test_worker_and_api_share_the_store_part_and_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("SDPO_EVENTS_MAXLEN", "555")  # once read by the API only
    monkeypatch.setenv("SDPO_MAX_JOBS", "7")
    args = build_parser().parse_args(["worker", "--prefix", "team", "--max-jobs", "2", "--lease-ms", "5000"])
    worker = from_flags(WorkerSettings, args)
    assert (worker.events_maxlen, worker.redis_prefix, worker.max_jobs, worker.lease_ms) == (555, "team", 2, 5000)
    assert ApiSettings().events_maxlen == 555
    shared = set(StoreSettings.model_fields)
    assert shared <= set(WorkerSettings.model_fields) and shared <= set(ApiSettings.model_fields)
    serve = build_parser().parse_args(["serve", "--max-active-jobs", "3", "--port", "9000"])
    assert (from_flags(ApiSettings, serve).max_active_jobs, from_flags(ApiSettings, serve).port) == (3, 9000)


def test_the_verifier_pool_and_sandbox_settings_nest_in_the_worker_under_their_old_variables(monkeypatch):
    """SDPO_VERIFIER_WORKERS, SDPO_VERIFY_* and SDPO_SANDBOX_* keep their names (deploy files set them); a flag
    overrides one of them and the environment still gives the others."""
    monkeypatch.setenv("SDPO_VERIFIER_WORKERS", "3")
    monkeypatch.setenv("SDPO_VERIFY_STEP_BUDGET_S", "42")
    monkeypatch.setenv("SDPO_SANDBOX_MIN_ISOLATION", "unshare")
    monkeypatch.setenv("SDPO_SANDBOX_TMP", "/var/tmp")
    monkeypatch.setenv("SDPO_SANDBOX_PYTHON", "")  # empty: unset
    pool = WorkerSettings().verifier_pool
    assert (pool.verifier_workers, pool.verify_step_budget_s, pool.verify_attempt_timeout_s) == (3, 42.0, None)
    assert (pool.sandbox.min_isolation, pool.sandbox.tmp_dir, pool.sandbox.python) == ("unshare", "/var/tmp",
                                                                                       sys.executable)
    args = build_parser().parse_args(["worker", "--sandbox-isolation", "rlimits", "--verify-attempt-timeout-s", "9"])
    pool = from_flags(WorkerSettings, args).verifier_pool
    assert (pool.sandbox.isolation, pool.sandbox.min_isolation, pool.verify_attempt_timeout_s) == ("rlimits",
                                                                                                  "unshare", 9.0)
    assert pool.verifier_workers == 3


@pytest.mark.parametrize("variable, value", [("SDPO_SANDBOX_ISOLATION", "chroot"), ("SDPO_VERIFY_STEP_BUDGET_S", "-1"),
                                             ("SDPO_SANDBOX_UID_COUNT", "many")])
def test_a_bad_verification_setting_names_the_variable_and_the_value(monkeypatch, tmp_path, capsys, variable, value):
    """For the worker (at start) and for `sdpo verify`, which reads the same settings with no Redis."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsInvalid, match=rf"{variable}: .*'{value}'"):
        VerifierPoolSettings()
    with pytest.raises(CLIError, match=rf"settings: {variable}: .*'{value}'"):
        _settings(WorkerSettings, build_parser().parse_args(["worker"]))
    problem, answer = tmp_path / "p.json", tmp_path / "a.txt"
    problem.write_text(json.dumps({"prompt": "2+2?", "verifier": {"type": "exact", "answer": "4"}}))
    answer.write_text("<answer>4</answer>")
    assert main(["verify", str(problem), str(answer)]) == 2
    assert re.search(rf"sdpo: error: {variable}: .*'{value}'", capsys.readouterr().err)
