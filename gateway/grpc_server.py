"""The Open Inference Protocol over gRPC (Triton's port 8001): ``tritonclient.grpc`` and KServe's v2 gRPC
clients work unchanged. One process of its own under supervisord (``torchgate serve --grpc-port 8001``),
beside the HTTP gateway and sharing everything behind it: :class:`gateway.service.Gateway` validates, asks
the dispatcher and picks the outputs, exactly as for HTTP.

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelStatistics,
ModelInfer, ModelStreamInfer, RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload, the system
shared-memory calls (:mod:`gateway.client_shm`), the CUDA ones as a Triton without GPU support answers them
(none registered, none can be), TraceSetting and LogSettings; and, on the same port, TorchServe's gRPC APIs
(:mod:`gateway.torchserve_grpc`). gRPC answers any other call with UNIMPLEMENTED.

Errors carry the gRPC code of their reason (:data:`CODES`) and the same message the HTTP API gives. With a
bearer token configured, every call but ServerLive needs ``authorization: Bearer <token>`` metadata. Each
infer request writes one access line, as over HTTP: method ``GRPC``, the call as path, and the status the
same answer has over HTTP.
"""

from __future__ import annotations

import logging
import logging.config
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import click
import grpc
import orjson

from gateway import (
    afterwork,
    client_shm,
    grpc_codec,
    grpc_health,
    heap,
    multiproc,
    torchserve_grpc,
    triton,
)
from gateway.access_log import logconfig
from gateway.auth import authorized
from gateway.codec import FINAL_FLAG_PARAMETER
from gateway.config import GatewayConfig, body_budget
from gateway.errors import (
    CONFLICT,
    FORBIDDEN,
    PAYLOAD_TOO_LARGE,
    UNAUTHENTICATED,
    UNSUPPORTED,
    NotFound,
    Unauthenticated,
    Unsupported,
    describe_unexpected,
)
from gateway.grpc_calls import Admission, ByteBudget, Turns, recorded
from gateway.grpc_messages import CLASSES, METHODS, SERVICE, STREAMING, message
from gateway.metrics import multiproc_dir, request_metrics
from gateway.service import Gateway
from gateway.torchserve_grpc import TorchServeServicer
from gateway.trace import RequestTrace
from gateway.validation import check_inputs
from inference_worker import lifeline
from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode

log = logging.getLogger("torchgate.grpc")

CODES: dict[str, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
}
DEFAULT_PORT = 8001  # Triton's
NO_TOKEN = "missing or wrong bearer token (metadata 'authorization')"
DEFAULT_THREADS = 16
STREAM_IN_FLIGHT = 64  # requests of one stream running at once, or answered and not yet sent
QUEUED_PER_THREAD = 4  # calls admitted per thread; the next get RESOURCE_EXHAUSTED at once
STREAMS_PER_THREAD = 4  # streams open at once per thread, each holding a server thread of its own
# how often a stream's reader, waiting for its answers to be sent, looks whether the stream ended
STREAM_POLL_SECONDS = 0.5
DEFAULT_GRACE_SECONDS = 30.0
# The most bytes an error's message takes in the call's trailers (grpc-message, percent-encoded): a client
# refuses trailers past 8 KiB (grpc.max_metadata_size) and would see RESOURCE_EXHAUSTED, not the error.
MAX_DETAILS_BYTES = 4096
# The extensions served over gRPC: those of HTTP but binary tensor data (gRPC tensors are always binary).
EXTENSIONS = [e for e in triton.EXTENSIONS if e != "binary_tensor_data"]


def status_code(code: str) -> grpc.StatusCode:
    """Return the gRPC status of an error code; unknown codes are INTERNAL."""
    return CODES.get(code, grpc.StatusCode.INTERNAL)


def details(message: str) -> str:
    """Return an error's message cut to :data:`MAX_DETAILS_BYTES` as gRPC sends it (each byte but printable
    ASCII other than ``%`` as ``%XX``): a name the client sent (a model's, an output's) is echoed, whatever
    its length."""
    if len(message) * 12 <= MAX_DETAILS_BYTES:  # even were every character 4 bytes, each encoded
        return message
    used, cut = 0, 0
    for i, char in enumerate(message):
        used += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "surrogatepass"))
        if used <= MAX_DETAILS_BYTES - 64:  # room for the note of what was cut
            cut = i + 1
        elif used > MAX_DETAILS_BYTES:
            return f"{message[:cut]}... ({len(message) - cut} characters more)"
    return message


class Servicer:
    """The calls of ``inference.GRPCInferenceService``, each answered from one :class:`Gateway`."""

    def __init__(self, gateway: Gateway, threads: int = DEFAULT_THREADS) -> None:
        self.gateway = gateway
        self.turns = Turns(threads)  # unary inference calls running at once; the rest wait for a turn
        self.budget = ByteBudget(body_budget(gateway.config.max_body_bytes))  # bytes of requests held
        # the requests of every stream run here (a stream's own call only reads and answers)
        self.stream_pool = futures.ThreadPoolExecutor(threads, thread_name_prefix="torchgate-grpc-stream")
        # A stream holds a server thread while it is open, idle or not: streams get threads of their own
        # (build_server), so that open streams never leave unary calls (health checks among them) waiting.
        self.max_streams = threads * STREAMS_PER_THREAD
        self.streams = threading.BoundedSemaphore(self.max_streams)
        self.server_metadata = message(
            "ServerMetadataResponse",
            name=triton.SERVER_NAME,
            version=triton.server_version(),
            extensions=EXTENSIONS,
        )

    # -- health and metadata ----------------------------------------------------------------------------

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return message("ServerLiveResponse", live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return message("ServerReadyResponse", ready=self._ready())

    def _ready(self) -> bool:
        """Whether every model has a ready worker and the host is not draining."""
        return not self.gateway.draining() and self.gateway.ready()[0]

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:  # as Triton answers: a model it does not know is not ready, and that is no error
            ready = self.gateway.model_ready(request.name, request.version or None)[0]
        except NotFound:
            ready = False
        return message("ModelReadyResponse", ready=ready)

    def HealthCheck(self, request: Any, context: grpc.ServicerContext) -> Any:
        """``grpc.health.v1.Health/Check`` (:mod:`gateway.grpc_health`)."""
        serving = grpc_health.status(request.service, frozenset({SERVICE}), self._ready())
        if serving is None:
            raise NotFound(f"unknown service {request.service!r}; known: '' (the server) and {SERVICE!r}")
        return grpc_health.Response(status=serving)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.server_metadata

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        version = request.version or None
        model, resolved = self.gateway.catalog.get(request.name, version, max_age=0)  # after a load: its own
        return grpc_codec.model_metadata(triton.model_metadata(model, resolved if version else None))

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        model, _ = self.gateway.catalog.get(request.name, request.version or None, max_age=0)
        return grpc_codec.model_config(triton.model_config(model))

    def ModelStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = request.name or None  # none: every model
        return grpc_codec.model_statistics(self.gateway.model_stats(name, request.version or None))

    # -- inference --------------------------------------------------------------------------------------

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        request_id = _metadata(context).get("x-request-id")
        return self._infer("ModelInfer", request, context, request_id, self.turns, self.budget)

    def ModelStreamInfer(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """Each request of the stream answered as it finishes, several at once (a client matches answers by
        id, as with Triton); a failed one is answered with its error and the stream goes on. At most
        :data:`STREAM_IN_FLIGHT` requests run or wait to be sent at once: the stream is not read further
        until one is sent (a client that does not read its answers stops the server reading its requests).
        At most ``max_streams`` streams are open at once; the next is refused (UNAVAILABLE, as a full queue
        is)."""
        if not self.streams.acquire(blocking=False):
            raise CodedError(
                ErrorCode.UNAVAILABLE,
                f"{self.max_streams} streams are open, the most this server takes; close one, or retry later",
            )
        answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        room = threading.Semaphore(STREAM_IN_FLIGHT)
        gone = threading.Event()  # the stream ended on the server's side: answers are no longer sent

        def answer(request: Any, size: int) -> None:
            response = None
            try:
                response = message(
                    "ModelStreamInferResponse",
                    infer_response=self._infer("ModelStreamInfer", request, context, None),
                )
                if _wants_final_flag(request):  # Triton's: this answer is the request's last
                    response.infer_response.parameters["triton_final_response"].bool_param = True
            except CodedError as exc:
                response = _stream_error(request, exc.message)
            except Exception as exc:  # a bug: its details go to the log only
                response = _stream_error(request, describe_unexpected(exc, "ModelStreamInfer"))
            finally:
                self.budget.give(size)
                answers.put(_NOTHING if response is None else response)  # its room goes back once sent
                afterwork.run_pending()

        def read() -> None:
            try:
                for request in requests:
                    room.acquire()
                    size = request.ByteSize()  # not read further while the server holds its budget
                    if gone.is_set() or not self.budget.take(size, lambda: not gone.is_set()):
                        break  # nobody will send its answer
                    try:
                        self.stream_pool.submit(answer, request, size)
                    except RuntimeError:  # the pool is shut down: the process is exiting
                        self.budget.give(size)
                        answers.put(_stream_error(request, "the server is stopping"))
                        break
            except Exception:  # the client cancelled, or the connection broke: nobody reads answers now
                pass
            finally:
                taken = 0  # every request of the stream answered and sent, or the stream gone
                while taken < STREAM_IN_FLIGHT and not gone.is_set():
                    if room.acquire(timeout=STREAM_POLL_SECONDS):
                        taken += 1
                answers.put(None)

        threading.Thread(target=read, name="torchgate-grpc-stream", daemon=True).start()
        try:
            while (response := answers.get()) is not None:
                if response is not _NOTHING:
                    yield response
                room.release()
        finally:  # ended, or cancelled while answers were still to come: their rooms go back unsent
            gone.set()
            for _ in range(STREAM_IN_FLIGHT):
                room.release()
            self.streams.release()

    def _infer(
        self,
        call: str,
        request: Any,
        context: grpc.ServicerContext,
        request_id: str | None,
        turns: Turns | None = None,
        budget: ByteBudget | None = None,
    ) -> Any:
        """Run one infer request, in one of ``turns`` and holding its bytes of ``budget`` if given, with its
        access line and metrics (:func:`gateway.grpc_calls.recorded`)."""
        return recorded(
            self.gateway,
            f"/{SERVICE}/{call}",
            request.model_name,
            request.model_version or None,
            request_id,
            lambda trace: self.gateway.rechecking(trace, lambda: self._run(request, context, trace)),
            context,
            turns,
            None if budget is None else (budget, request.ByteSize()),
        )

    def _run(self, request: Any, context: grpc.ServicerContext, trace: RequestTrace) -> Any:
        gateway = self.gateway
        version = request.model_version or None
        model, resolved = gateway.catalog.get(request.model_name, version)
        infer = grpc_codec.infer_request(request, gateway.limits)
        remaining = context.time_remaining()  # the client's deadline, if it set one, bounds the request's
        if remaining is not None and remaining < gateway.config.max_timeout:
            left_us = max(1, int(remaining * 1e6))
            infer.timeout_us = min(infer.timeout_us or left_us, left_us)
        with gateway.regions_read(infer, model):
            inputs = check_inputs(infer, model, gateway.limits)
            answered, outputs = gateway.run_infer(model, resolved, version is not None, infer, inputs, trace)
        return grpc_codec.infer_response(model.name, answered, infer.id, outputs)

    # -- model repository -------------------------------------------------------------------------------

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        _one_repository(request)
        return grpc_codec.repository_index(self.gateway.repository_index(request.ready))

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        _one_repository(request)
        self.gateway.control("load", request.model_name, _control_body(request.parameters))
        return message("RepositoryModelLoadResponse")

    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        _one_repository(request)
        self.gateway.control("unload", request.model_name, _control_body(request.parameters))
        return message("RepositoryModelUnloadResponse")

    # -- system shared memory (gateway/client_shm.py) -----------------------------------------------------

    def SystemSharedMemoryStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = message("SystemSharedMemoryStatusResponse")
        for doc in self.gateway.regions.status(request.name or None):
            entry = response.regions[doc["name"]]
            entry.name, entry.key, entry.offset, entry.byte_size = (
                doc["name"],
                doc["key"],
                doc["offset"],
                doc["byte_size"],
            )
        return response

    def SystemSharedMemoryRegister(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.gateway.regions.register(request.name, request.key, request.offset, request.byte_size)
        return message("SystemSharedMemoryRegisterResponse")

    def SystemSharedMemoryUnregister(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.gateway.regions.unregister(request.name or None)
        return message("SystemSharedMemoryUnregisterResponse")

    # -- CUDA shared memory, as a Triton without GPU support answers it (gateway/client_shm.py) -------------

    def CudaSharedMemoryStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        client_shm.cuda_status(request.name or None)
        return message("CudaSharedMemoryStatusResponse")

    def CudaSharedMemoryRegister(self, request: Any, context: grpc.ServicerContext) -> Any:
        client_shm.cuda_register(request.name)
        return message("CudaSharedMemoryRegisterResponse")

    def CudaSharedMemoryUnregister(self, request: Any, context: grpc.ServicerContext) -> Any:
        return message("CudaSharedMemoryUnregisterResponse")  # none is registered: nothing to forget

    # -- trace settings (gateway/tracing.py) -----------------------------------------------------------

    def TraceSetting(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Change (an empty value: clear) and return trace settings, as /v2[/models/M]/trace/setting does."""
        update = {key: list(entry.value) or None for key, entry in request.settings.items()}
        settings = self.gateway.trace_setting(request.model_name or None, update or None)
        response = message("TraceSettingResponse")
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    # -- log settings (inference_worker/log_settings.py) ---------------------------------------------------

    def LogSettings(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Change and return the log settings, as /v2/logging does (a value left unset changes nothing)."""
        update = {}
        for key, entry in request.settings.items():
            which = entry.WhichOneof("parameter_choice")
            update[key] = None if which is None else getattr(entry, which)
        settings = self.gateway.log_setting(update or None)
        response = message("LogSettingsResponse")
        for key, value in settings.items():
            entry = response.settings[key]
            if isinstance(value, bool):
                entry.bool_param = value
            elif isinstance(value, int):
                entry.uint32_param = value
            else:
                entry.string_param = value
        return response


_NOTHING = object()  # what a stream's request that raised no answer at all (say, KeyboardInterrupt) puts


def _wants_final_flag(request: Any) -> bool:
    """Whether a stream's request asks for Triton's ``triton_final_response`` flag on its answers
    (tritonclient's ``async_stream_infer(..., enable_empty_final_response=True)``)."""
    entry = request.parameters.get(FINAL_FLAG_PARAMETER)
    return entry is not None and entry.WhichOneof("parameter_choice") == "bool_param" and entry.bool_param


def _stream_error(request: Any, error: str) -> Any:
    """A stream's answer to a request that failed: its error, and which request it was."""
    failed = message("ModelInferResponse", model_name=request.model_name, id=request.id)
    return message("ModelStreamInferResponse", error_message=error, infer_response=failed)


def _one_repository(request: Any) -> None:
    """Refuse a repository call that names a repository, as Triton does (the server has one)."""
    if request.repository_name:
        raise Unsupported("'repository_name' specification is not supported")


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}


def _token_ok(context: grpc.ServicerContext, token: str) -> bool:
    """Whether a call carries the bearer token (or none is needed): one ``authorization`` value, and the
    token's; several values are refused whatever their order (over HTTP, gunicorn joins them into one)."""
    if not token:
        return True
    values = [value for key, value in context.invocation_metadata() if key == "authorization"]
    return len(values) == 1 and isinstance(values[0], str) and authorized(values[0], token)


def _control_body(entries: Any) -> bytes:
    """The HTTP body of a load or unload call with these parameters (file contents are refused by name)."""
    params = {key: _plain(entry) for key, entry in entries.items()}
    return orjson.dumps({"parameters": params}) if params else b""


def _plain(entry: Any) -> Any:
    which = entry.WhichOneof("parameter_choice")
    value = None if which is None else getattr(entry, which)
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else value


def handler(servicer: Servicer, token: str, admission: Admission) -> grpc.GenericRpcHandler:
    """Return the service's handler: each call checked for the token (but ServerLive), its errors
    answered with their gRPC code."""
    methods = {}
    for name, (request, response) in METHODS.items():
        call = getattr(servicer, name)
        make, guard = (
            (grpc.stream_stream_rpc_method_handler, _guarded_stream)
            if name in STREAMING
            else (grpc.unary_unary_rpc_method_handler, _guarded)
        )
        methods[name] = make(
            guard(call, token if name != "ServerLive" else "", admission, f"/{SERVICE}/{name}"),
            request_deserializer=CLASSES[request].FromString,
            response_serializer=CLASSES[response].SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def torchserve_handlers(
    servicer: TorchServeServicer, token: str, admission: Admission
) -> list[grpc.GenericRpcHandler]:
    """Return TorchServe's services' handlers (:mod:`gateway.torchserve_grpc`): the token checked on every
    call, Ping too (as REST's /ping, and TorchServe's every inference API call), errors answered with their
    gRPC code."""
    handlers = []
    for service, calls in torchserve_grpc.SERVICES.items():
        methods = {}
        for name, (request, response, streams) in calls.items():
            make = grpc.unary_stream_rpc_method_handler if streams else grpc.unary_unary_rpc_method_handler
            methods[name] = make(  # a streaming call answers in full before it returns its responses
                _guarded(getattr(servicer, name), token, admission, f"/{service}/{name}"),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        handlers.append(grpc.method_handlers_generic_handler(service, methods))
    return handlers


def health_handler(servicer: Servicer, admission: Admission) -> grpc.GenericRpcHandler:
    """Return ``grpc.health.v1.Health``'s handler: ``Check`` only, no token (:mod:`gateway.grpc_health`)."""
    return grpc.method_handlers_generic_handler(
        grpc_health.SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                _guarded(servicer.HealthCheck, "", admission, f"/{grpc_health.SERVICE}/Check"),
                request_deserializer=grpc_health.Request.FromString,
                response_serializer=grpc_health.Response.SerializeToString,
            )
        },
    )


def _guarded(
    call: Callable[[Any, grpc.ServicerContext], Any], token: str, admission: Admission, path: str
) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with admission.held(path):
                if not _token_ok(context, token):
                    raise Unauthenticated(NO_TOKEN)
                return call(request, context)
        except CodedError as exc:
            context.abort(status_code(exc.code), details(exc.message))
        except Exception as exc:  # a bug: its details go to the log only
            context.abort(grpc.StatusCode.INTERNAL, details(describe_unexpected(exc, call.__name__)))
        finally:
            afterwork.run_pending()

    guarded.__name__ = call.__name__
    return guarded


def _guarded_stream(
    call: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]],
    token: str,
    admission: Admission,
    path: str,
) -> Callable[..., Iterator[Any]]:
    def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            with admission.held(path):
                if not _token_ok(context, token):
                    raise Unauthenticated(NO_TOKEN)
                yield from call(requests, context)
        except CodedError as exc:  # refused before it began (too many calls or streams, no token)
            context.abort(status_code(exc.code), details(exc.message))

    guarded.__name__ = call.__name__
    return guarded


def build_server(gateway: Gateway, address: str, threads: int) -> tuple[grpc.Server, int]:
    """Return a server for ``gateway`` bound to ``address`` (``host:port``; port 0 picks one) and its
    port."""
    servicer = Servicer(gateway, threads)
    # Every call admitted has a thread at once: inference calls past `threads` wait for their turn in theirs
    # (Servicer.turns), and each open stream holds one (Servicer.streams), so neither keeps a health check
    # waiting. Calls past the admitted ones are refused at once (RESOURCE_EXHAUSTED), by the spare threads.
    admission = Admission(threads * QUEUED_PER_THREAD + servicer.max_streams, spare=threads)
    token = gateway.config.auth_token
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=admission.limit + admission.spare, thread_name_prefix="torchgate-grpc"
        ),
        handlers=[
            handler(servicer, token, admission),
            health_handler(servicer, admission),
            *torchserve_handlers(
                TorchServeServicer(gateway, servicer.turns, servicer.budget), token, admission
            ),
        ],
        maximum_concurrent_rpcs=admission.limit + admission.spare,
        options=[
            ("grpc.max_receive_message_length", gateway.config.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on the port fails to start, as gunicorn does
        ],
    )
    try:  # grpcio raises RuntimeError where a port is taken (older versions return 0)
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: is another server on that port?")
    return server, port


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=DEFAULT_THREADS, show_default=True)
@click.option(
    "--grace-seconds",
    type=float,
    default=DEFAULT_GRACE_SECONDS,
    show_default=True,
    help="On TERM or INT, how long calls in flight may take to finish.",
)
def main(host: str, port: int, threads: int, grace_seconds: float) -> None:
    """Serve the Open Inference Protocol over gRPC; settings come from TORCHGATE_* as for the HTTP gateway."""
    lifeline.die_with_supervisor()  # a killed supervisord must not leave this process holding the port
    # the gateway's log lines: text or JSON (TORCHGATE_LOG_FORMAT), one access line per infer request
    level = os.environ.get("TORCHGATE_LOG_LEVEL", "info")
    logging.config.dictConfig(logconfig(level, os.environ.get("TORCHGATE_LOG_FORMAT", "text")))
    config = GatewayConfig.from_env()
    heap.keep_freed(config.heap_keep_bytes)
    folder = multiproc_dir()  # this server's own metrics folder: counters of an earlier run must not add up
    if folder:
        multiproc.start(folder)  # but a restart within a run keeps those of its earlier incarnations
    request_metrics()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server, bound = build_server(Gateway(config), address, threads)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    stopping = threading.Event()

    def stop(signum: int, _: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info(
                "grpc: %s: finishing the calls in flight (at most %.0fs)",
                signal.strsignal(signum),
                grace_seconds,
            )
            server.stop(grace_seconds)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    log.info(
        "grpc: serving inference.GRPCInferenceService and TorchServe's gRPC APIs on %s:%d (%d threads)",
        host,
        bound,
        threads,
    )
    server.wait_for_termination()
    log.info("grpc: stopped")


if __name__ == "__main__":
    main()
