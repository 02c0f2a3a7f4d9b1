"""The gateway's log lines: one access line per request, and the request id on every line logged during one.

Plain text by default; JSON lines (:class:`inference_worker.logs.JsonFormatter`) when ``TORCHGATE_LOG_FORMAT=json``,
where the access line's fields (method, path, status, duration_ms, model, version, samples, batch_size, worker,
request_id) are JSON fields of their own.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import g, has_request_context

from gateway.trace import RequestTrace

access = logging.getLogger("torchgate.access")

TEXT_FORMAT = "%(asctime)s gateway[%(process)d] %(levelname)s %(message)s"


def log_request(method: str, path: str, status: int, seconds: float, trace: RequestTrace) -> None:
    """Write the access line of one answered request."""
    fields: dict[str, Any] = {"method": method, "path": path, "status": status,
                              "duration_ms": round(seconds * 1000, 3), "request_id": trace.request_id}
    if trace.model:
        fields.update(model=trace.model, version=trace.version, samples=trace.samples)
    if trace.reply is not None:
        fields.update(batch_size=trace.batch_size, worker=trace.reply.worker)
    extra = " ".join(f"{k}={fields[k]}" for k in ("model", "version", "samples", "batch_size", "worker") if k in fields)
    access.info("%s %s %d %.1fms %s%srequest_id=%s", method, path, status, seconds * 1000, extra,
                " " if extra else "", trace.request_id, extra={"access": fields})


def current_request_id() -> str | None:
    """Return the id of the request this thread is answering, if any."""
    if not has_request_context():
        return None
    trace = g.get("trace")
    if isinstance(trace, RequestTrace) and trace.request_id:
        return trace.request_id
    value = g.get("request_id")
    return value if isinstance(value, str) and value else None


class RequestIdFilter(logging.Filter):
    """Give every record logged while answering a request that request's id (attribute ``request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = current_request_id()
            if request_id:
                record.request_id = request_id
        return True


class TextFormatter(logging.Formatter):
    """Plain lines; a record with a request id not already in its message gets `` request_id=...`` appended."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id and f"request_id={request_id}" not in record.getMessage():
            text += f" request_id={request_id}"
        return text


def logconfig(level: str, log_format: str) -> dict[str, Any]:
    """Return gunicorn's ``logconfig_dict``: stderr, text or JSON lines, request ids on request lines."""
    formatter = "json" if log_format.lower() == "json" else "plain"
    handler = {"class": "logging.StreamHandler", "formatter": formatter, "stream": "ext://sys.stderr",
               "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "gateway.access_log.RequestIdFilter"}},
        "formatters": {"plain": {"()": "gateway.access_log.TextFormatter"},
                       "json": {"()": "inference_worker.logs.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False}},
    }
