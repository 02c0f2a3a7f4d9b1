"""The gateway's log lines: one access line per request, and the request id on every line logged during one.

Plain text by default; JSON lines (:class:`inference_worker.logs.JsonFormatter`) when
``TORCHGATE_LOG_FORMAT=json``, where the access line's fields (method, path, status, duration_ms, model,
version, samples, batch_size, worker, request_id) are JSON fields of their own.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sys
import threading
from typing import Any

from flask import g, has_request_context

from gateway.trace import RequestTrace
from inference_worker import logs

access = logging.getLogger("torchgate.access")

TEXT_FORMAT = "%(asctime)s gateway[%(process)d] %(levelname)s %(message)s"


def log_request(method: str, path: str, status: int, seconds: float, trace: RequestTrace) -> None:
    """Write the access line of one answered request."""
    if not access.isEnabledFor(logging.INFO):
        return
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
    extra = " ".join(
        f"{k}={fields[k]}" for k in ("model", "version", "samples", "batch_size", "worker") if k in fields
    )
    access.info(
        "%s %s %d %.1fms %s%srequest_id=%s",
        method,
        path,
        status,
        seconds * 1000,
        extra,
        " " if extra else "",
        trace.request_id,
        extra={"access": fields},
    )


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

    A request thread only puts the record in a queue; the writer formats whatever has queued up and writes it
    in one call. Records still queued at exit are written by an ``atexit`` hook.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child starts its own queue and writer
        atexit.register(self.flush_all)

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self._writer is None:
            self._start()
        self._queue.put(record)

    def _start(self) -> None:
        with self._start_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run, args=(self._queue,), name="log-writer", daemon=True
                )
                self._writer.start()

    def _run(self, records: queue.SimpleQueue[logging.LogRecord | None]) -> None:
        while True:
            record = records.get()
            lines = []
            while record is not None:
                lines.append(self._format(record))
                try:
                    record = records.get_nowait()
                except queue.Empty:
                    break
            self._write("".join(lines))

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
        """Write every queued record now (at exit)."""
        lines = []
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if record is not None:
                lines.append(self._format(record))
        if lines:
            self._write("".join(lines))


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
