"""Where a sequential method's attempt costs more than a best-of-k sample: a step's seconds, part by part.

`sdpo bench discovery` samples best-of-k in steps of 64 (i.i.d. samples: bigger steps finish sooner) while a
method samples its `attempts_per_step` (8) and must wait for their verdicts before the next step. Measured here on
one problem, in this process, each part against the same work done as best-of-k does it:

    generation       64 attempts as 8 steps of 8 (a method) and as 1 step of 64 (the baseline), plain prompt
    prefill          a step of 8 with the feedback of 4 failures in its prompt (multi-turn, auto) against plain
    verification     one round trip to the verifier pool per step: 8 steps of 8 against 1 of 64 (a python verifier)

    python benchmarks/bench_step_overhead.py [--max-new-tokens 48] [--attempts-per-step 8] [--samples 64]
"""

from __future__ import annotations

import time

from scaffold import load, script_parser

from sdpo_core.engine import GenerationRequest
from sdpo_core.problem import Problem
from sdpo_core.reprompt import multi_turn_prompt
from sdpo_core.verification.verify import verify_function

PYTHON_VERIFIER = {"type": "python", "source": "def verify(completion):\n    return 1.0 if 'lighthouse' in completion "
                   "else 0.0"}


def generate(engine, prompt_ids: list[int], n: int, step: int, max_new_tokens: int) -> tuple[float, list[str]]:
    """Seconds to sample n attempts in steps of `step`, and their texts."""
    clock, texts = time.perf_counter(), []
    for start in range(0, n, step):
        request = GenerationRequest(prompt_ids=prompt_ids, adapter=None, seed=0,
                                    attempt_indices=list(range(start + 1, min(n, start + step) + 1)),
                                    max_new_tokens=max_new_tokens, temperature=1.0)
        texts += [c.text for c in engine.generate([request])[0]]
    return time.perf_counter() - clock, texts


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--attempts-per-step", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    policy, engine, _ = load(args)
    problem = Problem.model_validate({"prompt": "Write one sentence about the ocean.", "verifier": PYTHON_VERIFIER})
    plain = policy.chat_ids(problem.chat())
    feedback = ["The sentence must use the word 'lighthouse'.", "The sentence must be about the ocean.",
                "The sentence must use the word 'lighthouse'; yours does not.", "Write one sentence only."]
    with_feedback = multi_turn_prompt(problem, policy.chat_ids, feedback, 4096)
    n, k, tokens = args.samples, args.attempts_per_step, args.max_new_tokens
    generate(engine, plain, k, k, tokens)  # warm-up
    rows = []
    seconds_small, texts = generate(engine, plain, n, k, tokens)
    seconds_big, _ = generate(engine, plain, n, n, tokens)
    rows.append(("generation, plain prompt", seconds_small, seconds_big))
    seconds_feedback, _ = generate(engine, with_feedback, n, k, tokens)
    rows.append((f"generation, {len(with_feedback)}-token prompt (plain {len(plain)})", seconds_feedback, seconds_small))
    verify = verify_function(problem, lane="bench")
    verify(problem, texts[:k])  # the lane's process starts
    clock = time.perf_counter()
    for start in range(0, n, k):
        verify(problem, texts[start:start + k])
    seconds_steps = time.perf_counter() - clock
    clock = time.perf_counter()
    verify(problem, texts)
    rows.append(("verification round trips", seconds_steps, time.perf_counter() - clock))
    print(f"{n} attempts, {tokens} new tokens, steps of {k} against 1 step of {n} (or the plain prompt)")
    print(f"{'part':<52} {'method s/attempt':>17} {'best-of-k s/attempt':>20} {'ratio':>6}")
    for name, method, baseline in rows:
        print(f"{name:<52} {method / n:>17.3f} {baseline / n:>20.3f} {method / baseline:>6.2f}")


if __name__ == "__main__":
    main()
