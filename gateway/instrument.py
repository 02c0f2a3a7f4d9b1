"""Wire metrics, the access log and request ids into the Flask app, and serve ``GET /metrics``."""

from __future__ import annotations

import itertools
import logging

from flask import Flask, Response, g, request

from gateway import worker_metrics
from gateway.access_log import log_request
from gateway.errors import GatewayError
from gateway.metrics import CONTENT_TYPE, render, request_metrics
from gateway.service import Gateway
from gateway.trace import RequestTrace

log = logging.getLogger("torchgate.gateway")

INFER_ENDPOINTS = ("infer", "predict")  # the Flask endpoints that run a model


def install(app: Flask, gw: Gateway) -> None:
    """Give every request a :class:`RequestTrace` and, once answered, count it, log it and echo its id."""
    metrics = request_metrics()

    def open_trace() -> None:
        g.trace = RequestTrace(request_id="")

    # First of all before_request functions, so the duration covers authentication too.
    app.before_request_funcs.setdefault(None, []).insert(0, open_trace)

    @app.after_request
    def close_trace(response: Response) -> Response:
        trace = g.get("trace")
        if not isinstance(trace, RequestTrace):
            trace = RequestTrace(request_id="")
        trace.request_id = trace.request_id or str(g.get("request_id") or "")
        if trace.request_id:
            g.request_id = trace.request_id  # the app echoes it as X-Request-ID
            response.headers["X-Request-ID"] = trace.request_id
        seconds = trace.elapsed()
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.observe_http(request.method, rule, response.status_code)
        if request.endpoint in INFER_ENDPOINTS and not trace.model:
            _target(gw, trace)
        if request.endpoint in INFER_ENDPOINTS and trace.model:
            metrics.observe_inference(trace.model, trace.version, seconds, response.status_code)
        log_request(request.method, request.path, response.status_code, seconds, trace)
        return response

    def scrape() -> Response:
        status = gw.status_or_none(max_age=0)  # fresh: a cached one from another process could run backwards
        families = itertools.chain(metrics.collect(), worker_metrics.families(status))
        return Response(render(families), content_type=CONTENT_TYPE)

    app.add_url_rule("/metrics", "metrics", scrape, methods=["GET"])


def _target(gw: Gateway, trace: RequestTrace) -> None:
    """Fill in the model version of a request that failed before the service named it (say, a bad shape)."""
    args = request.view_args or {}
    name, version = args.get("model"), args.get("version")
    if not isinstance(name, str):
        return
    try:
        model, resolved = gw.catalog.get(name, version if isinstance(version, str) else None)
    except GatewayError:
        return  # an unknown model has no series, as in Triton
    trace.model, trace.version = model.name, resolved
