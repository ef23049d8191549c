"""How long the feedback of a family is, in the model's tokens: how many feedbacks fill a prompt.

Reads the JSON that `sdpo bench signal --json` wrote (each problem's distinct feedback on failed base attempts,
up to three) and prints, per problem, the characters and tokens of that feedback, with the SmolLM2 tokenizer by
default. A family whose feedback is a few hundred tokens fills a 1-2k-token prompt with a handful of failures.

    python benchmarks/feedback_length.py runs/accumulate-signal.json [--model M] [--problems FAMILY]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from sdpo_core.measure.discovery import load_problems
from sdpo_core.models import resolve_model


def span(values: list[int]) -> str:
    if not values:
        return "-"
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("signal_json", type=Path)
    parser.add_argument("--model", help="HF id or local folder (default: the offline smollm2-135m-instruct)")
    parser.add_argument("--problems", help="only the problems of this family or JSONL")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    keep = {p.id for p in load_problems(args.problems)} if args.problems else None
    print("| problem | feedback examples | characters | tokens |")
    print("|---|---:|---:|---:|")
    for row in json.loads(args.signal_json.read_text()):
        if keep is not None and row["problem_id"] not in keep:
            continue
        examples = row["feedback_examples"]
        chars = [len(f) for f in examples]
        tokens = [len(tokenizer(f, add_special_tokens=False)["input_ids"]) for f in examples]
        print(f"| {row['problem_id']} | {len(examples)} | {span(chars)} | {span(tokens)} |")


if __name__ == "__main__":
    main()
