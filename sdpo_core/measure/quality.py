"""Is an attempt still an answer? Two text measures that catch what a success rate hides.

- meta-talk: the attempt talks about the feedback instead of answering ("The sentence must use the word ...",
  "Correctly solve the original question"): it shares a run of `n` words with the feedback or the reprompt's own
  wording. A self-teacher that reads a reprompt also learns its style; this is how that drift shows.
- repetition: distinct n-grams over all n-grams of the attempt (1.0: no n-gram twice). A student pushed too far
  towards one token degenerates into strings that repeat it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sdpo_core.reprompt import FEEDBACK_TEMPLATE, INSTRUCTION, MULTI_FEEDBACK_TEMPLATE

REPROMPT_WORDING = (FEEDBACK_TEMPLATE.format(feedback=""), MULTI_FEEDBACK_TEMPLATE.format(feedback=""), INSTRUCTION)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def distinct_ratio(text: str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams (1.0 for texts too short to have any)."""
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0


def meta_talk(text: str, feedbacks: Iterable[str], n: int = 4) -> bool:
    """The attempt repeats `n` consecutive words of a feedback or of the reprompt's wording."""
    cues = {g for cue in (*feedbacks, *REPROMPT_WORDING) for g in ngrams(words(cue), n)}
    return any(g in cues for g in ngrams(words(text), n))
