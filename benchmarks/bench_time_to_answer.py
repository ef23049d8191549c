"""Time to answer: when a job's outcome is known, with its best-of-k comparison held to it (before) or apart (after).

Both arms run the same problem, method settings and seeds on one engine in this process, through the scheduler
the worker uses (sdpo_core.runs.DiscoveryRuns):

    before  the baseline samples beside the method in every batch, a fixed twice-the-budget of samples, and the
            job is final only when both are done (the service before issue 18)
    after   the baseline samples only in the room the method leaves (background) and stops once best-of-k's
            P(solved within the budget) is settled to 0.10 (sdpo_core.curves.baseline_settled); the job is
            final when its method's run ends

Prints, per seed and arm: seconds to the job's final status, seconds until the baseline ended, samples drawn and
the width of best-of-k's 90% interval at the budget; then the after/before ratios.

    python benchmarks/bench_time_to_answer.py --problem examples/add-12-30.json [--seeds 2] [--max-new-tokens 256]
"""

from __future__ import annotations

import time

from scaffold import load, script_parser

from sdpo_core.curves import best_of_k_interval, default_baseline_samples
from sdpo_core.runs import BASELINE, METHOD, DiscoveryRuns, comparison_runs, settle_when_enough
from sdpo_core.settings import RunSettings
from sdpo_core.verification.verify import verify_function


def one_job(problem, settings: RunSettings, policy, engine, *, outcome_first: bool) -> dict[str, float]:
    runs = comparison_runs(problem, settings, policy, baseline_samples=default_baseline_samples(settings.max_attempts),
                           name=f"job-{settings.seed}-{outcome_first}", verify=verify_function(problem))
    scheduler = DiscoveryRuns(engine, chunk_attempts=32)  # the worker's default max_batch_size
    scheduler.add("job", runs, background=(BASELINE,) if outcome_first else ())
    method, baseline = runs[METHOD], runs[BASELINE]
    clock, final_at = time.perf_counter(), None

    def after_step(report) -> None:
        nonlocal final_at
        if outcome_first:
            settle_when_enough(baseline, settings.max_attempts)
        if outcome_first and method.done and final_at is None:
            final_at = time.perf_counter() - clock

    try:
        scheduler.run_until_done(after_step)
        ended = time.perf_counter() - clock
    finally:
        scheduler.close_all()
    n, c = len(baseline.attempts), sum(a.solved for a in baseline.attempts)
    low, high = best_of_k_interval(n, c, settings.max_attempts)
    return {"final_s": final_at if outcome_first else ended, "baseline_end_s": ended, "samples": n,
            "successes": c, "width": high - low, "method_attempts": len(method.attempts),
            "solved_at": method.first_success.index if method.first_success else 0}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--attempts-per-step", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    policy, engine, problem = load(args)
    print(f"{problem.id}: budget {args.budget}, {args.attempts_per_step} a step, {args.max_new_tokens} new tokens, "
          f"baseline cap {default_baseline_samples(args.budget)}")
    print(f"{'seed':>4} {'arm':>7} {'final s':>8} {'baseline end s':>15} {'samples':>8} {'width':>6} {'solved at':>9}")
    warm = RunSettings(max_attempts=args.attempts_per_step, attempts_per_step=args.attempts_per_step,
                       max_new_tokens=args.max_new_tokens, seed=10_000)
    one_job(problem, warm, policy, engine, outcome_first=True)  # the first generation pays for warm-up
    totals = {False: [], True: []}
    for seed in range(args.seeds):
        settings = RunSettings(max_attempts=args.budget, attempts_per_step=args.attempts_per_step,
                               max_new_tokens=args.max_new_tokens, seed=seed)
        for outcome_first in (False, True):  # alternating, so both arms see the same machine load
            r = one_job(problem, settings, policy, engine, outcome_first=outcome_first)
            totals[outcome_first].append(r)
            print(f"{seed:>4} {'after' if outcome_first else 'before':>7} {r['final_s']:>8.1f} "
                  f"{r['baseline_end_s']:>15.1f} {r['samples']:>8} {r['width']:>6.2f} {r['solved_at'] or '-':>9}")
    mean = {arm: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for arm, rs in totals.items()}
    before, after = mean[False], mean[True]
    print(f"mean time to final status: before {before['final_s']:.1f} s, after {after['final_s']:.1f} s "
          f"({before['final_s'] / after['final_s']:.2f}x sooner)")
    print(f"mean baseline samples: before {before['samples']:.0f}, after {after['samples']:.0f} "
          f"({after['samples'] / before['samples']:.2f}x); 90% interval width at the budget: before "
          f"{before['width']:.2f}, after {after['width']:.2f}")


if __name__ == "__main__":
    main()
