"""Trace every request with plain Flask hooks: open its :class:`RequestTrace` (and so its id) first, and once
it is answered, echo the id as ``X-Request-ID``; counting it in the metrics and writing its access line are
deferred (:mod:`gateway.afterwork`) until a request thread waits anyway, off the answer's critical path.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

from flask import Flask, Response, g, request
from flask.globals import request_ctx

from gateway import afterwork
from gateway.access_log import log_request
from gateway.metrics import request_metrics
from gateway.routes import INFER_ENDPOINTS, current_gateway
from gateway.sockets import peer_closed
from gateway.trace import RECEIVED_KEY, RequestTrace
from gateway.tracing import Tracing


def install(app: Flask) -> None:
    """Register the hooks; install before any other ``before_request`` so the duration covers them too."""
    request_metrics()  # declared once per process, at start-up
    app.before_request(open_trace)
    app.after_request(close_trace)


def open_trace() -> None:
    """Start the request's trace; its id is a valid ``X-Request-ID`` or a new one; its client has gone once
    it closes its connection."""
    environ = request.environ
    trace = g.trace = RequestTrace.open(environ.get("HTTP_X_REQUEST_ID"))
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, socket.socket):
        trace.gone = partial(peer_closed, sock)


def close_trace(response: Response) -> Response:
    """Echo the request id; count the request and log it once a thread has time (gateway.afterwork)."""
    trace = g.get("trace")
    if not isinstance(trace, RequestTrace):  # a request Flask refused before any hook ran
        trace = g.trace = RequestTrace.open(None)
    response.headers["X-Request-ID"] = trace.request_id
    seconds = trace.elapsed()
    req = request_ctx.request  # one context lookup, not one per attribute
    if trace.stamps is not None:
        _trace_http(trace, req.environ, response)
    rule = req.url_rule
    inference = req.endpoint in INFER_ENDPOINTS
    if inference and not trace.model:
        _name_target(trace)
    afterwork.defer_or_run(
        req.environ,
        partial(
            account,
            req.method,
            rule.rule if rule is not None else "unmatched",
            req.path,
            response.status_code,
            seconds,
            trace,
            inference,
        ),
    )
    return response


def account(
    method: str, route: str, path: str, status: int, seconds: float, trace: RequestTrace, inference: bool
) -> None:
    """Count one answered request in the metrics and write its access line (no request context needed)."""
    metrics = request_metrics()
    metrics.observe_http(method, route, status)
    if inference and trace.model:
        metrics.observe_inference(trace.model, trace.version, seconds, status)
    log_request(method, path, status, seconds, trace)


def _trace_http(trace: RequestTrace, environ: dict[str, Any], response: Response) -> None:
    """Add a traced request's HTTP times (Triton's names) and write its trace once the answer is sent."""
    received = environ.get(RECEIVED_KEY)  # the front door read it whole before a thread took it
    first, last = received if received is not None else (trace.started, trace.started)
    trace.stamp("HTTP_RECV_START", int(first * 1e9))
    trace.stamp("HTTP_RECV_END", int(last * 1e9))
    trace.stamp("HANDLER_START", int(trace.started * 1e9))  # torchgate's own: its first Flask hook began
    trace.stamp("HTTP_SEND_START")
    tracing = current_gateway().tracing
    if tracing is not None:
        response.call_on_close(partial(_sent, tracing, trace, environ))


def _sent(tracing: Tracing, trace: RequestTrace, environ: dict[str, Any]) -> None:
    trace.stamp("HTTP_SEND_END")
    afterwork.defer_or_run(environ, partial(tracing.record, trace))


def _name_target(trace: RequestTrace) -> None:
    """Fill in the model version of a request that failed before the service named it (say, a bad shape)."""
    args = request.view_args or {}
    name, version = args.get("model"), args.get("version")
    if not isinstance(name, str):
        return
    found = current_gateway().catalog.target(name, version if isinstance(version, str) else None)
    if found is not None:
        trace.model, trace.version = found
