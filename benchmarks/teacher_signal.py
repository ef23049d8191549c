"""What the self-teacher knows that the student does not, on the built-in hard problems: the learning signal SDPO has.

SDPO moves the student towards the teacher, the same model reading the attempt after a feedback-informed prompt.
If that prompt does not change how likely the model finds a right or a wrong answer, there is nothing to distil.
For each problem this scores two fixed answers, "The answer is <right>." and "The answer is <wrong>.", by their
mean log-probability per token under three contexts: the plain prompt (the student), the reprompt with the
verifier's feedback on the wrong answer (what the teacher sees before any solution exists: discovery), and the
reprompt with the right answer as a successful sibling's demonstration.

    python benchmarks/teacher_signal.py [--model M]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from sdpo_core.measure.discovery import load_problems
from sdpo_core.models import load_model_and_tokenizer
from sdpo_core.policy import LoraPolicy
from sdpo_core.reprompt import fit_prompt
from sdpo_core.verifiers import verify_attempts


@torch.no_grad()
def mean_logprob(policy: LoraPolicy, prompt: list[int], response: str) -> float:
    ids = policy.tokenizer(response, add_special_tokens=False)["input_ids"]
    hidden = policy.response_hidden([prompt + ids], [len(ids)], None)
    logprobs = policy.head(hidden).float().log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(ids)[:, None]).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--problems", default=None, help="JSONL (default: the built-in hard set)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model, tokenizer = load_model_and_tokenizer(args.model)
    policy = LoraPolicy(model, tokenizer)

    print(f"{'problem':<20} {'answer':<7} {'student':>8} {'+feedback':>10} {'+demo':>8}   (mean log-prob per token)")
    for problem in load_problems(args.problems):
        answer = problem.verifier.answer
        right, wrong = f"The answer is {answer}.", f"The answer is {answer + 1}."
        feedback = verify_attempts(problem, [wrong])[0].feedback
        contexts = {
            "student": policy.chat_ids(problem.chat()),
            "feedback": fit_prompt(problem, policy.chat_ids, 4096, None, feedback),
            "demo": fit_prompt(problem, policy.chat_ids, 4096, right, None),
        }
        for label, response in (("right", right), ("wrong", wrong)):
            scores = [mean_logprob(policy, prompt, response) for prompt in contexts.values()]
            print(f"{problem.id:<20} {label:<7} {scores[0]:>8.3f} {scores[1]:>10.3f} {scores[2]:>8.3f}")
    print("SDPO pushes the student towards the teacher's column: +feedback should lower 'wrong' (and not lower "
          "'right'), +demo should raise 'right'.")


if __name__ == "__main__":
    main()
