"""The HTTP routes: the seed's ``/predict``, TorchServe's ``/predictions``, the Open Inference Protocol,
Triton's extras (statistics, repository index, model control) and ``/metrics``.

Each view reads the process's :class:`gateway.service.Gateway` from ``current_app.extensions``, turns the
request into a call on it and its answer into a response; errors are raised and mapped in :mod:`gateway.app`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from flask.globals import request_ctx
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_content_length

from gateway import (
    afterwork,
    client_shm,
    codec,
    torchserve_management,
    torchserve_metrics,
    triton,
    worker_metrics,
)
from gateway import generate as generate_answer
from gateway.body import BodyDisconnected, read_body
from gateway.errors import Forbidden, InvalidArgument, NotImplementedHere, PayloadTooLarge
from gateway.metrics import CONTENT_TYPE, render, request_metrics
from gateway.service import CONTROL_BODY, Gateway, reply_room
from gateway.trace import RequestTrace
from inference_worker.errors import CodedError
from inference_worker.protocol import Parameters

EXTENSION = "torchgate"  # the app.extensions key of the process's Gateway
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
JSON = "application/json"

routes = Blueprint("torchgate", __name__)
# those that run a model: their requests are counted in Triton's and TorchServe's inference metrics
INFER_ENDPOINTS = (
    "torchgate.infer",
    "torchgate.predict",
    "torchgate.predictions",
    "torchgate.invocations",
    "torchgate.invoke",
    "torchgate.v1_predict",
    "torchgate.generate",
    "torchgate.generate_stream",
)


def current_gateway() -> Gateway:
    """Return the Gateway of the app answering this request."""
    gateway: Gateway = current_app.extensions[EXTENSION]
    return gateway


def current_trace() -> RequestTrace:
    """Return the trace :mod:`gateway.instrument` opened for this request."""
    trace: RequestTrace = g.trace
    return trace


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(codec.dumps(doc), status=status, content_type=JSON)


def request_body(limit: int | None = None) -> bytes:
    """Read the request body in one call when its length is known.

    werkzeug reads 64 KiB at a time, and gunicorn answers each read by copying whatever it buffered past it
    (up to 1 MiB): a 3 MiB tensor cost ~100 MB of copies, three quarters of the gateway's time.
    """
    req = request_ctx.request
    length = get_content_length(req.environ)  # as req.content_length, without building req.headers
    stream = req.environ.get("wsgi.input")
    if length is None or stream is None:  # chunked: werkzeug reads it, enforcing MAX_CONTENT_LENGTH
        return req.get_data(cache=False)
    limit = current_gateway().config.max_body_bytes if limit is None else limit
    if length > limit:  # the limit this route has (a load's is CONTROL_BODY), not the server's
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    try:
        data: bytes = stream.read(length)
    except (OSError, ValueError):
        raise ClientDisconnected() from None
    if len(data) < length:
        raise ClientDisconnected()
    return data


def tensor_body(limit: int) -> bytes | bytearray:
    """Read an infer request's body (at most ``limit`` bytes): a large one straight from the socket into one
    buffer (gateway.body)."""
    environ = request.environ
    length = get_content_length(environ)
    if length is not None and length <= limit:
        try:
            data = read_body(environ.get("wsgi.input"), length)
        except BodyDisconnected:
            raise ClientDisconnected() from None
        if data is not None:
            assert not isinstance(data, memoryview)  # only a body read into a lease is one
            return data
    return request_body(limit)


def infer_body(gateway: Gateway, model: str, version: str | None) -> bytes | bytearray | memoryview:
    """Read an OIP infer body: a binary one into the shared-memory segment its tensors then travel in
    (gateway.client), no copy of them on the gateway; else as :func:`tensor_body`."""
    req = request_ctx.request
    length = req.content_length
    limit = gateway.config.max_body_bytes
    if length is not None and length <= limit:
        into = _body_lease(gateway, req.environ, length, model, version)
        if into is not None:
            try:
                data = read_body(req.environ.get("wsgi.input"), length, into)
            except BodyDisconnected:
                raise ClientDisconnected() from None
            if data is not None:
                return data
    return tensor_body(limit)


def _body_lease(
    gateway: Gateway, environ: dict[str, Any], length: int, model: str, version: str | None
) -> memoryview | None:
    """Return where in a shared-memory segment a binary infer body goes, or None (read it the usual way)."""
    header = codec.header_length_value(environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"))
    if header is None or environ.get("HTTP_CONTENT_ENCODING") or header > length:
        return None
    try:
        config, _ = gateway.catalog.get(model, version)
    except CodedError:  # an unknown model: answered once the body is read
        return None
    lease = gateway.client.lease_body(length, header, reply_room(config, length - header))
    if lease is None:
        return None
    g.body_lease = lease
    return lease.view


@routes.teardown_request
def _release_body(_: BaseException | None) -> None:
    """Give back a body's segment that no request to a worker took over."""
    lease = g.pop("body_lease", None)
    if lease is not None:
        current_gateway().client.release_body(lease)


_SERVER_DOC = codec.dumps(triton.server_metadata(triton.server_version()))
_OPENAPI = OPENAPI_PATH.read_bytes()


# -- the seed's contract --------------------------------------------------------------------------------


@routes.post("/predict")
def predict() -> Response:
    doc = current_gateway().predict(
        request_body(), current_trace(), content_encoding=request.environ.get("HTTP_CONTENT_ENCODING")
    )
    return Response(codec.dumps_values(doc), content_type=JSON)  # NaN as the seed's jsonify wrote it


# -- TorchServe's inference API -------------------------------------------------------------------------


@routes.route("/predictions/<model>", methods=["POST", "PUT"])
@routes.route("/predictions/<model>/<version>", methods=["POST", "PUT"])
def predictions(model: str, version: str | None = None) -> Response:
    gateway, environ = current_gateway(), request.environ
    doc = gateway.predictions(
        model,
        version,
        tensor_body(gateway.config.max_body_bytes),
        current_trace(),
        content_type=environ.get("CONTENT_TYPE"),
        content_encoding=environ.get("HTTP_CONTENT_ENCODING"),
        parameters=query_parameters(),
    )
    return json_response(doc)


def query_parameters() -> Parameters:
    """Return the query string as TorchServe passes it to a handler (the last value of a repeated name),
    less ``/invocations``' ``model_name``."""
    if not request.environ.get("QUERY_STRING"):
        return {}
    return {name: value for name, value in request.args.items(multi=True) if name != "model_name"}


@routes.post("/invocations")
def invocations() -> Response:
    """TorchServe's (and SageMaker's) ``/invocations``: ``?model_name=M``, or the only model."""
    name = request.args.get("model_name")
    if not name:
        models = sorted(current_gateway().catalog.models)
        if len(models) != 1:  # some may be unregistered: count those GET /models lists
            models = current_gateway().registered()
        if len(models) != 1:
            raise InvalidArgument(
                f"parameter model_name is required: the server has {len(models)} models ("
                + ", ".join(models)
                + "); POST /invocations?model_name=M"
            )
        name = models[0]
    return predictions(name)


@routes.post("/models/<model>/invoke")
def invoke(model: str) -> Response:
    """TorchServe's (and SageMaker's) ``/models/{model}/invoke``: ``/predictions/{model}``."""
    return predictions(model)


DRAINING = "the server is stopping (draining)"


@routes.get("/ping")
def ping() -> Response:
    """TorchServe's health check: ``{"status": "Healthy" | "Partial Healthy" | "Unhealthy"}``; 503 when
    Unhealthy or draining (TorchServe answered 200 even then, which a load balancer cannot act on)."""
    gateway = current_gateway()
    if gateway.draining():
        return json_response({"status": "Unhealthy", "error": DRAINING}, 503)
    health = gateway.health()
    return json_response({"status": health}, 503 if health == "Unhealthy" else 200)


# -- TorchServe's management API (on this port: gateway.torchserve_management) -------------------------


@routes.get("/models")
def list_models() -> Response:
    size, start = torchserve_management.page(request.args.get("limit"), request.args.get("next_page_token"))
    return json_response(torchserve_management.list_models(current_gateway().registered(), size, start))


@routes.post("/models")
def register_model() -> Response:
    """Its parameters come in the query string or, as TorchServe also took them, a JSON object body."""
    raw = request_body(CONTROL_BODY)
    args = torchserve_management.body_parameters(codec.loads(raw)) if raw.strip() else {}
    return json_response({"status": current_gateway().register({**args, **request.args.to_dict()})})


@routes.get("/models/<model>")
@routes.get("/models/<model>/<version>")
def describe_model(model: str, version: str | None = None) -> Response:
    return json_response(current_gateway().describe(model, version))


@routes.delete("/models/<model>")
@routes.delete("/models/<model>/<version>")
def unregister_model(model: str, version: str | None = None) -> Response:
    return json_response({"status": current_gateway().unregister(model, version)})


@routes.put("/models/<model>")
@routes.put("/models/<model>/<version>")
@routes.put("/models/<model>/<version>/set-default")
def scale_workers(model: str, version: str | None = None) -> Response:
    current_gateway().catalog.get(model, version)  # an unknown model is a 404 first
    if request.path.endswith("/set-default"):
        raise InvalidArgument(
            "the default version is the highest one the model serves; name the version in the request's path"
        )
    raise InvalidArgument(torchserve_management.SCALING)


# -- KServe's v1 protocol -------------------------------------------------------------------------------


@routes.get("/v1/models")
def v1_models() -> Response:
    return json_response({"models": sorted(current_gateway().catalog.models)})


@routes.get("/v1/models/<model>")
def v1_model_ready(model: str) -> Response:
    ok, config, why = current_gateway().model_ready(model, None)
    if ok:
        return json_response({"name": config.name, "ready": True})
    return json_response({"name": config.name, "ready": False, "error": why}, 503)


@routes.post("/v1/models/<model>:predict")
def v1_predict(model: str) -> Response:
    gateway = current_gateway()
    doc = gateway.v1_predict(
        model,
        request_body(),
        current_trace(),
        content_encoding=request.environ.get("HTTP_CONTENT_ENCODING"),
    )
    return json_response(doc)


@routes.post("/v1/models/<model>:explain")
def v1_explain(model: str) -> Response:
    """Not served: 501 for a model it serves, as KServe's model server answers a model without an explainer
    (404 for an unknown model). Without this route, the readiness route took the path and answered 405."""
    config, _ = current_gateway().catalog.get(model)
    raise NotImplementedHere(f"model {config.name!r} has no explainer: only :predict is served on /v1")


# -- Open Inference Protocol ----------------------------------------------------------------------------


@routes.get("/v2/health/live")
def live() -> Response:
    return json_response({"live": True})


@routes.get("/v2/health/ready")
def ready() -> Response:
    gateway = current_gateway()
    if gateway.draining():
        return json_response({"ready": False, "error": DRAINING}, 503)
    ok, why = gateway.ready()
    return json_response({"ready": True}) if ok else json_response({"ready": False, "error": why}, 400)


@routes.get("/v2")
def server_metadata() -> Response:
    return Response(_SERVER_DOC, content_type=JSON)


@routes.get("/v2/models/<model>")
@routes.get("/v2/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    config, resolved = current_gateway().catalog.get(model, version, max_age=0)  # after a load: its config
    return json_response(triton.model_metadata(config, resolved if version else None))


@routes.get("/v2/models/<model>/ready")
@routes.get("/v2/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> Response:
    ok, config, why = current_gateway().model_ready(model, version)
    doc: dict[str, Any] = {"name": config.name, "ready": ok}
    if not ok:
        doc["error"] = f"model {config.name!r} is not ready: {why}"
    return json_response(doc, 200 if ok else 400)


@routes.post("/v2/models/<model>/infer")
@routes.post("/v2/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    gateway, environ = current_gateway(), request.environ  # headers read from the environ: no Headers view
    result = gateway.infer(
        model,
        version,
        infer_body(gateway, model, version),
        current_trace(),
        content_encoding=environ.get("HTTP_CONTENT_ENCODING"),
        header_length=environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"),
    )
    encoding = codec.response_encoding(environ.get("HTTP_ACCEPT_ENCODING"))
    if encoding is not None:  # what tritonclient's response_compression_algorithm asks for
        result = codec.encode_body(result, encoding)
    response = Response(result.data, content_type=result.content_type)
    for name, value in result.headers.items():  # cheaper than headers=: no Headers built to copy from
        response.headers[name] = value
    return response


@routes.post("/v2/models/<model>/generate")
@routes.post("/v2/models/<model>/versions/<version>/generate")
def generate(model: str, version: str | None = None) -> Response:
    """Triton's generate extension (gateway.generate): a flat JSON object in and out."""
    doc = current_gateway().generate(
        model,
        version,
        request_body(),
        current_trace(),
        content_encoding=request.environ.get("HTTP_CONTENT_ENCODING"),
    )
    return Response(generate_answer.dumps(doc), content_type=JSON)


@routes.post("/v2/models/<model>/generate_stream")
@routes.post("/v2/models/<model>/versions/<version>/generate_stream")
def generate_stream(model: str, version: str | None = None) -> Response:
    """The same as Server-Sent Events: one event, the answer (no model here answers more than once)."""
    doc = current_gateway().generate(
        model,
        version,
        request_body(),
        current_trace(),
        content_encoding=request.environ.get("HTTP_CONTENT_ENCODING"),
    )
    return Response(generate_answer.event(doc), content_type=generate_answer.EVENT_STREAM)


# -- Triton extras --------------------------------------------------------------------------------------


@routes.get("/v2/models/<model>/config")
@routes.get("/v2/models/<model>/versions/<version>/config")
def model_config(model: str, version: str | None = None) -> Response:
    return json_response(triton.model_config(current_gateway().catalog.get(model, version, max_age=0)[0]))


@routes.post("/v2/repository/index")
def repository_index() -> Response:
    raw = request_body()
    doc = codec.loads(raw) if raw.strip() else {}
    ready_only = doc.get("ready", False) if isinstance(doc, dict) else None
    if not isinstance(ready_only, bool):
        raise InvalidArgument('the body must be empty or {"ready": true|false}')
    return json_response(current_gateway().repository_index(ready_only))


@routes.post("/v2/repository/models/<model>/load")
def load_model(model: str) -> Response:
    current_gateway().control("load", model, request_body(CONTROL_BODY))
    return json_response({})


@routes.post("/v2/repository/models/<model>/unload")
def unload_model(model: str) -> Response:
    current_gateway().control("unload", model, request_body(CONTROL_BODY))
    return json_response({})


@routes.get("/v2/models/stats")
@routes.get("/v2/models/<model>/stats")
@routes.get("/v2/models/<model>/versions/<version>/stats")
def model_stats(model: str | None = None, version: str | None = None) -> Response:
    return json_response(current_gateway().model_stats(model, version))


# -- Triton's system shared-memory extension (gateway/client_shm.py) -------------------------------------


@routes.get("/v2/systemsharedmemory/status")
@routes.get("/v2/systemsharedmemory/region/<region>/status")
def shared_memory_status(region: str | None = None) -> Response:
    return json_response(current_gateway().regions.status(region))


@routes.post("/v2/systemsharedmemory/region/<region>/register")
def shared_memory_register(region: str) -> Response:
    regions = current_gateway().regions
    if not regions.enabled:  # refused before the body is read, as Triton does
        raise Forbidden(client_shm.DISABLED)
    doc = codec.loads(request_body(CONTROL_BODY) or b"{}")
    if not isinstance(doc, dict):
        raise InvalidArgument('the body must be {"key": ..., "offset": ..., "byte_size": ...}')
    regions.register(region, doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
    return json_response({})


@routes.post("/v2/systemsharedmemory/unregister")
@routes.post("/v2/systemsharedmemory/region/<region>/unregister")
def shared_memory_unregister(region: str | None = None) -> Response:
    current_gateway().regions.unregister(region)
    return json_response({})


# -- Triton's CUDA shared-memory extension, as a Triton without GPU support answers it -----------------------


@routes.get("/v2/cudasharedmemory/status")
@routes.get("/v2/cudasharedmemory/region/<region>/status")
def cuda_shared_memory_status(region: str | None = None) -> Response:
    return json_response(client_shm.cuda_status(region))


@routes.post("/v2/cudasharedmemory/region/<region>/register")
def cuda_shared_memory_register(region: str) -> Response:
    client_shm.cuda_register(region)
    return json_response({})


@routes.post("/v2/cudasharedmemory/unregister")
@routes.post("/v2/cudasharedmemory/region/<region>/unregister")
def cuda_shared_memory_unregister(region: str | None = None) -> Response:
    return json_response({})  # none is registered: nothing to forget, as in Triton


# -- Triton's trace extension (gateway/tracing.py) -------------------------------------------------------


@routes.get("/v2/trace/setting")
@routes.get("/v2/models/<model>/trace/setting")
def trace_setting(model: str | None = None) -> Response:
    return json_response(current_gateway().trace_setting(model))


@routes.post("/v2/trace/setting")
@routes.post("/v2/models/<model>/trace/setting")
def trace_update(model: str | None = None) -> Response:
    doc = codec.loads(request_body(CONTROL_BODY) or b"{}")
    return json_response(current_gateway().trace_setting(model, doc))


# -- Triton's logging extension (inference_worker/log_settings.py) -----------------------------------------


@routes.get("/v2/logging")
def log_setting() -> Response:
    return json_response(current_gateway().log_setting())


@routes.post("/v2/logging")
def log_update() -> Response:
    return json_response(current_gateway().log_setting(codec.loads(request_body(CONTROL_BODY) or b"{}")))


# -- documents ------------------------------------------------------------------------------------------


@routes.get("/openapi.json")
def openapi_document() -> Response:
    return Response(_OPENAPI, content_type=JSON)


@routes.get("/metrics")
def metrics() -> Response:
    afterwork.run_pending()  # this process's answered requests are counted before it reports
    # a fresh status: a cached one from another gateway process could make counters run backwards
    status = current_gateway().status_or_none(max_age=0)
    families = [*request_metrics().collect(), *worker_metrics.families(status)]
    families += torchserve_metrics.families(families, socket.gethostname())
    names = request.args.getlist("name[]")  # TorchServe's metrics API: ?name[]=A&name[]=B, only those
    if names:
        families = [f for f in families if f.name in names or f"{f.name}_total" in names]
    return Response(render(families), content_type=CONTENT_TYPE)
