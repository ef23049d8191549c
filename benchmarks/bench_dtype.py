"""bfloat16 against float32 base weights on this machine, in one process: sampling tokens/s and SDPO update seconds.

    python benchmarks/bench_dtype.py [--model M] [--attempts 16] [--max-new-tokens 48] [--rounds 2]

Both policies hold the same model (the adapters stay float32 in both); each round measures float32 then bfloat16,
the next round the other way round (ABBA), so a machine whose load drifts treats both alike. Per dtype: the
transformers engine sampling one problem's attempts with its adapter, then one SDPO update on those attempts
(teacher forward, student forward and backward, AdamW). Prints seconds, tokens/s and the bf16/fp32 speed-ups, and
the load average before and after (on a shared machine the ratios mean more than the absolute numbers).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

from sdpo_core.engine import GenerationRequest
from sdpo_core.loop import distill_samples
from sdpo_core.models import cpu_has_bfloat16
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt
from sdpo_core.serving import EngineSettings, load_serving
from sdpo_core.settings import SDPOSettings
from sdpo_core.teacher import init_teacher
from sdpo_core.update import make_optimizer, sdpo_update

PROBLEM = Problem.model_validate({
    "prompt": "Think step by step, then give the product of 37 and 53 in <answer></answer> tags.",
    "verifier": {"type": "exact", "answer": "1961", "extract": "answer_tag"},
})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--attempts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    settings = SDPOSettings()
    runs = {}
    for dtype in ("float32", "bfloat16"):
        serving = load_serving(EngineSettings(model=args.model, engine="transformers", dtype=dtype), device="cpu")
        policy, engine = serving.policy, serving.engine  # the transformers engine: its dtype is measured
        policy.create_adapter("run", settings, seed=0)
        init_teacher(policy, "run", settings, seed=0)
        runs[dtype] = (policy, engine, make_optimizer(policy, "run", settings))
    prompt = runs["float32"][0].chat_ids(PROBLEM.chat())
    totals = {dtype: {"generate": 0.0, "tokens": 0, "update": 0.0} for dtype in runs}

    def measure(dtype: str, round_: int) -> None:
        policy, engine, optimizer = runs[dtype]
        first = round_ * args.attempts + 1
        request = GenerationRequest(prompt, "run", 0, list(range(first, first + args.attempts)), args.max_new_tokens)
        clock = time.perf_counter()
        completions = engine.generate([request])[0]
        generate_s = time.perf_counter() - clock
        attempts = [Attempt(index=i, step=1, text=c.text, token_count=len(c.token_ids), truncated=c.truncated,
                            reward=0.0, solved=False, feedback="The answer is wrong: 37 * 53 is not that.")
                    for i, c in zip(request.attempt_indices, completions)]
        samples = distill_samples(PROBLEM, policy, settings, prompt, completions, attempts)
        clock = time.perf_counter()
        sdpo_update(policy, optimizer, "run", samples, settings)
        update_s = time.perf_counter() - clock
        if round_ > 0:  # round 0 warms both up (first-call allocations, kernel selection)
            totals[dtype]["generate"] += generate_s
            totals[dtype]["tokens"] += sum(len(c.token_ids) for c in completions)
            totals[dtype]["update"] += update_s
        print(f"  round {round_} {dtype:>8}: generate {generate_s:6.1f} s "
              f"({sum(len(c.token_ids) for c in completions)} tokens), update {update_s:6.1f} s", flush=True)

    for round_ in range(args.rounds + 1):
        order = ("float32", "bfloat16") if round_ % 2 == 0 else ("bfloat16", "float32")
        for dtype in order:
            measure(dtype, round_)
    print(f"cpu has native bfloat16: {cpu_has_bfloat16()}; {args.attempts} attempts x {args.max_new_tokens} tokens, "
          f"{args.rounds} measured rounds; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    for dtype, t in totals.items():
        print(f"{dtype:>8}: {t['tokens'] / t['generate']:7.1f} tokens/s sampling, "
              f"{t['update'] / args.rounds:6.2f} s per update")
    f32, b16 = totals["float32"], totals["bfloat16"]
    print(f"bf16 / fp32 speed-up: sampling {(b16['tokens'] / b16['generate']) / (f32['tokens'] / f32['generate']):.2f}x, "
          f"update {f32['update'] / b16['update']:.2f}x")


if __name__ == "__main__":
    main()
