"""`sdpo bench throughput`: how cheap an attempt is, for best-of-k and SDPO on the same engine.

For each number of concurrent problems C (one worker, attempts of C adapters in the same batches):
- attempts/s and generated tokens/s over `steps` steps (after one warm-up step), best-of-k and SDPO, and the
  SDPO/best-of-k wall time per attempt;
- decode milliseconds per batched decode step against the floor of reading the weights and the KV cache once
  per step at the memory bandwidth measured in the same run (a large on-device copy);
- the SDPO update (teacher forward + student forward/backward + optimizer) seconds per step;
- adapter swap: the time to publish an updated adapter to the engine (a no-op on the transformers engine,
  whose generation reads the live weights; a disk write and load on vLLM) plus the per-call cost of stacking
  the C adapters for batched multi-LoRA decoding.
Every attempt fails the verifier (it asks for a word a random or small model will not write), so SDPO distils
every attempt: the update's cost is measured at its maximum.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from pydantic import BaseModel

from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings

BENCH_PROBLEM = Problem.model_validate({
    "prompt": "Think step by step about the following puzzle and give the final word in <answer></answer> tags. " * 3,
    "verifier": {"type": "exact", "answer": "xylophone-zebra-quartz", "extract": "answer_tag"},
})


class ThroughputRow(BaseModel):
    concurrency: int
    method: str
    attempts_per_s: float
    tokens_per_s: float
    seconds_per_step: float
    decode_ms_per_step: float | None = None
    decode_floor_ms: float | None = None
    update_s_per_step: float | None = None
    publish_ms: float | None = None
    stack_ms: float | None = None


class ThroughputReport(BaseModel):
    device: str
    model: str
    bandwidth_gb_s: float
    weight_bytes: int
    rows: list[ThroughputRow]

    def ratio(self, concurrency: int) -> float:
        """SDPO wall time per attempt / best-of-k's, at `concurrency`."""
        by = {(r.concurrency, r.method): r for r in self.rows}
        return by[(concurrency, "best-of-k")].attempts_per_s / by[(concurrency, "sdpo")].attempts_per_s

    def scaling(self, method: str) -> float:
        """Attempts/s at the highest concurrency over attempts/s with one problem."""
        rows = sorted((r for r in self.rows if r.method == method), key=lambda r: r.concurrency)
        return rows[-1].attempts_per_s / rows[0].attempts_per_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, megabytes: int = 1024) -> float:
    """Device memory bandwidth in bytes/s from timing a large copy (each byte read once and written once)."""
    n = megabytes * 2**20 // 4
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    dst.copy_(src)
    _sync(device)
    repeats = 5
    clock = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    return 2 * n * 4 * repeats / (time.perf_counter() - clock)


def _measure(method: str, concurrency: int, policy: LoraPolicy, engine, settings: RunSettings, steps: int,
             bandwidth: float, weight_bytes: int) -> ThroughputRow:
    runs = [ProblemRun(BENCH_PROBLEM, settings.model_copy(update={"method": method, "seed": i}), policy,
                       name=f"tp-{method}-{i}") for i in range(concurrency)]
    run_step(runs, engine)  # warm-up
    steps0, cache0 = getattr(engine, "decode_steps", 0), getattr(engine, "cache_bytes_read", 0)
    attempts0 = sum(len(r.attempts) for r in runs)
    tokens0 = sum(a.token_count for r in runs for a in r.attempts)
    generate_s = update_s = 0.0
    _sync(policy.device)
    clock = time.perf_counter()
    for _ in range(steps):
        events = run_step(runs, engine)
        _sync(policy.device)
        generate_s += events[0].metrics.seconds["generate"]
        update_s += sum(e.metrics.seconds.get("teacher_forward", 0) + e.metrics.seconds.get("student_forward_backward", 0)
                        for e in events)
    elapsed = time.perf_counter() - clock
    attempts = sum(len(r.attempts) for r in runs) - attempts0
    tokens = sum(a.token_count for r in runs for a in r.attempts) - tokens0
    decode_steps = getattr(engine, "decode_steps", 0) - steps0
    row = ThroughputRow(concurrency=concurrency, method=method, attempts_per_s=attempts / elapsed,
                        tokens_per_s=tokens / elapsed, seconds_per_step=elapsed / steps)
    if decode_steps:
        cache_bytes = getattr(engine, "cache_bytes_read", 0) - cache0
        row.decode_ms_per_step = 1e3 * generate_s / decode_steps
        row.decode_floor_ms = 1e3 * (weight_bytes + cache_bytes / decode_steps) / bandwidth
    if method == "sdpo":
        row.update_s_per_step = update_s / steps
        clock = time.perf_counter()
        for run in runs:
            engine.publish_adapter(run.name)
        _sync(policy.device)
        row.publish_ms = 1e3 * (time.perf_counter() - clock) / concurrency
        clock = time.perf_counter()
        with policy.rows_lora([r.name for r in runs]):
            _sync(policy.device)
        row.stack_ms = 1e3 * (time.perf_counter() - clock)
    for run in runs:
        run.close()
        engine.drop_adapter(run.name)
    return row


def bench_throughput(
    policy: LoraPolicy, engine, *, model_name: str, concurrency: tuple[int, ...] = (1, 4, 16),
    attempts_per_step: int = 16, max_new_tokens: int = 128, steps: int = 2,
    on_row: Callable[[ThroughputRow], None] = lambda row: None,
) -> ThroughputReport:
    device = policy.device
    bandwidth = measure_bandwidth(device, 1024 if device.type == "cuda" else 256)
    weight_bytes = sum(p.numel() * p.element_size() for p in policy.base.parameters())
    settings = RunSettings(max_attempts=attempts_per_step * (steps + 1), attempts_per_step=attempts_per_step,
                           max_new_tokens=max_new_tokens, stop_at_first_success=False)
    rows = []
    for c in concurrency:
        for method in ("best-of-k", "sdpo"):
            rows.append(_measure(method, c, policy, engine, settings, steps, bandwidth, weight_bytes))
            on_row(rows[-1])
    return ThroughputReport(device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
                            model=model_name, bandwidth_gb_s=bandwidth / 1e9, weight_bytes=weight_bytes, rows=rows)
