"""Does SDPO's learning make the policy better or worse at the problem? Success rate per step, past the first solution.

`sdpo bench discovery` stops each run at its first solution, so it cannot say why SDPO finds later or sooner. Here
every method runs the whole budget (stop_at_first_success=False) for several seeds, all runs interleaved in one
generation call per step, and the script prints, per step, the fraction of that step's attempts that were verified
correct: flat for best-of-k (the frozen model), rising if the update helps, falling if it harms. Before the first
solution a run's teacher sees only feedback; after it, also the successful siblings of the same step.

    python benchmarks/success_trend.py [--problem square-15] [--seeds 4] [--steps 10] [--attempts-per-step 8]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from sdpo_core.engine_choice import add_engine_arguments
from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.measure.discovery import load_problems
from sdpo_core.serving import EngineSettings, adapter_slots, load_serving
from sdpo_core.settings import RunSettings

METHODS = ("best-of-k", "sdpo", "multi-turn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    add_engine_arguments(parser)
    parser.add_argument("--problem", default="square-15", help="an id from the built-in hard set")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attempts-per-step", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=None, help="override the SDPO default")
    parser.add_argument("--json", default=None, help="write the per-step counts here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    problem = {p.id: p for p in load_problems(None)}[args.problem]
    serving = load_serving(EngineSettings.from_args(args, max_batch_size=64,
                                                     max_adapters=adapter_slots(len(METHODS) * args.seeds)))
    policy, engine = serving.policy, serving.engine

    sdpo = {"learning_rate": args.learning_rate} if args.learning_rate else {}
    runs = {
        (method, seed): ProblemRun(problem, RunSettings(
            method=method, max_attempts=args.steps * args.attempts_per_step, attempts_per_step=args.attempts_per_step,
            max_new_tokens=args.max_new_tokens, seed=seed, stop_at_first_success=False, sdpo=sdpo,
        ), policy, name=f"{method}-{seed}")
        for method in METHODS for seed in range(args.seeds)
    }
    solved = {method: [] for method in METHODS}  # per step: attempts solved over all seeds
    print(f"{args.problem}: {args.seeds} seeds x {args.attempts_per_step} attempts per step; solved per step")
    print(f"{'step':>4} " + " ".join(f"{m:>11}" for m in METHODS) + "   seconds")
    for step in range(args.steps):
        clock = time.perf_counter()
        run_step(list(runs.values()), engine)
        for method in METHODS:
            solved[method].append(sum(
                sum(a.solved for a in runs[method, seed].attempts[-args.attempts_per_step:])
                for seed in range(args.seeds)
            ))
        print(f"{step:>4} " + " ".join(f"{solved[m][-1]:>11}" for m in METHODS)
              + f"   {time.perf_counter() - clock:.0f}", flush=True)
    per_step = args.seeds * args.attempts_per_step
    print("rate " + " ".join(f"{sum(solved[m]) / (per_step * args.steps):>11.3f}" for m in METHODS))
    half = args.steps // 2
    for method in METHODS:
        early, late = sum(solved[method][:half]), sum(solved[method][half:])
        print(f"{method}: first half {early}/{per_step * half}, second half {late}/{per_step * (args.steps - half)}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "solved_per_step": solved}, out, indent=1)
    for run in runs.values():
        run.close()


if __name__ == "__main__":
    main()
