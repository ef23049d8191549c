"""Settings: one typed object per process, flags and environment variables derived from it, one page for all."""

from __future__ import annotations

import re
from pathlib import Path

from service.cli import build_parser
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
