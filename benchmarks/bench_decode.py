"""Useful tokens per second: our refilling decode loop against plain `model.generate` on the same prompts.

Plain `generate` runs every batch until its longest attempt ends, so short attempts leave their slots decoding
padding; the engine hands a finished attempt's slot to a waiting one. Both sample at temperature 1 with the same
cap; "useful" tokens are the attempts' own tokens up to their end-of-sequence token.

    python benchmarks/bench_decode.py [--model M] [--attempts 64] [--batch 32] [--max-new-tokens 160]
"""

from __future__ import annotations

import time

import torch
from scaffold import load, script_parser

from sdpo_core.engine import GenerationRequest
from sdpo_core.policy import LoraPolicy


def plain_generate(policy: LoraPolicy, prompt_ids: list[int], attempts: int, batch: int, max_new: int) -> tuple[int, int]:
    """(useful tokens, decoded slots) of HF generate in batches of `batch`."""
    stop = policy.stop_token_ids
    useful = slots = 0
    for start in range(0, attempts, batch):
        n = min(batch, attempts - start)
        ids = torch.tensor([prompt_ids] * n, device=policy.device)
        out = policy.base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                   top_k=0, top_p=1.0, max_new_tokens=max_new, pad_token_id=policy.tokenizer.pad_token_id)
        new = out[:, ids.shape[1]:]
        slots += new.numel()
        for row in new.tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
            useful += end
    return useful, slots


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--attempts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    policy, engine, problem = load(args, engine="transformers", max_batch_size=args.batch)  # its loop is the subject
    prompt = policy.chat_ids(problem.chat())

    torch.manual_seed(0)
    clock = time.perf_counter()
    useful, slots = plain_generate(policy, prompt, args.attempts, args.batch, args.max_new_tokens)
    plain_s = time.perf_counter() - clock

    request = GenerationRequest(prompt, None, 0, list(range(1, args.attempts + 1)), args.max_new_tokens)
    clock = time.perf_counter()
    completions = engine.generate([request])[0]
    engine_s = time.perf_counter() - clock
    engine_useful = sum(len(c.token_ids) for c in completions)
    engine_slots = engine.decode_steps  # batched steps; slots = sum of rows per step is <= batch * steps

    print(f"{args.attempts} attempts, batch {args.batch}, cap {args.max_new_tokens} tokens, {policy.device}")
    print(f"plain generate : {useful} useful tokens of {slots} decoded slots ({1 - useful / slots:.0%} padding), "
          f"{plain_s:.1f} s, {useful / plain_s:.1f} useful tokens/s")
    print(f"refilling loop : {engine_useful} useful tokens, {engine_slots} batched decode steps, {engine_s:.1f} s, "
          f"{engine_useful / engine_s:.1f} useful tokens/s")
    print(f"useful tokens/s, refilling / plain: {(engine_useful / engine_s) / (useful / plain_s):.2f}x")


if __name__ == "__main__":
    main()
