"""Trace every request with plain Flask hooks: open its :class:`RequestTrace` (and so its id) first, and once
it is answered, echo the id as ``X-Request-ID``, count it in the metrics and write its access line.
"""

from __future__ import annotations

from flask import Flask, Response, g, request
from flask.globals import request_ctx

from gateway.access_log import log_request
from gateway.metrics import request_metrics
from gateway.routes import INFER_ENDPOINTS, current_gateway
from gateway.trace import RequestTrace
from inference_worker.errors import CodedError


def install(app: Flask) -> None:
    """Register the hooks; install before any other ``before_request`` so the duration covers them too."""
    request_metrics()  # declared once per process, at start-up
    app.before_request(open_trace)
    app.after_request(close_trace)


def open_trace() -> None:
    """Start the request's trace; its id is a valid ``X-Request-ID`` or a new one."""
    g.trace = RequestTrace.open(request.environ.get("HTTP_X_REQUEST_ID"))


def close_trace(response: Response) -> Response:
    """Echo the request id, count the request and log it."""
    trace = g.get("trace")
    if not isinstance(trace, RequestTrace):  # a request Flask refused before any hook ran
        trace = g.trace = RequestTrace.open(None)
    response.headers["X-Request-ID"] = trace.request_id
    seconds = trace.elapsed()
    req = request_ctx.request  # one context lookup, not one per attribute
    method, rule, status = req.method, req.url_rule, response.status_code
    metrics = request_metrics()
    metrics.observe_http(method, rule.rule if rule is not None else "unmatched", status)
    if req.endpoint in INFER_ENDPOINTS:
        if not trace.model:
            _name_target(trace)
        if trace.model:
            metrics.observe_inference(trace.model, trace.version, seconds, status)
    log_request(method, req.path, status, seconds, trace)
    return response


def _name_target(trace: RequestTrace) -> None:
    """Fill in the model version of a request that failed before the service named it (say, a bad shape)."""
    args = request.view_args or {}
    name, version = args.get("model"), args.get("version")
    if not isinstance(name, str):
        return
    try:
        model, resolved = current_gateway().catalog.get(name, version if isinstance(version, str) else None)
    except CodedError:
        return  # an unknown model has no series, as in Triton
    trace.model, trace.version = model.name, resolved
