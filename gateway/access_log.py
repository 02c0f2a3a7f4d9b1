"""The gateway's log lines: one access line per request, and the request id on every line logged during one.

Plain text by default; JSON lines (:class:`inference_worker.logs.JsonFormatter`) when
``TORCHGATE_LOG_FORMAT=json``, where the access line's fields (method, path, status, duration_ms, model,
version, samples, batch_size, worker, request_id) are JSON fields of their own.

Every line goes to stderr from one writer thread (:class:`BackgroundStreamHandler`). An access line is the
one line every request writes, so when logging is configured as :func:`logconfig` makes it, the request
thread formats it itself, exactly as the formatter would, and hands the text to the writer: no
``LogRecord``, no filter, no handler lock, and no thread switch per line.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import orjson
from flask import g, has_request_context

from gateway.trace import RequestTrace
from inference_worker import logs

access = logging.getLogger("torchgate.access")

TEXT_FORMAT = "%(asctime)s gateway[%(process)d] %(levelname)s %(message)s"
# Once woken, the writer lets lines gather this long, then writes them in one call.
BATCH_SECONDS = 0.02
# Lines held while stderr is blocked; past that they are counted, dropped and reported.
MAX_PENDING = 100_000
# At exit, how long to wait for a write in progress (a blocked stderr) before writing the rest anyway.
EXIT_WAIT_SECONDS = 5.0


def log_request(method: str, path: str, status: int, seconds: float, trace: RequestTrace) -> None:
    """Write the access line of one answered request."""
    if not access.isEnabledFor(logging.INFO):
        return
    extra = ""
    if trace.model:
        extra = f"model={trace.model} version={trace.version} samples={trace.samples} "
        if trace.answered:
            extra += f"batch_size={trace.batch_size} worker={trace.worker} "
    elif trace.answered:
        extra = f"batch_size={trace.batch_size} worker={trace.worker} "
    message = f"{method} {path} {status} {seconds * 1000:.1f}ms {extra}request_id={trace.request_id}"
    handler = direct_handler()
    if handler is None:  # logging configured otherwise: the record goes the ordinary way
        fields = access_fields(method, path, status, seconds, trace)
        access.info("%s", message, extra={"access": fields, "request_id": trace.request_id})
    elif handler.line_style() == "json":
        entry = {
            "time": _clock(time.time(), iso=True),
            "level": "INFO",
            "logger": access.name,
            "message": message,
            "pid": _pid,
            "access": access_fields(method, path, status, seconds, trace),
        }
        if trace.request_id:  # the line may be written after the request's context is gone
            entry["request_id"] = trace.request_id
        data = orjson.dumps(entry, default=str)
        # orjson writes other characters as they are, U+2028 among them: a line break to some readers
        handler.write_line(data.decode() if data.isascii() else json.dumps(entry, default=str))
    else:
        handler.write_line(text_line(message))


def access_fields(method: str, path: str, status: int, seconds: float, trace: RequestTrace) -> dict[str, Any]:
    """Return the access line's fields (JSON lines carry them as the ``access`` object)."""
    fields: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "request_id": trace.request_id,
    }
    if trace.model:
        fields.update(model=trace.model, version=trace.version, samples=trace.samples)
    if trace.answered:
        fields.update(batch_size=trace.batch_size, worker=trace.worker)
    return fields


# ISO (JSON lines) or not: the last second whose text was made, and that text
_seconds: dict[bool, tuple[int, str]] = {}
_pid = os.getpid()


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_new_pid)


def _clock(now: float, iso: bool = False) -> str:
    """Return the time of a line as the formatter writes it: local ``2026-11-30 20:21:25,874`` for text (as
    logging's asctime), UTC ``2026-11-30T20:21:25.874Z`` for JSON (as JsonFormatter)."""
    whole = int(now)
    cached = _seconds.get(iso)
    if cached is None or cached[0] != whole:
        text = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            if iso
            else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        )
        cached = _seconds[iso] = (whole, text)
    msecs = int((now - whole) * 1000)  # as logging.LogRecord computes msecs
    return f"{cached[1]}.{msecs:03d}Z" if iso else f"{cached[1]},{msecs:03d}"


def text_line(message: str) -> str:
    """Return an INFO line of ``torchgate.access`` as :class:`TextFormatter` writes it (no record made)."""
    line = f"{_clock(time.time())} gateway[{_pid}] INFO {message}"
    if line.isascii() and line.isprintable() and "\\" not in line:
        return line  # nothing to escape (the common case, checked in C)
    return logs.escape_controls(line)


def direct_handler() -> BackgroundStreamHandler | None:
    """Return the handler an access line can be written to directly, or None to log it as a record.

    That is when :func:`logconfig`'s handler, with its own formatter, is the only one an INFO record of
    ``torchgate.access`` would reach, so that writing the line directly is exactly what logging would do.
    """
    found = None
    logger: logging.Logger | None = access
    if access.filters:
        return None
    while logger is not None:
        for handler in logger.handlers:
            if found is not None or type(handler) is not BackgroundStreamHandler or not handler.line_style():
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    return found


def current_request_id() -> str | None:
    """Return the id of the request this thread is answering, if any."""
    if not has_request_context():
        return None
    trace = g.get("trace")
    return trace.request_id if isinstance(trace, RequestTrace) else None


class RequestIdFilter(logging.Filter):
    """Give every record logged while answering a request that request's id (attribute ``request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = current_request_id()
            if request_id:
                record.request_id = request_id
        return True


class TextFormatter(logs.TextFormatter):
    """Plain lines, control characters escaped; a record with a request id gets `` request_id=...``
    appended."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id and f"request_id={request_id}" not in record.getMessage():
            text += f" request_id={request_id}"
        return text


class BackgroundStreamHandler(logging.Handler):
    """Write records to stderr from a thread of its own, so a request thread never waits on a full pipe.

    A request thread only appends the record (or a line already formatted, :meth:`write_line`) to a deque, and
    wakes the writer only if it is idle; once woken, the writer waits ``BATCH_SECONDS`` for more, formats what
    has queued up and writes it in one call, so that under load a line costs no thread switch. Lines still
    queued at exit are written by an ``atexit`` hook. Past ``MAX_PENDING`` queued lines (stderr blocked),
    lines are dropped and counted, and the count is written when stderr drains.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child starts its own queue and writer
        atexit.register(self.flush_all)

    def _reset(self) -> None:
        self._pending: collections.deque[logging.LogRecord | str] = collections.deque()
        self._wake = threading.Event()
        self._idle = True  # the writer waits for _wake (or has not started): the next line must wake it
        self._dropped = 0
        self._writing = threading.Lock()  # held while lines are taken from the deque and written
        self._writer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._style_key: tuple[Any, ...] = ()
        self._style: str | None = None

    def line_style(self) -> str | None:
        """Return "text" or "json" when an INFO line may be formatted by :func:`log_request` itself and given
        to :meth:`write_line` (this handler's own formatter, level and filters), else None."""
        key = (self.formatter, self.level, len(self.filters))
        if key != self._style_key:
            self._style = None
            formatter = self.formatter
            if self.level <= logging.INFO and all(isinstance(f, RequestIdFilter) for f in self.filters):
                if (
                    type(formatter) is TextFormatter
                    and formatter._fmt == TEXT_FORMAT
                    and not formatter.datefmt
                ):
                    self._style = "text"
                elif type(formatter) is logs.JsonFormatter:
                    self._style = "json"
            self._style_key = key
        return self._style

    def emit(self, record: logging.LogRecord) -> None:
        self._put(record)

    def write_line(self, line: str) -> None:
        """Write one formatted line (no newline) after the records and lines before it."""
        self._put(line)

    def _put(self, item: logging.LogRecord | str) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            return
        self._pending.append(item)
        if self._idle:
            self._idle = False
            if self._writer is None:
                self._start()
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, args=(self._wake,), name="log-writer", daemon=True
                )
                self._writer.start()

    def _run(self, wake: threading.Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            time.sleep(BATCH_SECONDS)
            while True:
                with self._writing:
                    self._write_pending()
                self._idle = True
                if not self._pending:
                    break
                self._idle = False  # a line came after the write but saw the writer busy: write it too

    def _write_pending(self) -> None:
        pending, lines = self._pending, []
        while pending:
            item = pending.popleft()
            lines.append(item + "\n" if isinstance(item, str) else self._format(item))
        if self._dropped:  # the lines dropped came after those queued
            dropped, self._dropped = self._dropped, 0
            lines.append(self._format(self._dropped_record(dropped)))
        if lines:
            self._write("".join(lines))

    def _dropped_record(self, count: int) -> logging.LogRecord:
        return logging.LogRecord(
            "torchgate.gateway",
            logging.WARNING,
            __file__,
            0,
            "%d log lines were dropped: stderr did not take them (%d were waiting)",
            (count, MAX_PENDING),
            None,
        )

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record) + "\n"
        except Exception:  # a record that cannot be formatted must not stop the writer
            return f"unformattable log record from {record.name}\n"

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass

    def flush_all(self) -> None:
        """Write every queued line now (at exit), after any write in progress."""
        writing = self._writing.acquire(timeout=EXIT_WAIT_SECONDS)
        try:
            self._write_pending()
        finally:
            if writing:
                self._writing.release()


def logconfig(level: str, log_format: str) -> dict[str, Any]:
    """Return gunicorn's ``logconfig_dict``: stderr, text or JSON lines, request ids on request lines."""
    formatter = "json" if log_format.lower() == "json" else "plain"
    handler = {
        "()": "gateway.access_log.BackgroundStreamHandler",
        "formatter": formatter,
        "filters": ["request_id"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "gateway.access_log.RequestIdFilter"}},
        "formatters": {
            "plain": {"()": "gateway.access_log.TextFormatter"},
            "json": {"()": "inference_worker.logs.JsonFormatter"},
        },
        "handlers": {"stderr": handler},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False}},
    }
