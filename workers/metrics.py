"""Worker-side metrics, kept in Redis so that the API's /metrics sees every worker's numbers.

Counters and a step-latency histogram live in two hashes; a capped stream of (time, attempts) lets the API
compute attempts per second over a recent window.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from workers.keys import Keys

STEP_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
VERIFIER_ERROR_PREFIX = "The verifier failed"


def verifier_outcome(solved: bool, feedback: str) -> str:
    """solved | rejected | error: what the verifier said about one attempt."""
    if solved:
        return "solved"
    return "error" if feedback.startswith(VERIFIER_ERROR_PREFIX) else "rejected"


async def record_step(
    redis: Redis, keys: Keys, *, attempts: int, seconds: float, outcomes: Sequence[str], log_maxlen: int = 2000
) -> None:
    """Count one worker step: its attempts, its latency and each attempt's verifier outcome."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(keys.counters, "attempts", attempts)
        pipe.hincrby(keys.counters, "steps", 1)
        for outcome in outcomes:
            pipe.hincrby(keys.counters, f"verifier:{outcome}", 1)
        for bound in STEP_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(keys.step_seconds, str(bound), 1)
        pipe.hincrby(keys.step_seconds, "count", 1)
        pipe.hincrbyfloat(keys.step_seconds, "sum", seconds)
        if attempts:
            pipe.xadd(keys.attempts_log, {"n": attempts}, maxlen=log_maxlen, approximate=True)
        await pipe.execute()


async def record_finished(redis: Redis, keys: Keys, status: str) -> None:
    await redis.hincrby(keys.counters, f"finished:{status}", 1)
