"""Taking the program out of a model's answer: the longest fenced ``` block, as SDPO's code environment does.

A response that opens a fence and never closes it was cut off at the length limit; the feedback says so, since
telling the model its format was wrong would teach the wrong lesson.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An opening fence with an optional language tag on its line, the code, then the closing fence.
_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)
# A response longer than this is cut to its end before scanning: the code comes last.
MAX_SCAN_CHARS = 200_000


@dataclass(frozen=True)
class CodeExtraction:
    """The code found in a response, or why there is none."""

    code: str | None
    truncated: bool  # a fence was opened and never closed, and no complete block exists


def extract_code(text: str) -> CodeExtraction:
    """The longest complete fenced block (language tag dropped), else None with `truncated` set if cut off."""
    text = text[-MAX_SCAN_CHARS:]
    blocks = [(match.group(1), match.end()) for match in _BLOCK.finditer(text)]
    last_end = blocks[-1][1] if blocks else 0
    unclosed = "```" in text[last_end:]
    code = max((body for body, _ in blocks), key=len, default="")
    if code.strip():
        return CodeExtraction(code=code, truncated=False)
    return CodeExtraction(code=None, truncated=unclosed)


def defines_function(code: str, name: str) -> bool:
    """True when `code` has a top-level-looking `def name(`; used to decide whether to prepend a prompt."""
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
