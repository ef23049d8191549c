"""Feedback as real tools print it: the unmet requirement inside a few hundred tokens of test-runner or build log.

Real verifiers rarely answer in one clean sentence: a test runner prints its header, the tests that passed, a
traceback with the assertion inside it and a summary; a compiler prints every step of the build before the error.
A checklist can wrap its messages in such a log (`feedback_format`), so that a few feedbacks fill a small prompt
and a method has to find, and keep, the one line that matters.

The log is a pure function of (seed, which checks ran, their messages): the seed comes from the problem, so two
failures on the same requirement print the same text (a multi-turn prompt that drops repeated feedback sees one)
and nothing in it depends on the clock or a random source. Checks are named by position only ("requirement 2"),
so the log reveals nothing about a check it does not report.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Literal

LogFormat = Literal["test_log", "build_log"]
_RULE = 78  # width of pytest's ==== banners


class _Filler(str):
    """A line that may be dropped when the log would not fit (a header or setup line, never a message)."""


def log_seed(*parts: str) -> int:
    """A stable seed (unlike hash(), the same in every process) from the problem's text and spec."""
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def _banner(text: str, char: str = "=") -> str:
    side = max(3, (_RULE - len(text) - 2) // 2)
    return f"{char * side} {text} {char * side}"


def _test_log(rng: random.Random, results: Sequence[tuple[int, str | None]]) -> list[str]:
    """pytest-like lines, filler marked."""
    project = rng.choice(["answer-checks", "grader", "acceptance", "review-suite", "spec-tests"])
    module = rng.choice(["test_answer.py", "test_requirements.py", "test_submission.py", "test_text.py"])
    header = [
        _banner("test session starts"),
        f"platform linux -- Python 3.11.{rng.randint(4, 9)}, pytest-8.{rng.randint(0, 3)}.{rng.randint(0, 4)}, "
        f"pluggy-1.{rng.randint(3, 5)}.0",
        "cachedir: .pytest_cache",
        f"rootdir: /srv/{project}",
        "configfile: pyproject.toml",
        f"plugins: timeout-2.{rng.randint(1, 3)}.0, randomly-3.{rng.randint(10, 15)}.0, xdist-3.{rng.randint(3, 6)}.0",
        f"timeout: {rng.choice([30, 60, 120])}.0s",
        f"Using --randomly-seed={rng.randint(10**8, 10**9 - 1)}",
        "",
    ]
    lines, failures = [], []
    for index, message in results:
        name = f"checks/{module}::test_requirement_{index + 1}"
        lines.append(f"{name} {'PASSED' if message is None else 'FAILED'}")
        if message is not None:
            failures.append((index, name, message))
    captured = [
        _banner("Captured log call", "-"),
        f"INFO     loader:loader.py:{rng.randint(20, 90)} reading the submission from stdin",
        f"DEBUG    loader:loader.py:{rng.randint(91, 160)} normalised whitespace (unicode NFC)",
        f"DEBUG    fixtures:conftest.py:{rng.randint(10, 60)} fixture 'answer' scope=session "
        f"id={rng.getrandbits(48):012x}",
    ]
    body = ["", _banner("FAILURES")]
    summary = ["", _banner("short test summary info")]
    for n, (index, name, message) in enumerate(failures):
        line = rng.randint(40, 240)
        body += [
            _banner(f"test_requirement_{index + 1}", "_"),
            "",
            "answer = <Submission text>",
            "",
            f"    def test_requirement_{index + 1}(answer):",
            f"        result = REQUIREMENTS[{index}].check(answer)",
            ">       assert result.ok, result.message",
            f"E       AssertionError: {message}",
            "E       assert False",
            "E        +  where False = <CheckResult ok=False>.ok",
            "",
            f"checks/{module}:{line}: AssertionError",
        ]
        if n == 0:
            body += [_Filler(c) for c in captured]
        summary.append(f"FAILED {name} - AssertionError: {message}")
    passed = sum(message is None for _, message in results)
    stop = ["!" * 27 + " stopping after 1 failures " + "!" * 24] if len(failures) == 1 else []
    tail = stop + [_banner(f"{len(failures)} failed, {passed} passed in {rng.uniform(0.2, 3.0):.2f}s")]
    return [_Filler(h) for h in header] + lines + body + summary + tail


def _build_log(rng: random.Random, results: Sequence[tuple[int, str | None]]) -> list[str]:
    """make/cc-like lines, filler marked."""
    target = rng.choice(["answer", "submission", "essay", "reply"])
    sources = rng.sample(["lexer", "parser", "tokens", "buffer", "style", "grammar", "words", "layout"], 4)
    header = [
        f"$ make -j{rng.choice([2, 4, 8])} check",
        f"-- The C compiler identification is GNU 12.{rng.randint(1, 3)}.0",
        "-- Detecting C compiler ABI info - done",
        f"-- Configuring done ({rng.uniform(0.1, 0.9):.1f}s)",
        "-- Generating done (0.0s)",
        f"-- Build files have been written to: /build/{target}",
        f"make[1]: Entering directory '/build/{target}'",
    ]
    step = 100 // (len(sources) + len(results) + 1)
    percent = 0
    for source in sources:
        percent += step
        header.append(f"[{percent:3d}%] Building C object CMakeFiles/{target}.dir/src/{source}.c.o")
    lines, errors = [], 0
    for index, message in results:
        percent += step
        lines.append(f"[{percent:3d}%] Checking requirement {index + 1} ... {'ok' if message is None else 'FAILED'}")
        if message is not None:
            errors += 1
            line, col = rng.randint(12, 400), rng.randint(5, 17)
            call = f"require(text, REQUIREMENT_{index + 1});"
            lines += [
                f"src/{target}.c: In function 'check_requirement_{index + 1}':",
                f"src/{target}.c:{line}:{col}: error: {message}",
                f"{line:5d} |     {call}",
                f"      |     {'^' + '~' * (len(call) - 2)}",
            ]
    tail = [
        f"{errors} error{'s' if errors != 1 else ''} generated.",
        f"make[2]: *** [CMakeFiles/{target}.dir/build.make:{rng.randint(70, 200)}: "
        f"CMakeFiles/{target}.dir/src/{target}.c.o] Error 1",
        f"make[1]: *** [CMakeFiles/Makefile2:{rng.randint(80, 120)}: CMakeFiles/{target}.dir/all] Error 2",
        f"make[1]: Leaving directory '/build/{target}'",
        f"make: *** [Makefile:{rng.randint(130, 160)}: check] Error 2",
    ]
    return [_Filler(h) for h in header] + lines + tail


def render_log(fmt: LogFormat, seed: int, results: Sequence[tuple[int, str | None]], max_chars: int) -> str:
    """The log of the checks that ran, (position, failure message or None) in order, within max_chars.

    Filler (header, setup logs) is dropped from its end until the log fits; the lines that carry a message stay.
    """
    lines = (_test_log if fmt == "test_log" else _build_log)(random.Random(seed), results)
    while len("\n".join(lines)) > max_chars:
        filler = [i for i, line in enumerate(lines) if isinstance(line, _Filler)]
        if not filler:
            break  # the messages alone are too long: clip_feedback cuts the end, as for any verifier
        del lines[filler[-1]]
    return "\n".join(lines)
