"""Why a run cannot go on because of its own problem or settings, said so that the job fails with that reason.

Any other exception out of a run is treated as a fault of the machine (retried from the checkpoint); a RunFailure
is the job's own and retrying would only repeat it, so the worker fails the job at once with `code` and the
message, and the jobs sharing its batches go on.
"""

from __future__ import annotations


class RunFailure(Exception):
    """The run's own failure: `code` names it for the API (e.g. adapter_diverged, step_timeout)."""

    retryable = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
