"""What the gateway learned about one request while answering it: its id, model, batch and the reply; no I/O.

:mod:`gateway.instrument` opens one :class:`RequestTrace` per HTTP request, which decides the request's id;
:class:`gateway.service.Gateway` fills it in, and the access log and the metrics read it when the response is
done.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.codec import Tensor
from gateway.trace_settings import worker_stamps
from inference_worker.repository import ModelConfig

RECEIVED_KEY = (
    "torchgate.received"  # in a WSGI environ: (monotonic) when the request's first and last bytes came
)
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII without spaces: safe in a header and a log


def valid_request_id(value: str | None) -> bool:
    """Return whether ``value`` may serve as a request id (it is echoed in a header and logged)."""
    return bool(value) and REQUEST_ID.match(value or "") is not None


_ids: tuple[str, itertools.count[int]] | None = None


def _forget_ids() -> None:
    global _ids
    _ids = None  # a forked child draws its own prefix


os.register_at_fork(after_in_child=_forget_ids)


def new_request_id() -> str:
    """Return a fresh id, unique across processes: a random per-process prefix and a counter (no syscall)."""
    global _ids
    if _ids is None:
        _ids = (uuid.uuid4().hex[:16], itertools.count(1))
    return f"{_ids[0]}{next(_ids[1]):016x}"


def choose_request_id(header: str | None, body: str | None, fallback: str | None = None) -> str:
    """Return the request id: ``X-Request-ID`` if valid, else the OIP body ``id`` if valid, else
    ``fallback``/new."""
    for candidate in (header, body, fallback):
        if candidate is not None and valid_request_id(candidate):
            return candidate
    return new_request_id()


@dataclass(slots=True)
class RequestTrace:
    """One HTTP request as the access log and the metrics see it."""

    request_id: str
    header_id: str | None = None  # a valid X-Request-ID: it names the request whatever the body says
    started: float = field(default_factory=time.perf_counter)
    model: str = ""  # empty until the request named a model the gateway knows
    version: str = ""
    samples: int = 0  # the request's own batch size (1 for a model that does not batch)
    answered: bool = False  # whether a worker answered it
    worker: str = ""
    batch_size: int = 0  # the size of the batch the worker ran it in
    trace_id: int = 0  # traced (Triton's trace extension, gateway/tracing.py): its id there, and its times
    stamps: list[tuple[str, int]] | None = None
    # whether its client went away (closed its connection, cancelled its gRPC call): the request is then
    # withdrawn (gateway.client); None: not known
    gone: Callable[[], bool] | None = None

    @classmethod
    def open(cls, header: str | None) -> RequestTrace:
        """Start the trace of a request: its id is ``header`` (its X-Request-ID) if valid, else a new one."""
        if header is not None and valid_request_id(header):
            return cls(request_id=header, header_id=header)
        return cls(request_id=new_request_id())

    def begin(
        self, model: ModelConfig, version: str, tensors: Sequence[Tensor], body_id: str | None = None
    ) -> None:
        """Record the model version a request goes to and its batch size before it is sent; a valid body
        ``id`` names the request unless an X-Request-ID did."""
        self.model, self.version = model.name, version
        self.request_id = choose_request_id(self.header_id, body_id, self.request_id)
        first = tensors[0] if tensors else None
        if model.max_batch_size > 0 and first is not None and first.shape:
            self.samples = int(first.shape[0])
        else:
            self.samples = 1

    def start_timeline(self, trace_id: int) -> None:
        """Trace this request: it is about to be sent (REQUEST_START)."""
        self.trace_id, self.stamps = trace_id, [("REQUEST_START", time.monotonic_ns())]

    def stamp(self, name: str, ns: int | None = None) -> None:
        """Record that the traced request reached ``name`` now (or at monotonic ``ns``)."""
        if self.stamps is not None:
            self.stamps.append((name, time.monotonic_ns() if ns is None else ns))

    def finish(self, version: str, worker: str, stats: Mapping[str, Any]) -> None:
        """Record the dispatcher's reply: the version that really ran, the worker and its batch statistics."""
        if self.stamps is not None:
            answered = time.monotonic_ns()
            self.stamps += worker_stamps(stats, self.stamps[0][1], answered)
            self.stamps.append(("REQUEST_END", answered))
        self.answered, self.worker = True, worker
        if version:
            self.version = version
        value = stats.get("batch_size")
        self.batch_size = value if isinstance(value, int) and not isinstance(value, bool) else 0

    def elapsed(self) -> float:
        """Return the seconds since the request started."""
        return time.perf_counter() - self.started
