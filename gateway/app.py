"""The Flask application: HTTP routes over :class:`gateway.service.Gateway`, and the one error mapping."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from gateway import auth, codec, instrument, triton
from gateway.body import BodyDisconnected, read_body
from gateway.config import GatewayConfig
from gateway.errors import (
    METHOD_NOT_ALLOWED,
    PAYLOAD_TOO_LARGE,
    GatewayError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    describe_unexpected,
    error_body,
    error_headers,
)
from gateway.service import Gateway
from gateway.trace import new_request_id

log = logging.getLogger("torchgate.gateway")

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII without spaces
_JSON = "application/json"


def _version() -> str:
    try:
        return importlib.metadata.version("torchgate")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def create_app(config: GatewayConfig | None = None, gateway: Gateway | None = None) -> Flask:
    """Build the gateway application; ``config`` defaults to :meth:`GatewayConfig.from_env`."""
    config = config or (gateway.config if gateway else GatewayConfig.from_env())
    gw = gateway or Gateway(config)
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.extensions["torchgate"] = gw
    openapi = OPENAPI_PATH.read_bytes()
    server_doc = codec.dumps(triton.server_metadata(_version()))

    def json_response(doc: Any, status: int = 200) -> Response:
        return Response(codec.dumps(doc), status=status, content_type=_JSON)

    def body() -> bytes:
        """Read the request body in one call when its length is known.

        werkzeug reads 64 KiB at a time, and gunicorn answers each read by copying whatever it buffered past
        it (up to 1 MiB): a 3 MiB tensor cost ~100 MB of copies, three quarters of the gateway's time.
        """
        length = request.content_length
        stream = request.environ.get("wsgi.input")
        if length is None or stream is None:  # chunked: werkzeug reads it, enforcing MAX_CONTENT_LENGTH
            return request.get_data(cache=False)
        if length > config.max_body_bytes:
            raise RequestEntityTooLarge()
        try:
            data: bytes = stream.read(length)
        except (OSError, ValueError):
            raise ClientDisconnected() from None
        if len(data) < length:
            raise ClientDisconnected()
        return data

    def tensor_body() -> bytes | bytearray:
        """Read an infer request's body: a large one straight from the socket into one buffer (gateway.body)."""
        length = request.content_length
        if length is not None and length <= config.max_body_bytes:
            try:
                data = read_body(request.environ.get("wsgi.input"), length)
            except BodyDisconnected:
                raise ClientDisconnected() from None
            if data is not None:
                return data
        return body()

    @app.before_request
    def start() -> None:
        header = request.headers.get("X-Request-ID")
        g.request_id = header if header and _REQUEST_ID.match(header) else new_request_id()
        g.header_id = header if header and _REQUEST_ID.match(header) else None
        if config.auth_token and request.path != "/v2/health/live":
            if not auth.authorized(request.headers.get("Authorization", ""), config.auth_token):
                raise Unauthenticated("missing or wrong bearer token")

    @app.after_request
    def finish(response: Response) -> Response:
        request_id = getattr(g, "request_id", None)
        if request_id:
            response.headers["X-Request-ID"] = request_id
        return response

    @app.errorhandler(GatewayError)
    def on_gateway_error(exc: GatewayError) -> Response:
        if exc.status >= 500:
            log.warning(
                "gateway: %s %s -> %d %s: %s", request.method, request.path, exc.status, exc.code, exc.message
            )
        return Response(
            error_body(exc.message),
            status=exc.status,
            content_type=_JSON,
            headers=error_headers(exc.code, config.retry_after),
        )

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            message, code = (
                f"request body exceeds the limit of {config.max_body_bytes} bytes",
                PAYLOAD_TOO_LARGE,
            )
        elif status == 405:
            message, code = f"method {request.method} is not allowed on {request.path}", METHOD_NOT_ALLOWED
        elif status == 404:
            message, code = f"no such endpoint: {request.path}", NotFound.code
        else:
            message, code = exc.description or exc.name, InvalidArgument.code
        response = Response(
            error_body(message),
            status=status,
            content_type=_JSON,
            headers=error_headers(code, config.retry_after),
        )
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        message = describe_unexpected(exc, f"{request.method} {request.path}")
        return Response(error_body(message), status=500, content_type=_JSON)

    # -- the seed's contract ----------------------------------------------------------------------------

    @app.post("/predict")
    def predict() -> Response:
        doc = gw.predict(
            body(),
            content_encoding=request.headers.get("Content-Encoding"),
            request_id=g.request_id,
            trace=g.get("trace"),
        )
        return json_response(doc)

    # -- TorchServe's inference API ---------------------------------------------------------------------

    @app.route("/predictions/<model>", methods=["POST", "PUT"])
    @app.route("/predictions/<model>/<version>", methods=["POST", "PUT"])
    def predictions(model: str, version: str | None = None) -> Response:
        doc = gw.predictions(
            model,
            version,
            tensor_body(),
            content_type=request.headers.get("Content-Type"),
            content_encoding=request.headers.get("Content-Encoding"),
            request_id=g.request_id,
            trace=g.get("trace"),
        )
        return json_response(doc)

    # -- Open Inference Protocol ------------------------------------------------------------------------

    @app.get("/v2/health/live")
    def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    def ready() -> Response:
        if config.drain_file and os.path.exists(config.drain_file):
            return json_response({"ready": False, "error": "the server is stopping (draining)"}, 503)
        ok, why = gw.ready()
        return json_response({"ready": True}) if ok else json_response({"ready": False, "error": why}, 400)

    @app.get("/v2")
    def server_metadata() -> Response:
        return Response(server_doc, content_type=_JSON)

    @app.get("/v2/models/<model>")
    @app.get("/v2/models/<model>/versions/<version>")
    def model_metadata(model: str, version: str | None = None) -> Response:
        config_, resolved = gw.catalog.get(model, version)
        return json_response(triton.model_metadata(config_, resolved if version else None))

    @app.get("/v2/models/<model>/ready")
    @app.get("/v2/models/<model>/versions/<version>/ready")
    def model_ready(model: str, version: str | None = None) -> Response:
        ok, config_, why = gw.model_ready(model, version)
        doc: dict[str, Any] = {"name": config_.name, "ready": ok}
        if not ok:
            doc["error"] = f"model {config_.name!r} is not ready: {why}"
        return json_response(doc, 200 if ok else 400)

    @app.post("/v2/models/<model>/infer")
    @app.post("/v2/models/<model>/versions/<version>/infer")
    def infer(model: str, version: str | None = None) -> Response:
        result = gw.infer(
            model,
            version,
            tensor_body(),
            content_encoding=request.headers.get("Content-Encoding"),
            header_length=request.headers.get("Inference-Header-Content-Length"),
            request_id=g.request_id,
            header_id=g.header_id,
            trace=g.get("trace"),
        )
        return Response(result.data, content_type=result.content_type, headers=result.headers)

    # -- Triton extras ----------------------------------------------------------------------------------

    @app.get("/v2/models/<model>/config")
    @app.get("/v2/models/<model>/versions/<version>/config")
    def model_config(model: str, version: str | None = None) -> Response:
        return json_response(triton.model_config(gw.catalog.get(model, version)[0]))

    @app.post("/v2/repository/index")
    def repository_index() -> Response:
        raw = body()
        doc = codec.loads(raw) if raw.strip() else {}
        ready_only = doc.get("ready", False) if isinstance(doc, dict) else None
        if not isinstance(ready_only, bool):
            raise InvalidArgument('the body must be empty or {"ready": true|false}')
        return json_response(gw.repository_index(ready_only))

    @app.post("/v2/repository/models/<model>/load")
    def load_model(model: str) -> Response:
        gw.control("load", model)
        return json_response({})

    @app.post("/v2/repository/models/<model>/unload")
    def unload_model(model: str) -> Response:
        gw.control("unload", model)
        return json_response({})

    @app.get("/v2/models/stats")
    @app.get("/v2/models/<model>/stats")
    @app.get("/v2/models/<model>/versions/<version>/stats")
    def model_stats(model: str | None = None, version: str | None = None) -> Response:
        resolved = None
        if model is not None:
            _, resolved = gw.catalog.get(model, version)
        return json_response(
            triton.model_stats(gw.catalog.models, gw.status(), model, resolved if version else None)
        )

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        return Response(openapi, content_type=_JSON)

    instrument.install(app, gw)  # request traces, metrics, the access log and GET /metrics
    return app
