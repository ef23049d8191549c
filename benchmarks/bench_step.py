"""Time one discovery step, split into its phases, for SDPO against best-of-k in the same process.

    generate  ->  verify  ->  teacher forward  ->  student forward+backward (+ optimizer and EMA step)

Both methods run the same problem, seed and engine, their steps alternating; best-of-k skips the update. Prints
seconds per phase (mean over the measured steps, after one warm-up step each) and the SDPO/best-of-k ratios per step, per attempt and
per generated token (SDPO's attempts change length as it learns, so per-token cost is the fairer ratio).

    python benchmarks/bench_step.py [--model M] [--steps 3] [--attempts-per-step 16] [--max-new-tokens 64]
"""

from __future__ import annotations

import time

from scaffold import load, script_parser

from sdpo_core.loop import ProblemRun, run_step
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings

PHASES = ["generate", "verify", "teacher_forward", "student_forward_backward", "total"]


def measure(problem: Problem, policy: LoraPolicy, engine, args) -> dict[str, dict[str, float]]:
    """Mean seconds per phase for best-of-k and SDPO, their steps alternating so both see the same machine load."""
    runs = {}
    for method in ("best-of-k", "sdpo"):
        settings = RunSettings(method=method, max_attempts=(args.steps + 1) * args.attempts_per_step,
                               attempts_per_step=args.attempts_per_step, max_new_tokens=args.max_new_tokens,
                               seed=args.seed, stop_at_first_success=False)
        runs[method] = ProblemRun(problem, settings, policy, name=f"bench-{method}")
    totals = {method: dict.fromkeys(PHASES, 0.0) | {"tokens": 0.0} for method in runs}
    for step in range(args.steps + 1):
        for method, run in runs.items():
            clock = time.perf_counter()
            event = run_step([run], engine)[0]
            elapsed = time.perf_counter() - clock
            if step == 0:
                continue  # warm-up: first-call allocations, lazy imports
            for phase, seconds in event.metrics.seconds.items():
                totals[method][phase] += seconds
            totals[method]["total"] += elapsed
            totals[method]["tokens"] += sum(a.token_count for a in run.attempts[-args.attempts_per_step:])
    means = {}
    for method, run in runs.items():
        run.close()
        means[method] = {phase: value / args.steps for phase, value in totals[method].items()}
        means[method]["attempts"] = args.attempts_per_step
    return means


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attempts-per-step", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    policy, engine, problem = load(args)
    means = measure(problem, policy, engine, args)
    bok, sdpo = means["best-of-k"], means["sdpo"]

    print(f"model={args.model or 'smollm2-135m-instruct'} device={policy.device} attempts/step={args.attempts_per_step} "
          f"max_new_tokens={args.max_new_tokens} steps={args.steps} (+1 warm-up)")
    print(f"{'phase (s/step)':<26} {'best-of-k':>10} {'sdpo':>10}")
    for phase in PHASES:
        print(f"{phase:<26} {bok.get(phase, 0.0):>10.2f} {sdpo.get(phase, 0.0):>10.2f}")
    print(f"{'tokens generated/step':<26} {bok['tokens']:>10.0f} {sdpo['tokens']:>10.0f}")
    print(f"SDPO / best-of-k per step    : {sdpo['total'] / bok['total']:.2f}x")
    print(f"SDPO / best-of-k per attempt : {(sdpo['total'] / sdpo['attempts']) / (bok['total'] / bok['attempts']):.2f}x")
    print(f"SDPO / best-of-k per token   : {(sdpo['total'] / sdpo['tokens']) / (bok['total'] / bok['tokens']):.2f}x")
    update = sdpo.get("teacher_forward", 0.0) + sdpo.get("student_forward_backward", 0.0)
    print(f"update share of an SDPO step : {update / sdpo['total']:.0%}")


if __name__ == "__main__":
    main()
