"""The transformers engine against vLLM on the same policy, in one process: which engine should be the default here.

    .venv-vllm/bin/python benchmarks/bench_engines.py [--model M] [--dtype bfloat16] [--concurrency 1,4,16]
        [--attempts-per-step 8] [--max-new-tokens 48] [--steps 1]

For each number of concurrent problems, `sdpo bench throughput`'s measurement (best-of-k and SDPO steps, the update,
the adapter hand-off) runs on both engines, their order alternating from one level to the next, so a machine whose
load drifts treats both alike. The update always runs on transformers + peft; only sampling and the hand-off differ.
Prints both engines' rows, vLLM's speed-up per row, and the load average around each measurement. Needs vLLM
installed (.venv-vllm from scripts/setup.sh, on a CPU) and runs vLLM's engine core as a second process.
"""

from __future__ import annotations

import argparse
import os
import warnings

from sdpo_core.measure.throughput import bench_throughput
from sdpo_core.models import DEFAULT_MODEL
from sdpo_core.serving import EngineSettings, adapter_slots, load_serving, serve_policy

ENGINES = ("transformers", "vllm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default=None, help="auto (default), bfloat16 or float32")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--attempts-per-step", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=1, help="measured steps after one warm-up step")
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    levels = [int(c) for c in args.concurrency.split(",")]
    settings = EngineSettings.from_args(args, max_adapters=adapter_slots(max(levels)))
    first = load_serving(settings.model_copy(update={"engine": ENGINES[0]}))
    policy, engines = first.policy, {ENGINES[0]: first.engine}
    for name in ENGINES[1:]:  # over the same policy: every engine samples the same weights and adapters
        engines[name] = serve_policy(policy, settings.model_copy(update={"engine": name}),
                                     model_name=first.model_name, resolved_model=first.resolved_model).engine
    rows = {}
    for i, c in enumerate(levels):
        for name in ENGINES if i % 2 == 0 else ENGINES[::-1]:
            load = os.getloadavg()[0]
            report = bench_throughput(policy, engines[name], model_name=args.model or DEFAULT_MODEL, concurrency=(c,),
                                      attempts_per_step=args.attempts_per_step, max_new_tokens=args.max_new_tokens,
                                      steps=args.steps)
            for row in report.rows:
                rows[(c, row.method, name)] = (row, load, os.getloadavg()[0])
                print(f"  C={c:<2} {row.method:>9} {name:>12}: {row.attempts_per_s:6.2f} attempts/s, "
                      f"{row.tokens_per_s:6.0f} tokens/s, load {load:.1f}", flush=True)
    print(f"\n{args.model or DEFAULT_MODEL}, {policy.dtype}, {args.attempts_per_step} attempts x "
          f"{args.max_new_tokens} tokens per problem and step, {args.steps} measured step(s), {os.cpu_count()} cores")
    print(f"{'C':>3} {'method':>9} {'engine':>12} {'attempts/s':>10} {'tokens/s':>8} {'s/step':>7} {'update s':>8} "
          f"{'hand-off ms':>11} {'load':>9} {'vllm / tf':>9}")
    for c in levels:
        for method in ("best-of-k", "sdpo"):
            for name in ENGINES:
                row, before, after = rows[(c, method, name)]
                speedup = row.attempts_per_s / rows[(c, method, "transformers")][0].attempts_per_s
                update = "-" if row.update_s_per_step is None else f"{row.update_s_per_step:.2f}"
                publish = "-" if row.publish_ms is None else f"{row.publish_ms:.1f}"
                print(f"{c:>3} {method:>9} {name:>12} {row.attempts_per_s:>10.2f} {row.tokens_per_s:>8.0f} "
                      f"{row.seconds_per_step:>7.2f} {update:>8} {publish:>11} {before:>4.1f}-{after:<4.1f} "
                      f"{speedup if name == 'vllm' else 1.0:>8.2f}x")
    engines["vllm"].close()


if __name__ == "__main__":  # vLLM's engine core is a second process started from here
    main()
