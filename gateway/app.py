"""The Flask application: the routes of :mod:`gateway.routes` over one :class:`gateway.service.Gateway`, the
bearer token check, and the one place that turns an exception into an HTTP error response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from gateway import auth, instrument, torchserve_management
from gateway.config import GatewayConfig
from gateway.cors import CorsPolicy
from gateway.errors import (
    METHOD_NOT_ALLOWED,
    PAYLOAD_TOO_LARGE,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    describe_unexpected,
    error_body,
    error_headers,
    http_status,
)
from gateway.routes import EXTENSION, JSON, current_gateway, routes
from gateway.service import Gateway
from inference_worker.errors import CodedError

log = logging.getLogger("torchgate.gateway")

LIVENESS = "/v2/health/live"  # the one endpoint that needs no token


class GatewayFlask(Flask):
    """Flask, but a hook or view is checked for ``async`` once, not on every request (``inspect`` is slow)."""

    def __init__(self, import_name: str) -> None:
        super().__init__(import_name)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = self._sync[func] = super().ensure_sync(func)
        return sync


def create_app(config: GatewayConfig | None = None, gateway: Gateway | None = None) -> Flask:
    """Build the gateway application; ``config`` defaults to :meth:`GatewayConfig.from_env`."""
    config = config or (gateway.config if gateway else GatewayConfig.from_env())
    app = GatewayFlask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.extensions[EXTENSION] = gateway or Gateway(config)
    instrument.install(app)  # first: a request is traced before anything can refuse it
    policy = CorsPolicy(config.cors_origins)
    if policy.enabled:
        install_cors(app, policy)  # before the token check: a browser's preflight carries no token
    app.before_request(require_token)
    if config.management_port or config.metrics_port:
        app.before_request(keep_to_the_port)
    app.register_error_handler(CodedError, on_coded_error)
    app.register_error_handler(HTTPException, on_http_error)
    app.register_error_handler(Exception, on_unexpected)
    app.register_blueprint(routes)
    return app


def install_cors(app: Flask, policy: CorsPolicy) -> None:
    """Answer browsers' preflights, and tell an allowed origin on every answer (gateway/cors.py)."""

    def preflight() -> Response | None:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            answer = Response(status=204, headers=policy.preflight(request.headers.get("Origin")))
            del answer.headers["Content-Type"]  # no body
            return answer
        return None

    def allow(response: Response) -> Response:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            for name, value in policy.answer(request.headers.get("Origin")).items():
                response.headers[name] = value
        return response

    app.before_request(preflight)
    app.after_request(allow)


def require_token() -> None:
    """Refuse a request without the configured bearer token (liveness needs none)."""
    token = current_gateway().config.auth_token
    if token and request.path != LIVENESS:
        if not auth.authorized(request.headers.get("Authorization", ""), token):
            raise Unauthenticated("missing or wrong bearer token")


def keep_to_the_port() -> None:
    """On TorchServe's management or metrics port, answer only that API (404 otherwise, as TorchServe)."""
    config = current_gateway().config
    port = request.environ.get("SERVER_PORT", "")
    why = torchserve_management.port_refusal(
        int(port) if port.isdigit() else 0, request.endpoint, config.management_port, config.metrics_port
    )
    if why is not None:
        raise NotFound(f"no such endpoint on this port: {request.path} ({why})")


def error_response(message: str, code: str, status: int) -> Response:
    """The JSON error body with its status and headers (``Retry-After`` on 503, ``WWW-Authenticate`` on
    401)."""
    headers = error_headers(code, current_gateway().config.retry_after)
    return Response(error_body(message), status=status, content_type=JSON, headers=headers)


def on_coded_error(exc: CodedError) -> Response:
    status = http_status(exc.code)
    if status >= 500:
        log.warning(
            "gateway: %s %s -> %d %s: %s", request.method, request.path, status, exc.code, exc.message
        )
    return error_response(exc.message, exc.code, status)


def on_http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        limit = current_gateway().config.max_body_bytes
        message, code = f"request body exceeds the limit of {limit} bytes", PAYLOAD_TOO_LARGE
    elif status == 405:
        message, code = f"method {request.method} is not allowed on {request.path}", METHOD_NOT_ALLOWED
    elif status == 404:
        message, code = f"no such endpoint: {request.path}", NotFound.code
    else:
        message, code = exc.description or exc.name, InvalidArgument.code
    response = error_response(message, code, status)
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def on_unexpected(exc: Exception) -> Response:
    message = describe_unexpected(exc, f"{request.method} {request.path}")
    return Response(error_body(message), status=500, content_type=JSON)
