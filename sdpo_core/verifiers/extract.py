"""Lenient extraction of a final answer from free-form model text.

Small models rarely follow format instructions (SmolLM2-135M almost never writes <answer> tags), so `auto`
falls back from tags to \\boxed{} to the last number in the text.
"""

from __future__ import annotations

import re
from typing import Literal

ExtractMode = Literal["auto", "answer_tag", "boxed", "answer_phrase", "last_number", "full"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*\**\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def answer_tag(text: str) -> str | None:
    """Content of the last <answer>...</answer> pair."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}), with nested braces matched."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: the attempt was cut off inside the box


def answer_phrase(text: str) -> str | None:
    """What follows the last 'answer is' / 'Answer:' in the text, up to the end of its line."""
    found = _ANSWER_PHRASE.findall(text)
    if not found:
        return None
    return found[-1].strip().strip("*").rstrip(".").strip() or None


def last_number(text: str) -> str | None:
    """The last number written in the text, thousands separators removed."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_answer(text: str, mode: ExtractMode = "auto", numeric: bool = False) -> str | None:
    """The final answer in `text` according to `mode`; None when there is none.

    `auto` tries <answer> tags, then \\boxed{}, then an 'answer is ...' phrase, then (for numeric answers) the
    last number in the text.
    """
    if mode == "full":
        return text.strip() or None
    if mode == "answer_tag":
        return answer_tag(text)
    if mode == "boxed":
        return boxed(text)
    if mode == "answer_phrase":
        return answer_phrase(text)
    if mode == "last_number":
        return last_number(text)
    for candidate in (answer_tag(text), boxed(text), answer_phrase(text)):
        if candidate is None:
            continue
        if numeric and parse_number(candidate) is None and last_number(candidate) is not None:
            return last_number(candidate)  # "x = 42 apples" inside the tags
        return candidate
    return last_number(text) if numeric else None


def parse_number(text: str) -> float | None:
    """A float from an answer string such as '1,234', '-3.5', '\\frac{1}{2}' or '42.'; None if not a number."""
    cleaned = text.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    frac = re.fullmatch(r"\\d?frac\{([-+]?\d+(?:\.\d+)?)\}\{([-+]?\d+(?:\.\d+)?)\}", cleaned)
    if frac:
        denominator = float(frac.group(2))
        return float(frac.group(1)) / denominator if denominator else None
    simple_fraction = re.fullmatch(r"([-+]?\d+)\s*/\s*(\d+)", cleaned)
    if simple_fraction and float(simple_fraction.group(2)):
        return float(simple_fraction.group(1)) / float(simple_fraction.group(2))
    try:
        return float(cleaned)
    except ValueError:
        return None
