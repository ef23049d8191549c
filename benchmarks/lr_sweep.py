"""Which AdamW learning rate suits a LoRA adapter under SDPO? A measurement, not a test.

For each learning rate: a fresh adapter (rank 16, EMA teacher, the default settings otherwise) takes S updates on
one fixed batch of base-model attempts with their verifier feedback. We print
- train: the SDPO loss (the student-teacher divergence) on that batch after S updates, relative to before;
- held-out: the same loss on another batch of attempts of the same problem, relative to before (does the
  distillation generalise to attempts it did not see?);
- drift: mean per-token KL(adapter || base model) on the held-out attempts' own prompts (how far the policy moved).

    python benchmarks/lr_sweep.py [--model M] [--problem examples/arithmetic.json] [--steps 8]
"""

from __future__ import annotations

import time

from scaffold import load, script_parser

from sdpo_core.engine import GenerationRequest
from sdpo_core.loop import distill_samples
from sdpo_core.records import Attempt
from sdpo_core.settings import SDPOSettings
from sdpo_core.teacher import drop_teacher, init_teacher
from sdpo_core.update import DistillSample, distillation_loss, make_optimizer, sdpo_update
from sdpo_core.verifiers import verify_attempts


def attempts_batch(policy, engine, problem, seed, n, max_new_tokens):
    prompt = policy.chat_ids(problem.chat())
    request = GenerationRequest(prompt, None, seed, list(range(1, n + 1)), max_new_tokens)
    completions = engine.generate([request])[0]
    verdicts = verify_attempts(problem, [c.text for c in completions])
    attempts = [Attempt(index=i, step=1, text=c.text, token_count=len(c.token_ids), truncated=c.truncated,
                        reward=v.reward, solved=v.solved, feedback=v.feedback)
                for i, (c, v) in enumerate(zip(completions, verdicts), 1)]
    return prompt, completions, attempts


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--attempts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lrs", default="1e-6,1e-5,3e-5,1e-4,3e-4,1e-3")
    args = parser.parse_args()
    policy, engine, problem = load(args)
    train = attempts_batch(policy, engine, problem, seed=0, n=args.attempts, max_new_tokens=args.max_new_tokens)
    held = attempts_batch(policy, engine, problem, seed=1, n=args.attempts, max_new_tokens=args.max_new_tokens)
    drift_settings = SDPOSettings(teacher="frozen", teacher_context="feedback", alpha=1.0, top_k=None, is_clip=None)
    drift_samples = [DistillSample(held[0], held[0], c.token_ids, c.logprobs) for c in held[1] if c.token_ids]

    print(f"model={args.model or 'smollm2-135m-instruct'} problem={problem.id} steps={args.steps} "
          f"attempts={args.attempts} solved(train/held)={sum(a.solved for a in train[2])}/{sum(a.solved for a in held[2])}")
    print(f"{'lr':>8} {'train loss':>11} {'train ratio':>11} {'held-out ratio':>14} {'drift KL':>9} {'s/update':>9}")
    for lr in (float(x) for x in args.lrs.split(",")):
        settings = SDPOSettings(learning_rate=lr)
        policy.create_adapter("sweep", settings, seed=0)
        init_teacher(policy, "sweep", settings, seed=0)
        optimizer = make_optimizer(policy, "sweep", settings)
        train_samples = distill_samples(problem, policy, settings, *train)
        held_samples = distill_samples(problem, policy, settings, *held)
        held_before = distillation_loss(policy, "sweep", held_samples, settings)
        clock = time.perf_counter()
        losses = [sdpo_update(policy, optimizer, "sweep", train_samples, settings).loss for _ in range(args.steps)]
        per_update = (time.perf_counter() - clock) / args.steps
        train_after = distillation_loss(policy, "sweep", train_samples, settings)
        held_after = distillation_loss(policy, "sweep", held_samples, settings)
        drift = distillation_loss(policy, "sweep", drift_samples, drift_settings)
        print(f"{lr:>8.0e} {losses[0]:>11.4f} {train_after / losses[0]:>11.3f} {held_after / held_before:>14.3f} "
              f"{drift:>9.4f} {per_update:>9.1f}")
        drop_teacher(policy, "sweep")
        policy.delete_adapter("sweep")


if __name__ == "__main__":
    main()
