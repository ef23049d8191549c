"""A job's best-of-k comparison: a part of the job with a state of its own, never holding the job's outcome back.

    pending      another job of the tenant draws the same samples (same problem, verifier, model, sampling): this
                 one reads theirs, and draws itself if that job stops first
    running      drawing: a background run of the job (sampled only in room the methods leave in a batch); each
                 step's samples go to the tenant's shared record for the key (workers.keys: baseline)
    done         the estimate is settled (sdpo_core.curves.baseline_settled) or the job's cap is reached
    skipped      none asked (0 samples), or the method is best-of-k over the whole budget (its own baseline)
    cancelled    the job or its comparison was cancelled
    interrupted  the worker drawing it stopped after the job's outcome was final; the counts so far stand

Samples are shared, not copied: a second job on the same key starts from what the first drew, and a batch of the
same problem draws them once (one drawer at a time, the others wait for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdpo_core.curves import baseline_settled
from sdpo_core.loop import ProblemRun
from sdpo_core.statuses import BASELINE_LIVE, BaselineState


@dataclass
class JobBaseline:
    """What a worker knows of one job's baseline."""

    key: str  # sdpo_core.runs.baseline_key
    cap: int  # the most samples the job's comparison may rest on (its baseline_attempts)
    budget: int  # the job's budget: the estimate is of best-of-k's P(solved within it)
    state: BaselineState = "pending"
    samples: int = 0  # behind the estimate (the shared record's, as last read or written)
    successes: int = 0
    reused: int = 0  # of those, drawn by earlier jobs
    run: ProblemRun | None = None  # while drawing
    recorded: int = 0  # the run's samples already in the shared record

    @property
    def live(self) -> bool:
        return self.state in BASELINE_LIVE

    @property
    def enough(self) -> bool:
        """Nothing more to draw: the cap is reached or more samples would not move the estimate."""
        return self.samples >= self.cap or baseline_settled(self.samples, self.successes, self.budget)

    def unrecorded(self) -> tuple[int, int]:
        """(samples, successes) the run drew that the shared record lacks."""
        new = self.run.attempts[self.recorded:] if self.run is not None else []
        return len(new), sum(a.solved for a in new)

    def end(self, state: BaselineState) -> None:
        """Stop drawing (the scheduler samples a finished run no more)."""
        self.state = state
        if self.run is not None:
            if state == "done":
                self.run.settle()
            else:
                self.run.cancel()

    def fields(self) -> dict[str, Any]:
        """The job record's baseline fields."""
        return {"baseline_state": self.state, "baseline_samples": self.samples,
                "baseline_successes": self.successes, "baseline_reused": self.reused}
