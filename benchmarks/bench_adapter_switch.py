"""What switching the active adapter costs next to a forward pass, with many jobs' adapters on one worker.

    python benchmarks/bench_adapter_switch.py [--model M] [--adapters 1,16,32] [--repeats 20]

An SDPO update runs several passes per micro-batch (student, feedback teacher, control teacher, anchor), each
under a different adapter or none. peft's switches (`set_adapter`, the `disable_adapter` context) walk every
module of the model and toggle every adapter's requires_grad, so they grow with the number of adapters loaded;
LoraPolicy switches only the LoRA layers' active list. Same process, same model: per switch, peft's pair
(disable the adapters, then set one active) against LoraPolicy's pair (base, then the adapter), and one forward of
8 attempts x 64 tokens for scale.
"""

from __future__ import annotations

import argparse
import time

import torch

from sdpo_core.models import load_model_and_tokenizer
from sdpo_core.policy import LoraPolicy, _key
from sdpo_core.settings import SDPOSettings


def seconds(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--adapters", default="1,16,32")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args.model, device="cpu")
    policy = LoraPolicy(model, tokenizer)
    sequences = [[1 + (i * 7 + t) % 500 for t in range(64)] for i in range(8)]

    def peft_pair() -> None:
        with policy.peft.disable_adapter():
            pass
        policy.peft.set_adapter(_key("job-0"))

    def policy_pair() -> None:
        with policy._active(None):
            pass
        with policy._active("job-0"):
            pass

    print(f"{'adapters':>8} {'peft switch ms':>15} {'ours ms':>8} {'ratio':>7} {'forward ms':>11}")
    created = 0
    for count in (int(n) for n in args.adapters.split(",")):
        while created < count:
            policy.create_adapter(f"job-{created}", SDPOSettings(), seed=created)
            created += 1
        peft_s, ours_s = seconds(peft_pair, args.repeats), seconds(policy_pair, args.repeats)
        with torch.no_grad():
            forward_s = seconds(lambda: policy.response_hidden(sequences, [32] * 8, "job-0"), 3)
        print(f"{count:>8} {peft_s * 1e3:>15.1f} {ours_s * 1e3:>8.2f} {peft_s / ours_s:>6.0f}x {forward_s * 1e3:>11.1f}")


if __name__ == "__main__":
    main()
