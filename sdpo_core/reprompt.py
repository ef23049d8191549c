"""Self-teacher contexts: the question plus what the run has learned about it, as the reference code builds them.

    {question}{solution section}{feedback section}\\n\\nCorrectly solve the original question.\\n

The teacher re-scores the student's own response tokens after this prompt (no new sampling). Rules (reference
implementation lasgroup/SDPO, defaults used in all its scripts):
- the demonstration is the first *other* successful attempt of the same step (a sample's own success is never
  its demonstration), with <think>...</think> removed;
- the attempt's own feedback is used when there is no demonstration (feedback_only_without_solution);
- a sample with neither gets no teacher context and contributes zero loss;
- an over-long reprompt is shortened inside the feedback (then the demonstration), never by cutting the final
  instruction or the chat template's generation prompt (the reference right-truncates, which can cut both).

Multi-turn prompts (the baseline) use the same sections: the question, the accumulated feedback, the instruction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdpo_core.problem import Problem
from sdpo_core.settings import SDPOSettings

SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{solution}\n\n"
FEEDBACK_TEMPLATE = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}\n\n"
MULTI_FEEDBACK_TEMPLATE = "\nThe following is feedback from your unsuccessful earlier attempts:\n\n{feedback}\n\n"
INSTRUCTION = "\n\nCorrectly solve the original question.\n"
TRUNCATION_MARK = " ...[shortened]"

_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)

Tokenize = Callable[[list[dict[str, str]]], list[int]]  # chat messages -> prompt ids (template applied)


@dataclass
class AttemptOutcome:
    """What the teacher context of one attempt depends on."""

    text: str
    reward: float
    feedback: str


def strip_thinking(text: str) -> str:
    return _THINK.sub("", text).strip()


def reprompt_text(question: str, solution: str | None, feedback: str | None) -> str:
    """The teacher's user message."""
    solution_part = SOLUTION_TEMPLATE.format(solution=solution) if solution else ""
    feedback_part = FEEDBACK_TEMPLATE.format(feedback=feedback) if feedback else ""
    return f"{question}{solution_part}{feedback_part}{INSTRUCTION}"


def teacher_sections(
    outcomes: Sequence[AttemptOutcome], settings: SDPOSettings
) -> list[tuple[str | None, str | None] | None]:
    """(demonstration, feedback) per attempt of one step, or None where the attempt gets no teacher context."""
    successes = [i for i, o in enumerate(outcomes) if o.reward >= settings.success_threshold]
    sections: list[tuple[str | None, str | None] | None] = []
    for i, outcome in enumerate(outcomes):
        others = [j for j in successes if j != i]
        solution = outcomes[others[0]].text if others else None
        if solution is not None and settings.remove_thinking:
            solution = strip_thinking(solution)
        feedback = outcome.feedback.strip() if settings.include_feedback else ""
        if settings.feedback_only_without_solution and solution:
            feedback = ""
        sections.append((solution or None, feedback or None) if (solution or feedback) else None)
    return sections


def _shorten(text: str, keep_chars: int) -> str:
    return text[: max(0, keep_chars)].rstrip() + TRUNCATION_MARK


def _fit_section(ids_with: Callable[[str], list[int]], text: str, max_tokens: int) -> str:
    """The longest head of `text` (marked as shortened) whose prompt fits; bisection, O(log n) tokenisations."""
    if len(ids_with(_shorten(text, 0))) > max_tokens:
        return _shorten(text, 0)
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(ids_with(_shorten(text, mid))) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return _shorten(text, lo)


def fit_prompt(
    problem: Problem, tokenize: Tokenize, max_tokens: int, solution: str | None, feedback: str | None
) -> list[int]:
    """Prompt ids of the reprompt, the feedback and then the demonstration shortened until it fits max_tokens."""

    def ids_for(sol: str | None, fb: str | None) -> list[int]:
        return tokenize(problem.chat(question=reprompt_text(problem.question, sol, fb)))

    ids = ids_for(solution, feedback)
    if len(ids) > max_tokens and feedback:
        feedback = _fit_section(lambda fb: ids_for(solution, fb), feedback, max_tokens)
        ids = ids_for(solution, feedback)
    if len(ids) > max_tokens and solution:
        solution = _fit_section(lambda sol: ids_for(sol, feedback), solution, max_tokens)
        ids = ids_for(solution, feedback)
    return ids  # a question too long on its own stays whole, as the student saw it


def joined_feedback(feedbacks: Sequence[str]) -> str:
    """Several feedbacks as one section's text, oldest first, numbered as the attempts they came from."""
    return "\n\n".join(f"Attempt {i + 1}: {fb}" for i, fb in enumerate(feedbacks))


def fit_feedbacks(problem: Problem, tokenize: Tokenize, max_tokens: int, solution: str | None,
                  feedbacks: Sequence[str]) -> list[int]:
    """Prompt ids of the reprompt with several feedbacks (oldest first, numbered; one alone is the plain reprompt):
    the oldest are dropped whole until it fits, and the last one left is shortened if it alone does not."""
    kept = list(feedbacks)
    while len(kept) > 1:
        ids = tokenize(problem.chat(question=reprompt_text(problem.question, solution, joined_feedback(kept))))
        if len(ids) <= max_tokens:
            return ids
        kept.pop(0)
    return fit_prompt(problem, tokenize, max_tokens, solution, kept[0] if kept else None)


def multi_turn_text(question: str, feedbacks: Sequence[str]) -> str:
    """The multi-turn baseline's user message: the question, earlier feedback (oldest first), the instruction."""
    if not feedbacks:
        return question
    return f"{question}{MULTI_FEEDBACK_TEMPLATE.format(feedback=joined_feedback(feedbacks))}{INSTRUCTION}"


def multi_turn_prompt(problem: Problem, tokenize: Tokenize, feedbacks: Sequence[str], max_tokens: int) -> list[int]:
    """Prompt ids with as much recent feedback as fits: the oldest feedback is dropped first."""
    return _multi_turn_fit(problem, tokenize, feedbacks, max_tokens)[0]


def feedback_kept(problem: Problem, tokenize: Tokenize, feedbacks: Sequence[str], max_tokens: int) -> int:
    """How many of `feedbacks` (the newest) the multi-turn prompt holds within `max_tokens`."""
    return _multi_turn_fit(problem, tokenize, feedbacks, max_tokens)[1]


def _multi_turn_fit(problem: Problem, tokenize: Tokenize, feedbacks: Sequence[str], max_tokens: int
                    ) -> tuple[list[int], int]:
    kept = list(feedbacks)
    while True:
        ids = tokenize(problem.chat(question=multi_turn_text(problem.question, kept)))
        if len(ids) <= max_tokens or not kept:
            return ids, len(kept)
        kept.pop(0)
