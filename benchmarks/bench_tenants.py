"""A victim job's seconds per step alone and beside each attacker of issue 17, on one scheduler and verifier pool.

The worker's own arrangement, in one process: DiscoveryRuns (shared generation batches, verification beside
generation, a step's attempts at most max_batch_size to a generation call) and a VerifierPool with a lane per job.
The victim samples 8 attempts of 48 tokens a step from the frozen model and a regex accepts every one; each attacker
is a job a tenant may submit:

    alone              the victim by itself (the baseline, measured in the same process)
    sleeping-verifier  a python verifier that sleeps 100 s on every attempt
    backtracking-regex a regex that backtracks for seconds on every attempt
    diverging-adapter  SDPO at the edge of every bound (lr 0.1, lora_alpha 1024, rank 1, grad_clip 100)
    many-attempts      1024 attempts of 64 tokens a step (the step cap: 65,536 tokens)
    long-attempts      32 attempts of up to 2048 tokens a step, on a prompt that asks for a long text
    neighbour          a second job like the victim (what sharing a worker costs at all)

Prints the victim's mean seconds per step (after one warm-up step) and the ratio to alone, and checks that every
one of its attempts was scored correct.

    python benchmarks/bench_tenants.py [--model M] [--steps 4] [--scenarios alone,sleeping-verifier,...]
"""

from __future__ import annotations

import time

from scaffold import load, script_parser

from sdpo_core.loop import ProblemRun
from sdpo_core.problem import Problem
from sdpo_core.runs import DiscoveryRuns
from sdpo_core.settings import RunSettings
from sdpo_core.verification.pool import VerifierPool
from workers.settings import WorkerSettings

WORKER_BATCH = WorkerSettings.model_fields["max_batch_size"].default  # also the worker's chunk of a step's attempts
VICTIM = Problem.model_validate({"id": "victim", "prompt": "Write one sentence about the sea.",
                                 "verifier": {"type": "regex", "pattern": "(?s).*", "target": "completion"}})
NEVER = {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}
ATTACKERS = {
    "sleeping-verifier": ({"prompt": "Say anything.", "verifier": {
        "type": "python", "timeout_s": 120, "source": "import time\ndef verify(c):\n    time.sleep(100)\n"
                                                      "    return 1.0"}}, {}),
    "backtracking-regex": ({"prompt": "Write a long sentence.", "verifier": {
        "type": "regex", "pattern": "(?s)(.|.)*Q", "target": "completion"}}, {}),
    "diverging-adapter": ({"prompt": "Say the secret", "verifier": NEVER}, {
        "method": "sdpo", "sdpo": {"learning_rate": 0.1, "lora_alpha": 1024, "lora_rank": 1, "grad_clip": 100}}),
    "many-attempts": ({"prompt": "Say the secret", "verifier": NEVER},
                      {"attempts_per_step": 1024, "max_new_tokens": 64}),
    "long-attempts": ({"prompt": "Write a very long story, at least two thousand words.", "verifier": NEVER},
                      {"attempts_per_step": 32, "max_new_tokens": 2048}),
    "neighbour": ({"prompt": "Write one sentence about the sea.", "verifier": NEVER}, {}),
}


def victim_seconds_per_step(policy, engine, pool: VerifierPool, attacker: str | None, steps: int) -> float:
    settings = RunSettings(method="best-of-k", max_attempts=8 * (steps + 1), attempts_per_step=8, max_new_tokens=48,
                           stop_at_first_success=False, seed=11)
    finished: list[float] = []
    victim = ProblemRun(VICTIM, settings, policy, name="victim",
                        verify=lambda p, c: pool.verify_batch(p, c, lane="victim", budget_s=600),
                        on_event=lambda event: finished.append(time.perf_counter()) if event.type == "step" else None)
    scheduler = DiscoveryRuns(engine, chunk_attempts=WORKER_BATCH)  # as the worker schedules
    scheduler.add("victim", victim)
    if attacker is not None:
        problem, overrides = ATTACKERS[attacker]
        attack_settings = RunSettings.model_validate({
            "method": "best-of-k", "max_attempts": 1_000_000, "attempts_per_step": 8, "max_new_tokens": 48,
            "stop_at_first_success": False, **overrides})
        scheduler.add("attacker", ProblemRun(Problem.model_validate(problem), attack_settings, policy,
                                             name="attacker",
                                             verify=lambda p, c: pool.verify_batch(p, c, lane="attacker",
                                                                                   budget_s=600)))
    try:
        while not victim.done:
            failures = scheduler.step().failures
            assert "victim" not in failures, failures
            if "attacker" in failures:
                print(f"  attacker failed: {failures['attacker']}")
                scheduler.close("attacker")
        assert all(a.verdict == "ok" for a in victim.attempts), [a.feedback for a in victim.attempts]
    finally:
        scheduler.close_all()
        pool.close_lane("attacker")
        pool.close_lane("victim")
    return (finished[-1] - finished[0]) / (len(finished) - 1)  # the first step is the warm-up


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--scenarios", default=",".join(["alone", *ATTACKERS]))
    args = parser.parse_args()
    policy, engine, _ = load(args)
    results = {}
    with VerifierPool(max_workers=1) as pool:
        for scenario in args.scenarios.split(","):
            attacker = None if scenario == "alone" else scenario
            results[scenario] = victim_seconds_per_step(policy, engine, pool, attacker, args.steps)
            ratio = results[scenario] / results["alone"] if "alone" in results else float("nan")
            print(f"{scenario:20s} victim {results[scenario]:7.2f} s/step   {ratio:5.2f}x alone", flush=True)


if __name__ == "__main__":
    main()
