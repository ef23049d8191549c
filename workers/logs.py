"""Logs as one JSON object per line (or plain text), carrying the job, tenant and worker they concern.

    {"ts": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "workers.worker", "message": "job ...: running",
     "job_id": "job_...", "tenant": "team-a", "worker": "host-12-ab01"}

The ids come from `extra={"job_id": ...}` on a call, else from the context variables that `log_context` sets
(asyncio tasks and `asyncio.to_thread` inherit them). `sdpo serve` and `sdpo worker` call `configure` with their
settings' log_format (`--log-format` or SDPO_LOG_FORMAT, else text; the container images set json).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator

FIELDS = ("job_id", "tenant", "worker")
FORMATS = ("json", "text")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"sdpo_log_{name}", default=None) for name in FIELDS
}
# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
# uvicorn adds `color_message` (the message with terminal colours): left out.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName",
                                                                          "color_message"}


def set_context(**ids: str | None) -> None:
    """Attach ids to every later log line of this task (and the tasks and threads it starts)."""
    for name, value in ids.items():
        _context[name].set(value)


@contextlib.contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Attach ids to the log lines inside the block."""
    tokens = [(name, _context[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for name, token in reversed(tokens):
            _context[name].reset(token)


def _ids(record: logging.LogRecord) -> dict[str, str]:
    ids = {}
    for name in FIELDS:
        value = getattr(record, name, None) or _context[name].get()
        if value:
            ids[name] = str(value)
    return ids


# What could end a text log line early or start a forged one (a path with %0A, a tenant's string): C0 and C1 control
# characters, DEL, and the characters Python's splitlines and some viewers take for line breaks. Written escaped.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029)}  # json.dumps leaves them raw


def one_line(text: str) -> str:
    """`text` with every character that could break a log line written as an escape."""
    return text.translate(_ESCAPES)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the ids, other `extra=` fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line: dict[str, object] = {"ts": ts, "level": record.levelname, "logger": record.name,
                                   "message": record.getMessage(), **_ids(record)}
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in FIELDS and not key.startswith("_"):
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False).translate(_JSON_ESCAPES)


class TextFormatter(logging.Formatter):
    """The classic line, with the ids appended as key=value. A record is exactly one line that starts at the left
    margin: the message and ids have their control characters escaped, and a traceback below it is indented, so
    nothing a request carries can start a line that reads as another record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        ids = " ".join(f"{k}={one_line(v)}" for k, v in _ids(record).items())
        if ids:
            text += f" [{ids}]"
        details = [self.formatException(record.exc_info)] if record.exc_info else []
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for detail in details:
            text += "".join(f"\n    {one_line(line)}" for line in detail.splitlines())
        return text


def configure(log_format: str = "text", level: str | int = "INFO") -> None:
    """Send every log line (ours, uvicorn's, libraries') to stderr in one format (the processes pass their
    settings' log_format, SDPO_LOG_FORMAT)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not '{log_format}'")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's loggers go through ours
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("botocore").setLevel(logging.WARNING)  # it announces where it found credentials at INFO
    logging.captureWarnings(True)  # warnings become log lines too
    if log_format == "json":  # progress bars (model loading) would put lines on stderr that are not JSON
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
