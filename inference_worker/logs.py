"""Logging for every torchgate process: plain text by default, JSON lines when asked."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# Control characters (C0, DEL, C1, Unicode line breaks) and the backslash, as nginx writes them in its access
# log: a client's "%0a" in a path cannot start a forged line, nor "%00" make the log a binary file.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x5C: "\\\\", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    """Return ``text`` with control characters and backslashes escaped (``\\x0a``, ``\\\\``): one line."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """Plain lines whose fields cannot break the line: control characters are escaped (a traceback is not)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields given."""

    RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self.RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: str | None = None, level: int = logging.INFO) -> None:
    """Set up the root logger on stderr; ``log_format`` "json" (or TORCHGATE_LOG_FORMAT=json) for JSON
    lines."""
    chosen = (log_format or os.environ.get("TORCHGATE_LOG_FORMAT") or "text").lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
