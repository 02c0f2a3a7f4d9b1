"""Load generation over gRPC: the contract of :func:`benchmarks.pyload.run_python_load` (fixed connections and
duration, a pool of requests sent in turn), each connection a channel of its own (one HTTP/2 connection) and
a thread calling ``ModelInfer`` one request at a time, the requests serialized once beforehand.

An answer with a gRPC error counts as non-2xx; a call that got no answer (the connection failed) as a socket
error.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc
import numpy as np

from benchmarks.load import LoadResult
from benchmarks.pyload import Clock, drive, summarize
from gateway.grpc_messages import SERVICE, message

NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def infer_request(model: str, inputs: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """Return a serialized ``ModelInferRequest`` with each input's bytes in ``raw_input_contents``, as
    tritonclient sends it; ``inputs`` maps a name to (datatype, batch array)."""
    request = message("ModelInferRequest", model_name=model)
    for name, (datatype, array) in inputs.items():
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        )
    return bytes(request.SerializeToString())


def run_grpc_load(
    address: str, requests: Sequence[bytes], concurrency: int, duration_s: float, timeout_s: float
) -> LoadResult:
    """Send ``requests`` (serialized ModelInferRequests) in turn on ``concurrency`` channels to ``address``
    (``host:port``) for ``duration_s``; return what wrk would."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    refused = [0] * concurrency
    failures = [0] * concurrency
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]

    def connection(index: int, clock: Clock) -> None:
        with grpc.insecure_channel(address, options=options) as channel:
            call = channel.unary_unary(f"/{SERVICE}/ModelInfer")  # bytes in, bytes out
            clock.wait_start()
            i = index
            while clock.going():
                body = requests[i % len(requests)]
                i += 1
                t0 = time.perf_counter()
                try:
                    call(body, timeout=timeout_s)
                    latencies[index].append(time.perf_counter() - t0)
                except grpc.RpcError as exc:
                    if exc.code() in NO_ANSWER:  # type: ignore[attr-defined]
                        failures[index] += 1
                    else:
                        latencies[index].append(time.perf_counter() - t0)
                        refused[index] += 1

    elapsed = drive(concurrency, duration_s, timeout_s, connection)
    return summarize(concurrency, latencies, sum(refused), sum(failures), elapsed)
