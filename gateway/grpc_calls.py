"""What every gRPC inference call of torchgate's gRPC server does around its work, whichever API it belongs
to (the Open Inference Protocol's ModelInfer, TorchServe's Predictions): one access line, as the HTTP gateway
writes, and the inference metrics every protocol shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.access_log import log_request
from gateway.errors import http_status
from gateway.metrics import request_metrics
from gateway.trace import RequestTrace
from inference_worker.errors import CodedError

if TYPE_CHECKING:
    import grpc

    from gateway.service import Gateway


def recorded(
    gateway: Gateway,
    path: str,
    model: str,
    version: str | None,
    request_id: str | None,
    run: Callable[[RequestTrace], Any],
    context: grpc.ServicerContext | None = None,
) -> Any:
    """Return ``run(trace)``; write the call's access line (method ``GRPC``, ``path``, the status the same
    answer has over HTTP) and count it in the inference metrics under the model version it named. The
    client has gone once the call's ``context`` is no longer active (cancelled, or its deadline passed)."""
    trace = RequestTrace.open(request_id)
    if context is not None:
        trace.gone = lambda: not context.is_active()
    began, status = time.monotonic(), 500
    began_ns = time.monotonic_ns()
    try:
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
