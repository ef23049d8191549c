"""Auto's feedback shift: scoring each reprompt once per group (sdpo_core.auto.feedback_shift) against every row in
one pass with only the common prefix shared (how it was scored before), same process, same attempts.

    python benchmarks/bench_shift.py --problem runs/forest.json --attempts 8 --repeats 2

The problem's verifier gives one feedback to the attempts (a report-first checklist, log feedback by default: the
accumulate family's forest-owl-lantern), so the attempts share their reprompt as a step's attempts mostly do.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from scaffold import load, script_parser

from sdpo_core.auto import feedback_shift
from sdpo_core.measure.discovery import FAMILIES
from sdpo_core.records import Attempt
from sdpo_core.reprompt import fit_feedbacks
from sdpo_core.settings import SDPOSettings
from sdpo_core.verifiers import verify_attempts


@torch.no_grad()
def one_pass_shift(policy, problem, attempts, ids, settings):
    """The shift as scored before: every teacher and control row in one forward pass."""
    control = fit_feedbacks(problem, policy.chat_ids, settings.max_reprompt_tokens, None, [settings.control_feedback])
    sequences = []
    for attempt, tokens in zip(attempts, ids, strict=True):
        teacher = fit_feedbacks(problem, policy.chat_ids, settings.max_reprompt_tokens, None, [attempt.feedback])
        sequences += [teacher + tokens, control + tokens]
    lengths = [len(t) for t in ids for _ in range(2)]
    log_probs = F.log_softmax(policy.head(policy.response_hidden(sequences, lengths, None)).float(), dim=-1)
    targets = torch.tensor([t for tokens in ids for t in tokens + tokens])
    chosen = log_probs.gather(-1, targets[:, None])[:, 0].split(lengths)
    return [(chosen[2 * i].mean() - chosen[2 * i + 1].mean()).item() for i in range(len(ids))]


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--attempts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.set_defaults(problem=None)
    args = parser.parse_args()
    if args.problem is None:
        rows = [json.loads(line) for line in FAMILIES["accumulate"].read_text().splitlines() if line.strip()]
        row = next(r for r in rows if r["id"] == "forest-owl-lantern")
        args.problem = "/tmp/bench-shift-problem.json"
        with open(args.problem, "w") as f:
            json.dump({k: v for k, v in row.items() if k != "id"}, f)
    policy, _, problem = load(args)
    texts = [f"The forest was quiet at night and the trees stood tall under the moon {i}." for i in range(args.attempts)]
    verdicts = verify_attempts(problem, texts)
    ids = [policy.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    attempts = [Attempt(index=i, step=2, text=t, token_count=len(x), truncated=False, reward=v.reward, solved=False,
                        feedback=v.feedback) for i, (t, x, v) in enumerate(zip(texts, ids, verdicts, strict=True))]
    print(f"{args.attempts} attempts, {len(set(a.feedback for a in attempts))} distinct feedback of "
          f"{len(policy.tokenizer.encode(attempts[0].feedback))} tokens")
    times: dict[str, list[float]] = {"one pass": [], "grouped": []}
    for _ in range(args.repeats):
        for name in times:
            start = time.perf_counter()
            shifts = (one_pass_shift(policy, problem, attempts, ids, SDPOSettings()) if name == "one pass" else
                      feedback_shift(policy, problem, attempts, ids, SDPOSettings(), limit=len(attempts))[0])
            times[name].append(time.perf_counter() - start)
            print(f"{name:9s} {times[name][-1]:6.2f} s  mean shift {sum(shifts) / len(shifts):+.4f}")
    best = {name: min(values) for name, values in times.items()}
    print(f"grouped is {best['one pass'] / best['grouped']:.2f}x faster (best of {args.repeats})")


if __name__ == "__main__":
    main()
