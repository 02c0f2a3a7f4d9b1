"""TorchServe's gRPC APIs on torchgate's gRPC server, beside the Open Inference Protocol: a client built from
TorchServe's ``inference.proto`` and ``management.proto`` (``torchserve_grpc_client.py``, say) works unchanged
against ``torchgate serve --grpc-port 7070`` (TorchServe's inference port; its management calls answer on the
same port, not on a 7071 of their own).

- ``InferenceAPIsService``: ``Ping`` (the health document ``/ping`` answers, as a JSON string),
  ``Predictions`` and ``StreamPredictions`` (one response: no model here streams). A request's ``input`` map
  holds the data under the model's input name, ``data`` or ``body`` (or as its only entry), as TorchServe's
  handlers read it; the other entries go to the model's handler as parameters, as a multipart body's text
  fields do over HTTP.
  ``prediction`` is the JSON ``/predictions`` answers. ``StreamPredictions2`` (sequences) is not served.
- ``ManagementAPIsService``: ``ListModels``, ``DescribeModel``, ``RegisterModel`` and ``UnregisterModel``
  answer ``msg``, the JSON of the same REST call (:mod:`gateway.torchserve_management`); ``ScaleWorker`` and
  ``SetDefault`` are refused with how it is done here, as over REST.

Errors carry the gRPC code of their reason and the message the REST API gives; with a bearer token
configured, every call, ``Ping`` too (as REST's ``/ping``), needs ``authorization: Bearer <token>`` metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc

from gateway import codec, torchserve_management
from gateway.errors import InvalidArgument
from gateway.grpc_calls import ByteBudget, Turns, recorded
from gateway.grpc_messages import file_descriptor, message_classes
from gateway.service import Gateway
from gateway.torchserve import choose_part
from gateway.validation import sole_input
from inference_worker.protocol import Parameters

INFERENCE_PACKAGE = "org.pytorch.serve.grpc.inference"
MANAGEMENT_PACKAGE = "org.pytorch.serve.grpc.management"
INFERENCE_SERVICE = f"{INFERENCE_PACKAGE}.InferenceAPIsService"
MANAGEMENT_SERVICE = f"{MANAGEMENT_PACKAGE}.ManagementAPIsService"

# Field names and numbers are those of TorchServe's .proto files; tests/test_torchserve_grpc.py reads them
# back through protoc-compiled stubs of its own.
INFERENCE_MESSAGES: dict[str, tuple[tuple[str, int, str], ...]] = {
    "Empty": (),  # Ping's google.protobuf.Empty: no fields, so any empty message reads it
    "PredictionsRequest": (
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("input", 3, "map bytes"),
        ("sequenceId", 4, "string"),
    ),
    "PredictionResponse": (
        ("prediction", 1, "bytes"),
        ("sequenceId", 2, "string"),
    ),  # no status: no sequences
    "TorchServeHealthResponse": (("health", 1, "string"),),
}
INFERENCE_METHODS = {
    "Ping": ("Empty", "TorchServeHealthResponse"),
    "Predictions": ("PredictionsRequest", "PredictionResponse"),
    "StreamPredictions": ("PredictionsRequest", "PredictionResponse"),
}
MANAGEMENT_MESSAGES: dict[str, tuple[tuple[str, int, str], ...]] = {
    "ManagementResponse": (("msg", 1, "string"),),
    "DescribeModelRequest": (
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("customized", 3, "bool"),
    ),
    "ListModelsRequest": (("limit", 1, "int32"), ("next_page_token", 2, "int32")),
    "RegisterModelRequest": (
        ("batch_size", 1, "int32"),
        ("handler", 2, "string"),
        ("initial_workers", 3, "int32"),
        ("max_batch_delay", 4, "int32"),
        ("model_name", 5, "string"),
        ("response_timeout", 6, "int32"),
        ("runtime", 7, "string"),
        ("synchronous", 8, "bool"),
        ("url", 9, "string"),
        ("s3_sse_kms", 10, "bool"),
        ("queue_timeout", 11, "int32"),
    ),
    "ScaleWorkerRequest": (
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("max_worker", 3, "int32"),
        ("min_worker", 4, "int32"),
        ("number_gpu", 5, "int32"),
        ("synchronous", 6, "bool"),
        ("timeout", 7, "int32"),
    ),
    "SetDefaultRequest": (("model_name", 1, "string"), ("model_version", 2, "string")),
    "UnregisterModelRequest": (("model_name", 1, "string"), ("model_version", 2, "string")),
}
MANAGEMENT_METHODS = {
    name: (f"{name}Request", "ManagementResponse")
    for name in (
        "DescribeModel",
        "ListModels",
        "RegisterModel",
        "ScaleWorker",
        "SetDefault",
        "UnregisterModel",
    )
}
STREAMING = {"StreamPredictions": (False, True)}  # one request, a stream of responses

_, INFERENCE_FILE, INFERENCE = message_classes(
    file_descriptor(
        "torchgate/torchserve_inference.proto",
        INFERENCE_PACKAGE,
        INFERENCE_MESSAGES,
        {"InferenceAPIsService": INFERENCE_METHODS},
        STREAMING,
        {},
        {},
    ),
    INFERENCE_MESSAGES,
)
_, MANAGEMENT_FILE, MANAGEMENT = message_classes(
    file_descriptor(
        "torchgate/torchserve_management.proto",
        MANAGEMENT_PACKAGE,
        MANAGEMENT_MESSAGES,
        {"ManagementAPIsService": MANAGEMENT_METHODS},
        {},
        {},
        {},
    ),
    MANAGEMENT_MESSAGES,
)
# Each service: its calls as (request class, response class, whether the server streams).
SERVICES: dict[str, dict[str, tuple[Any, Any, bool]]] = {
    INFERENCE_SERVICE: {
        name: (INFERENCE[request], INFERENCE[response], name in STREAMING)
        for name, (request, response) in INFERENCE_METHODS.items()
    },
    MANAGEMENT_SERVICE: {
        name: (MANAGEMENT[request], MANAGEMENT[response], False)
        for name, (request, response) in MANAGEMENT_METHODS.items()
    },
}


def prediction_input(entries: dict[str, bytes], input_name: str) -> tuple[bytes, Parameters]:
    """Return the data of a ``PredictionsRequest``'s ``input`` map and its other entries, as text, for the
    model's handler; no I/O."""
    chosen = choose_part(entries, set(), input_name, "the request's input")
    fields: Parameters = {}
    for name, value in entries.items():
        if name != chosen:
            try:
                fields[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"input entry {name!r} is not UTF-8 text; only the data ({chosen!r}) may be bytes"
                ) from None
    return entries[chosen], fields


class TorchServeServicer:
    """TorchServe's gRPC calls, each answered from one :class:`Gateway` as its REST API answers."""

    def __init__(
        self, gateway: Gateway, turns: Turns | None = None, budget: ByteBudget | None = None
    ) -> None:
        self.gateway = gateway
        self.turns = turns  # the server's inference calls running at once (gateway.grpc_calls.Turns)
        self.budget = budget  # the bytes of requests the server holds (gateway.grpc_calls.ByteBudget)

    # -- inference ------------------------------------------------------------------------------------

    def Ping(self, request: Any, context: grpc.ServicerContext) -> Any:
        gateway = self.gateway
        health = "Unhealthy" if gateway.draining() else gateway.health()
        return INFERENCE["TorchServeHealthResponse"](health=json.dumps({"status": health}, indent=2))

    def Predictions(self, request: Any, context: grpc.ServicerContext) -> Any:
        version = request.model_version or None

        def run(trace: Any) -> Any:
            model = self.gateway.single_input_model(request.model_name, version)
            data, fields = prediction_input(dict(request.input), sole_input(model, "Predictions").name)
            answer = self.gateway.predictions_of(request.model_name, version, data, trace, fields)
            return INFERENCE["PredictionResponse"](prediction=codec.dumps(answer))

        path = f"/{INFERENCE_SERVICE}/Predictions"
        held = None if self.budget is None else (self.budget, request.ByteSize())
        return recorded(self.gateway, path, request.model_name, version, None, run, context, self.turns, held)

    def StreamPredictions(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """One response: no model here streams (its errors are raised here, before any response)."""
        return iter([self.Predictions(request, context)])

    # -- management -----------------------------------------------------------------------------------

    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        limit = str(request.limit) if request.limit else None
        size, start = torchserve_management.page(limit, str(request.next_page_token))
        return _answer(torchserve_management.list_models(self.gateway.registered(), size, start))

    def DescribeModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(self.gateway.describe(request.model_name, request.model_version or None))

    def RegisterModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        # the fields the client set, as the REST call's query parameters (a bool as "true" or "false")
        args = {f.name: str(v).lower() if isinstance(v, bool) else str(v) for f, v in request.ListFields()}
        return _answer({"status": self.gateway.register(args)})

    def UnregisterModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer({"status": self.gateway.unregister(request.model_name, request.model_version or None)})

    def ScaleWorker(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.gateway.catalog.get(request.model_name, request.model_version or None)  # unknown: 404 first
        raise InvalidArgument(torchserve_management.SCALING)

    def SetDefault(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.gateway.catalog.get(request.model_name, request.model_version or None)
        raise InvalidArgument(
            "the default version is the highest one the model serves; name the version in the request"
        )


def _answer(doc: Any) -> Any:
    """A ``ManagementResponse``: ``msg`` is the REST call's JSON, as TorchServe's gRPC API answers."""
    return MANAGEMENT["ManagementResponse"](msg=json.dumps(doc, indent=2))
