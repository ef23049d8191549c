"""Measure how often the frozen model solves each problem: pass@1 from i.i.d. samples, with a Wilson interval.

Discovery is about problems the model rarely solves: this picks the examples (hard, yet solvable).

    python benchmarks/pass_rates.py examples/*.json [--samples 128] [--model M] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

from sdpo_core.engine import GenerationRequest
from sdpo_core.engine_choice import add_engine_arguments
from sdpo_core.problem import Problem
from sdpo_core.serving import EngineSettings, load_serving
from sdpo_core.verifiers import verify_attempts


def wilson(successes: int, n: int, z: float = 1.645) -> tuple[float, float]:
    """90% Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("problems", nargs="+")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--model", default=None)
    add_engine_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--hard-out", help="write the problems with 0 < pass@1 <= --max-rate to this JSONL")
    parser.add_argument("--max-rate", type=float, default=0.05)
    args = parser.parse_args()
    hard = []
    warnings.filterwarnings("ignore")
    serving = load_serving(EngineSettings.from_args(args))
    policy, engine = serving.policy, serving.engine
    print(f"{'problem':<28} {'solved':>7} {'pass@1':>7} {'90% CI':>15} {'mean tokens':>11}")
    for path in args.problems:
        problem = Problem.model_validate_json(Path(path).read_text())
        request = GenerationRequest(policy.chat_ids(problem.chat()), None, args.seed,
                                    list(range(1, args.samples + 1)), args.max_new_tokens)
        completions = engine.generate([request])[0]
        solved = sum(v.solved for v in verify_attempts(problem, [c.text for c in completions]))
        low, high = wilson(solved, args.samples)
        tokens = sum(len(c.token_ids) for c in completions) / len(completions)
        print(f"{problem.id or Path(path).stem:<28} {solved:>3}/{args.samples:<3} {solved / args.samples:>7.3f} "
              f"[{low:.3f}, {high:.3f}] {tokens:>11.1f}", flush=True)
        if 0 < solved <= args.max_rate * args.samples:
            hard.append(problem.model_dump_json(exclude_none=True))
    if args.hard_out:
        Path(args.hard_out).write_text("".join(line + "\n" for line in hard))
        print(f"{len(hard)} problems with 0 < pass@1 <= {args.max_rate} written to {args.hard_out}")


if __name__ == "__main__":
    main()
