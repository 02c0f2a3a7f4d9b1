"""What every gRPC inference call of torchgate's gRPC server does around its work, whichever API it belongs
to (the Open Inference Protocol's ModelInfer, TorchServe's Predictions): one access line, as the HTTP gateway
writes, and the inference metrics every protocol shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.access_log import log_request
from gateway.errors import http_status
from gateway.metrics import request_metrics
from gateway.models import ModelCatalog
from gateway.trace import RequestTrace
from inference_worker.errors import CodedError


def recorded(
    catalog: ModelCatalog,
    path: str,
    model: str,
    version: str | None,
    request_id: str | None,
    run: Callable[[RequestTrace], Any],
) -> Any:
    """Return ``run(trace)``; write the call's access line (method ``GRPC``, ``path``, the status the same
    answer has over HTTP) and count it in the inference metrics under the model version it named."""
    trace = RequestTrace.open(request_id)
    began, status = time.monotonic(), 500
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
            found = catalog.target(model, version)
            if found is not None:
                trace.model, trace.version = found
        log_request("GRPC", path, status, seconds, trace)
        if trace.model:  # Triton's inference metrics count every protocol; an unknown model has no series
            request_metrics().observe_inference(trace.model, trace.version, seconds, status)
