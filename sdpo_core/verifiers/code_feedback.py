"""LeetCode-style feedback on a failed program, in the format of SDPO's code environment (arXiv 2601.20802).

One verdict per attempt, in this order of priority: a runtime error (with the last executed input), a time limit
exceeded, an output limit exceeded, or wrong answers on at most the two shortest failing public tests (input,
output, expected). Each field is cut to 250 characters and 8 lines, the message to 2000 characters, so the
self-teacher's context stays small. Only public tests are ever quoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sdpo_core.verifiers.base import clip_feedback

FIELD_MAX_CHARS = 250
FIELD_MAX_LINES = 8
MAX_WRONG_ANSWERS = 2

FORMAT_FEEDBACK = "Incorrect Format: Put your code inside a ```python ... ``` block."
TRUNCATED_FEEDBACK = (
    "Truncated Attempt: Your response reached the maximum response length before the code block was closed. "
    "Reason more briefly and put the complete code inside a ```python ... ``` block."
)


def field(text: str) -> str:
    """A field cut to FIELD_MAX_LINES lines and FIELD_MAX_CHARS characters, marked when cut."""
    lines = text.rstrip("\n").split("\n")
    cut = "\n".join(lines[:FIELD_MAX_LINES])
    if len(cut) > FIELD_MAX_CHARS:
        cut = cut[:FIELD_MAX_CHARS]
    if cut != text.rstrip("\n"):
        cut += "\n... (truncated)"
    return cut if cut.strip() else "(empty)"


def tail(text: str, lines: int = FIELD_MAX_LINES) -> str:
    """The last lines of an error trace: the exception is at the end."""
    kept = text.strip("\n").split("\n")[-lines:]
    joined = "\n".join(kept)
    return joined[-FIELD_MAX_CHARS:]


@dataclass(frozen=True)
class WrongAnswer:
    """A failing public test: what went in, what came out, what should have."""

    input: str
    output: str
    expected: str


def runtime_error(trace: str, last_input: str, *, input_label: str = "Last Executed Input") -> str:
    return clip_feedback(f"Runtime Error\n{tail(trace) or '(no error message)'}\n\n{input_label}\n{field(last_input)}")


def compile_error(trace: str) -> str:
    return clip_feedback(f"Compile Error\n{tail(trace)}")


def time_limit(last_input: str | None, *, input_label: str = "Last Executed Input") -> str:
    if last_input is None:
        return "Time Limit Exceeded"
    return clip_feedback(f"Time Limit Exceeded\n\n{input_label}\n{field(last_input)}")


def output_limit(last_input: str, limit_bytes: int, *, input_label: str = "Last Executed Input") -> str:
    return clip_feedback(
        f"Output Limit Exceeded\nYour program wrote more than {limit_bytes} bytes.\n\n{input_label}\n{field(last_input)}"
    )


def wrong_answers(failures: Sequence[WrongAnswer]) -> str:
    """Up to the two shortest failing tests, numbered as LeetCode does."""
    shortest = sorted(failures, key=lambda f: len(f.input) + len(f.expected))[:MAX_WRONG_ANSWERS]
    blocks = [
        f"Test Case {k}: Wrong Answer\nInput:\n{field(f.input)}\nOutput:\n{field(f.output)}\nExpected:\n"
        f"{field(f.expected)}"
        for k, f in enumerate(shortest, start=1)
    ]
    return clip_feedback("\n\n".join(blocks))
