"""One job inside a worker: its runs (the method and its best-of-k baseline), fresh or restored from a checkpoint.

The runs' event sinks only buffer events (they fire inside the generation thread); the worker publishes them to
the job's stream after the step, together with the step's attempts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sdpo_core.settings import RunSettings
from workers.jobs import JobFailure, JobSpec
from workers.logs import log_context

log = logging.getLogger(__name__)
METHOD, BASELINE = "method", "baseline"


def baseline_settings(settings: RunSettings, samples: int) -> RunSettings:
    """best-of-k samples of the frozen model, never stopping early: the comparison's i.i.d. outcomes."""
    return settings.model_copy(update={
        "method": "best-of-k", "max_attempts": max(samples, settings.attempts_per_step), "stop_at_first_success": False,
    })


def self_baseline(spec: JobSpec) -> bool:
    """A full-budget best-of-k run is its own baseline."""
    return spec.settings.method == "best-of-k" and not spec.settings.stop_at_first_success


@dataclass
class ActiveJob:
    """A job this worker holds the lease of."""

    id: str
    entry_id: str
    spec: JobSpec
    batch_id: str
    runs: dict[str, Any]  # METHOD / BASELINE -> sdpo_core.loop.ProblemRun
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # events buffered during a step
    published_attempts: int = 0  # method attempts already in the job's attempts list
    lost: bool = False  # the lease was lost: another worker may hold the job now
    tenant: str = ""

    def log_context(self):
        """Tag the log lines inside the block with this job and its tenant."""
        return log_context(job_id=self.id, tenant=self.tenant or None)

    @property
    def done(self) -> bool:
        return all(run.done for run in self.runs.values())

    def live_runs(self) -> list[Any]:
        return [run for run in self.runs.values() if not run.done]

    def sink(self, run_key: str):
        def on_event(event) -> None:
            self.pending.append(("progress", {"run": run_key, **event.model_dump(mode="json")}))
        return on_event

    def take_events(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.pending = self.pending, []
        return events

    def states(self) -> dict[str, dict[str, Any]]:
        return {key: run.state_dict() for key, run in self.runs.items()}

    def close(self) -> None:
        for run in self.runs.values():
            try:
                run.close()
            except Exception:  # noqa: BLE001 - freeing adapters must not stop the worker
                log.exception("job %s: closing a run failed", self.id)

    def progress_fields(self) -> dict[str, Any]:
        """The job record's progress fields, from the runs."""
        method = self.runs[METHOD]
        first = method.first_success
        fields: dict[str, Any] = {
            "attempts": len(method.attempts), "steps": method.step,
            "best_reward": max((a.reward for a in method.attempts), default=0.0),
            "first_success_attempt": first.index if first else "",
        }
        baseline = self.runs.get(BASELINE) or (method if self_baseline(self.spec) else None)
        if baseline is not None:
            fields["baseline_samples"] = len(baseline.attempts)
            fields["baseline_successes"] = sum(a.solved for a in baseline.attempts)
        return fields


def open_runs(job: ActiveJob, *, policy: Any, verify: Any, states: dict[str, dict[str, Any]] | None) -> None:
    """Create the job's runs, or restore them from checkpointed `states` (adapter names: the job id)."""
    from sdpo_core.loop import ProblemRun

    names = {METHOD: job.id, BASELINE: f"{job.id}-baseline"}
    wanted = {METHOD: job.spec.settings}
    if job.spec.baseline_attempts > 0 and not self_baseline(job.spec):
        wanted[BASELINE] = baseline_settings(job.spec.settings, job.spec.baseline_attempts)
    if states:
        check_restored(job.spec, states, wanted)
    try:
        for key, settings in wanted.items():
            kwargs = {"name": names[key], "verify": verify, "on_event": job.sink(key)}
            if states and key in states:
                job.runs[key] = ProblemRun.restore(states[key], policy, **kwargs)
            else:
                job.runs[key] = ProblemRun(job.spec.problem, settings, policy, **kwargs)
    except BaseException:
        job.close()
        raise


def check_restored(spec: JobSpec, states: dict[str, dict[str, Any]], wanted: dict[str, RunSettings]) -> None:
    """The checkpoint must hold exactly the job's runs, each with the job's problem (and verifier) and settings as
    stored in Redis: what runs is always what was submitted, never what a checkpoint says."""
    if set(states) != set(wanted):
        raise JobFailure("checkpoint_mismatch", f"the job's checkpoint holds the runs {sorted(states)}, the job has "
                                                f"{sorted(wanted)}; it was not resumed")
    problem = spec.problem.model_dump(mode="json")
    for key, settings in wanted.items():
        for part, expected in (("problem", problem), ("settings", settings.model_dump(mode="json"))):
            if states[key].get(part) != expected:
                raise JobFailure("checkpoint_mismatch", f"the {part} in the job's checkpoint ({key} run) differs from "
                                                        "the job's; it was not resumed")
