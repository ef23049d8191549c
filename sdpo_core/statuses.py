"""A job's statuses: the one definition that the API schemas, the client, the Redis store and the workers share.

It sits in sdpo_core (plain Python, no torch) because that is the one package every side may import: the light
client must not depend on `workers`, and `workers` must not depend on `service`.
"""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "exhausted", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
FINISHED: frozenset[str] = frozenset({"succeeded", "exhausted", "failed", "cancelled"})  # no way out of these
WITH_CURVE: frozenset[str] = frozenset({"succeeded", "exhausted"})  # finished with a discovery curve to show

# A job's best-of-k comparison, a part of the job with its own state (workers.baseline): it never holds the job's
# status back. `interrupted`: its worker stopped after the job's outcome was final (the counts so far stand).
BaselineState = Literal["pending", "running", "done", "skipped", "cancelled", "interrupted"]
BASELINE_LIVE: frozenset[str] = frozenset({"pending", "running"})
