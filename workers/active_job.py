"""One leased job inside a worker: its runs (the method and, while it draws, its baseline), its lease, what it has
published. The job's outcome is final as soon as its method's run ends; the worker keeps the lease while the
baseline (workers.baseline) still draws, then lets the job go.

The runs' event sinks only buffer events (they fire inside the generation thread); the worker publishes them to the
job's stream after the step, together with the step's attempts. Attempts are stored in Redis as a prefix of the
method's attempts that fits the per-job byte cap: the prefix is a function of the attempts alone, so a resumed job
recomputes it from its checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdpo_core.loop import ProblemRun
from sdpo_core.records import Attempt
from sdpo_core.runs import METHOD, self_baseline
from sdpo_core.verifiers import VerifyFn
from workers.baseline import JobBaseline
from workers.jobs import JobPatch, JobProgress, JobSpec
from workers.logs import log_context
from workers.store import Lease


def stored_prefix(attempts: Sequence[Attempt], max_bytes: int) -> tuple[int, int]:
    """(count, bytes) of the longest prefix of `attempts` whose JSON fits in `max_bytes`."""
    size = 0
    for count, attempt in enumerate(attempts):
        length = len(attempt.model_dump_json().encode())
        if size + length > max_bytes:
            return count, size
        size += length
    return len(attempts), size


@dataclass
class StoragePlan:
    """Which attempts one publication appends, and the storage state once it has."""

    rows: list[str]
    first_index: int
    published: int
    stored: int
    stored_bytes: int
    full: bool


@dataclass
class ActiveJob:
    """A job this worker holds the lease of."""

    lease: Lease
    spec: JobSpec
    runs: dict[str, ProblemRun] = field(default_factory=dict)  # the scheduler steps this dict (a baseline joins it)
    baseline: JobBaseline | None = None  # None: none asked, or the method is its own
    verify: VerifyFn | None = None  # the job's verifier lane (its baseline's run verifies there too)
    outcome_final: bool = False  # the job's final status is written; only its baseline may still draw
    released: bool = False  # its queue entry is acked and its lease dropped: the worker forgets it
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # events buffered during a step
    published: int = 0  # method attempts already published (stored or counted past the cap)
    stored: int = 0  # method attempts in the job's attempts list
    stored_bytes: int = 0
    storage_full: bool = False  # an attempt did not fit (the job's cap or the tenant's quota): none after it is stored
    lost: bool = False  # the lease was lost: another worker may hold the job now
    checkpoint: str = ""  # the blob name of this lease's checkpoints
    previous_checkpoint: str = ""  # a former holder's, deleted once ours is committed
    admitted_at: float = field(default_factory=time.monotonic)  # fair share hands back the longest-running first

    @property
    def id(self) -> str:
        return self.lease.job_id

    def log_context(self):
        """Tag the log lines inside the block with this job and its tenant."""
        return log_context(job_id=self.id, tenant=self.lease.tenant or None)

    @property
    def method(self) -> ProblemRun:
        return self.runs[METHOD]

    @property
    def stepping(self) -> bool:
        """A run of the job (its method, or its baseline) still samples."""
        return any(not run.done for run in self.runs.values())

    @property
    def over(self) -> bool:
        """Its outcome is final and its baseline draws no more: the worker lets the job go."""
        return self.outcome_final and (self.baseline is None or not self.baseline.live)

    def sink(self, run_key: str):
        def on_event(event) -> None:
            self.pending.append(("progress", {"run": run_key, **event.model_dump(mode="json")}))
        return on_event

    def take_events(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.pending = self.pending, []
        return events

    def states(self) -> dict[str, dict[str, Any]]:
        """What the checkpoint holds: the method's run (a baseline's samples are in the shared record)."""
        return {METHOD: self.method.state_dict()}

    def to_store(self, max_bytes: int) -> StoragePlan:
        """The unpublished attempts that go into the attempts list (JSON) under the byte cap; `commit` the plan once
        they are published, so a publication that fails is planned again, in full, after the next step."""
        attempts = self.method.attempts
        plan = StoragePlan([], self.stored + 1, len(attempts), self.stored, self.stored_bytes, self.storage_full)
        for attempt in attempts[self.published:]:
            if plan.full:
                break
            row = attempt.model_dump_json()
            if plan.stored_bytes + len(row.encode()) > max_bytes:
                plan.full = True
                break
            plan.rows.append(row)
            plan.stored, plan.stored_bytes = plan.stored + 1, plan.stored_bytes + len(row.encode())
        return plan

    def commit(self, plan: StoragePlan) -> None:
        self.published, self.stored, self.stored_bytes, self.storage_full = (
            plan.published, plan.stored, plan.stored_bytes, plan.full)

    def stored_upto(self, stored: int) -> None:
        """The attempts list's length after a publication: shorter than planned when the tenant's storage quota
        refused attempts, after which this job stores none (the list stays a prefix; the job still counts them)."""
        if 0 <= stored < self.stored:
            self.stored, self.storage_full = stored, True

    def restart_storage(self, attempts: Sequence[Attempt], max_bytes: int) -> int:
        """After a restore: which prefix of the checkpoint's attempts the list holds; returns its length."""
        self.stored, self.stored_bytes = stored_prefix(attempts, max_bytes)
        self.storage_full = self.stored < len(attempts)
        self.published = len(attempts)
        return self.stored

    def progress(self) -> JobPatch:
        """The job record's progress fields, from the runs, and the first solution (kept past the attempt cap)."""
        method, first = self.method, self.method.first_success
        progress = JobProgress(
            attempts=len(method.attempts), steps=method.step,
            best_reward=max((a.reward for a in method.attempts), default=0.0),
            first_success_attempt=first.index if first else None,
        )
        if self.baseline is not None:
            progress = progress.model_copy(update=self.baseline.fields())
        elif self_baseline(method.settings):  # its own attempts are the best-of-k samples
            progress.baseline_samples = len(method.attempts)
            progress.baseline_successes = sum(a.solved for a in method.attempts)
            progress.baseline_state = "done" if method.done else "running"
        else:
            progress.baseline_state = "skipped"
        solution = {"solution": first.model_dump_json()} if first is not None else {}
        return JobPatch(**progress.model_dump(), **solution)
