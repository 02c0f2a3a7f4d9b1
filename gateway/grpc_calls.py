"""What every gRPC inference call of torchgate's gRPC server does around its work, whichever API it belongs
to (the Open Inference Protocol's ModelInfer, TorchServe's Predictions): one access line, as the HTTP gateway
writes, the inference metrics every protocol shares, and their turns: a few run at once, the rest wait in
server threads of their own, so that no other call (a health check) waits behind them; and the admission of
every call, whose refusals are logged and counted as the HTTP gateway's are."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from gateway.access_log import log_request
from gateway.errors import http_status
from gateway.metrics import request_metrics
from gateway.trace import RequestTrace
from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode

if TYPE_CHECKING:
    import grpc

    from gateway.service import Gateway


log = logging.getLogger("torchgate.gateway")

TURN_POLL_SECONDS = 0.5  # how often a call waiting for its turn looks whether its client has gone
LOG_EVERY = 10.0  # seconds between two warnings of refused calls


class ByteBudget:
    """Bytes of requests the gRPC server holds at once (read and not yet answered), as the HTTP gateway's
    body budget: an inference call past it is refused (UNAVAILABLE, the HTTP gateway's 503) as soon as grpcio
    hands it over, and a stream is not read further until its requests give theirs back (HTTP/2's flow
    control then holds its client). One request alone always fits: grpcio bounds it by the largest body."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._changed = threading.Condition()

    def take(self, size: int, waiting: Callable[[], bool] | None = None) -> bool:
        """Hold ``size`` bytes; if they do not fit, False at once (``waiting`` None), or wait while
        ``waiting()`` says the stream is still there."""
        with self._changed:
            while self.held and self.held + size > self.limit:
                if waiting is None or not waiting():
                    return False
                self._changed.wait(TURN_POLL_SECONDS)
            self.held += size
            return True

    def give(self, size: int) -> None:
        with self._changed:
            self.held -= size
            self._changed.notify_all()

    @contextlib.contextmanager
    def held_for(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes while a call runs, or refuse it (:class:`CodedError`, UNAVAILABLE)."""
        if not self.take(size):
            raise CodedError(
                ErrorCode.UNAVAILABLE,
                f"the gRPC server holds {self.held} bytes of requests (its budget is {self.limit}); "
                "retry later",
            )
        try:
            yield
        finally:
            self.give(size)


class Admission:
    """The calls the server holds at once: past ``limit`` (a thread each), a call is refused at once with
    RESOURCE_EXHAUSTED, an access line, the ``torchgate_grpc_refused`` count and a warning at most every
    :data:`LOG_EVERY` seconds. grpcio itself refuses past ``limit + spare`` (without a word): the server has
    ``spare`` threads more than it admits, to say no."""

    def __init__(self, limit: int, spare: int) -> None:
        self.limit, self.spare = limit, spare
        self._lock = threading.Lock()
        self._held = 0
        self._refused = 0
        self._logged = -LOG_EVERY

    @contextlib.contextmanager
    def held(self, path: str) -> Iterator[None]:
        """Hold one of the calls admitted while the call runs, or refuse it (:class:`CodedError`)."""
        began = time.monotonic()
        with self._lock:
            admitted = self._held < self.limit
            self._held += admitted
            self._refused += not admitted
            refused, warn = self._refused, not admitted and began - self._logged >= LOG_EVERY
            if warn:
                self._logged = began
        if not admitted:
            request_metrics().grpc_refused.inc()
            if warn:
                log.warning(
                    "grpc: overloaded (%d calls held): refusing calls (%d so far)", self.limit, refused
                )
            log_request("GRPC", path, 503, time.monotonic() - began, RequestTrace.open(None))
            raise CodedError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"the gRPC server holds {self.limit} calls, the most it takes; retry later",
            )
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1


class Turns:
    """At most ``count`` inference calls run at once (``--threads``); the others wait here, each in a
    server thread of its own, until one ends or their client goes (cancelled, or its deadline passed). The
    server has threads for every call it admits, so calls waiting here never hold up the others: health
    checks, metadata, model control."""

    def __init__(self, count: int) -> None:
        self._free = threading.BoundedSemaphore(count)

    @contextlib.contextmanager
    def taken(self, context: grpc.ServicerContext | None) -> Iterator[None]:
        """Wait for a turn and hold it; raise the call's end (DEADLINE_EXCEEDED, CANCELLED) if its client
        goes first."""
        while not self._free.acquire(timeout=_wait(context)):
            if context is not None and not context.is_active():
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise CodedError(ErrorCode.DEADLINE_EXCEEDED, "deadline passed before its turn came")
                raise CodedError(ErrorCode.CANCELLED, "the client cancelled the call before its turn came")
        try:
            yield
        finally:
            self._free.release()


def _wait(context: grpc.ServicerContext | None) -> float:
    remaining = None if context is None else context.time_remaining()
    return TURN_POLL_SECONDS if remaining is None else max(0.01, min(TURN_POLL_SECONDS, remaining))


def recorded(
    gateway: Gateway,
    path: str,
    model: str,
    version: str | None,
    request_id: str | None,
    run: Callable[[RequestTrace], Any],
    context: grpc.ServicerContext | None = None,
    turns: Turns | None = None,
    budget: tuple[ByteBudget, int] | None = None,
) -> Any:
    """Return ``run(trace)``, run in one of ``turns`` if given, holding ``budget`` (the server's, and the
    request's bytes) meanwhile; write the call's access line (method ``GRPC``, ``path``, the status the same
    answer has over HTTP) and count it in the inference metrics under the model version it named. The client
    has gone once the call's ``context`` is no longer active (cancelled, or its deadline passed)."""
    trace = RequestTrace.open(request_id)
    if context is not None:
        trace.gone = lambda: not context.is_active()
    began, status = time.monotonic(), 500
    began_ns = time.monotonic_ns()
    try:
        with (
            budget[0].held_for(budget[1]) if budget is not None else contextlib.nullcontext(),
            turns.taken(context) if turns is not None else contextlib.nullcontext(),
        ):
            answer = run(trace)
        status = 200
        return answer
    except CodedError as exc:
        status = http_status(exc.code)
        raise
    finally:
        seconds = time.monotonic() - began
        if not trace.model:  # failed before it was routed (say, a bad shape): name what it asked for
            found = gateway.catalog.target(model, version)
            if found is not None:
                trace.model, trace.version = found
        log_request("GRPC", path, status, seconds, trace)
        if trace.model:  # Triton's inference metrics count every protocol; an unknown model has no series
            request_metrics().observe_inference(trace.model, trace.version, seconds, status)
        if (
            trace.stamps is not None and gateway.tracing is not None
        ):  # the message was read when the call began
            trace.stamp("GRPC_WAITREAD_END", began_ns)
            trace.stamp("GRPC_SEND_START")
            gateway.tracing.record(trace)
