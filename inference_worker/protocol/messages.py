"""The message kinds that carry a request and its answer: REQUEST (both hops), REPLY and ERROR (both hops),
and CANCEL (both hops), which withdraws a request whose client went away.

No other module writes a header field name or calls msgpack: see :mod:`inference_worker.protocol`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from inference_worker.protocol.fields import (
    Link,
    Parameters,
    Tensors,
    _code,
    _header,
    _integer,
    _map,
    _names,
    _number,
    _optional_list,
    _optional_map,
    _optional_text,
    _parameters,
    _text,
)
from inference_worker.protocol.frames import (
    ErrorCode,
    Kind,
    Message,
    require,
)

# -- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A request to run one model version on some tensors."""

    KIND: ClassVar[Kind] = Kind.REQUEST
    LINK: ClassVar[Link] = Link.GATEWAY_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {
        "id": "str, unique per gateway socket",
        "request_id": "str, the user's trace id",
        "model": "str",
        "version": "str, absent = the default version",
        "deadline": "float, unix seconds",
        "priority": "int",
        "outputs": "list of str, the outputs wanted, empty = all",
        "shm": "the inputs' shared-memory segment (`inference_worker/shm.py`) "
        "instead of frames; absent = frames",
        "parameters": "{str: str, int, float or bool}, the request's parameters for the model's handler; "
        "absent = none",
        "inputs": "tensor metas, one frame each",
    }

    id: str
    model: str
    inputs: Tensors
    version: str | None = None
    deadline: float | None = None
    request_id: str = ""
    priority: int = 0
    outputs: tuple[str, ...] = ()
    shm: dict[str, Any] | None = None
    parameters: Parameters = field(default_factory=dict)

    def frames(self) -> list[Any]:
        fields = {
            "id": self.id,
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version or None,
            "deadline": self.deadline,
            "priority": self.priority,
            "outputs": list(self.outputs),
            "shm": self.shm,
            "parameters": self.parameters or None,
        }
        return _header(Kind.REQUEST, fields, self.inputs)

    @classmethod
    def read(cls, message: Message) -> Request:
        fields = message.fields
        return cls(
            id=require(fields, "id", str),
            model=require(fields, "model", str),
            inputs=message.tensors,
            version=_optional_text(fields, "version") or None,
            deadline=_number(fields, "deadline"),
            request_id=_text(fields, "request_id"),
            priority=_integer(fields, "priority"),
            outputs=_names(fields, "outputs"),
            shm=_optional_map(fields, "shm"),
            parameters=_parameters(fields),
        )


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A request as the dispatcher hands it to one worker: its key there and the version resolved."""

    KIND: ClassVar[Kind] = Kind.REQUEST
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_WORKER
    FIELDS: ClassVar[dict[str, str]] = {
        "seq": "int, the dispatcher's key",
        "id": "str",
        "request_id": "str",
        "model": "str",
        "version": "str, resolved",
        "deadline": "float, unix seconds",
        "priority": "int",
        "outputs": "list of str",
        "shm": "as the gateway's REQUEST (workers on this host only)",
        "parameters": "as the gateway's REQUEST",
        "inputs": "tensor metas, one frame each",
    }

    seq: int
    model: str
    version: str
    inputs: Tensors
    deadline: float = math.inf
    id: str = ""
    request_id: str = ""
    priority: int = 0
    outputs: tuple[str, ...] = ()
    shm: dict[str, Any] | None = None
    parameters: Parameters = field(default_factory=dict)

    @classmethod
    def of(cls, request: Request, seq: int, version: str, deadline: float) -> ForwardedRequest:
        """Return ``request`` as sent to a worker under key ``seq``."""
        return cls(
            seq=seq,
            model=request.model,
            version=version,
            inputs=request.inputs,
            deadline=deadline,
            id=request.id,
            request_id=request.request_id,
            priority=request.priority,
            outputs=request.outputs,
            shm=request.shm,
            parameters=request.parameters,
        )

    def frames(self) -> list[Any]:
        fields = {
            "seq": self.seq,
            "id": self.id,
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "deadline": self.deadline if math.isfinite(self.deadline) else None,
            "priority": self.priority,
            "outputs": list(self.outputs),
            "shm": self.shm,
            "parameters": self.parameters or None,
        }
        return _header(Kind.REQUEST, fields, self.inputs)

    @classmethod
    def read(cls, message: Message) -> ForwardedRequest:
        fields = message.fields
        deadline = _number(fields, "deadline")
        return cls(
            seq=require(fields, "seq", int),
            model=_text(fields, "model"),
            version=_text(fields, "version"),
            inputs=message.tensors,
            deadline=math.inf if not deadline else deadline,
            id=_text(fields, "id"),
            request_id=_text(fields, "request_id"),
            priority=_integer(fields, "priority"),
            outputs=_names(fields, "outputs"),
            shm=_optional_map(fields, "shm"),
            parameters=_parameters(fields),
        )


@dataclass(frozen=True, slots=True)
class Cancel:
    """Withdraw my request: its client went away (its connection closed, its gRPC call was cancelled).

    Nothing answers a CANCEL itself. A request still queued is dropped there and never computed (a worker
    answers it ERROR ``CANCELLED``, so that its dispatcher frees its place); one computing runs to its end."""

    KIND: ClassVar[Kind] = Kind.CANCEL
    LINK: ClassVar[Link] = Link.GATEWAY_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {"id": "str, the request's"}

    id: str

    def frames(self) -> list[Any]:
        return _header(Kind.CANCEL, {"id": self.id})

    @classmethod
    def read(cls, message: Message) -> Cancel:
        return cls(require(message.fields, "id", str))


@dataclass(frozen=True, slots=True)
class WorkerCancel:
    """The dispatcher passes a CANCEL on to the worker holding the request."""

    KIND: ClassVar[Kind] = Kind.CANCEL
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_WORKER
    FIELDS: ClassVar[dict[str, str]] = {"seq": "int, the dispatcher's key"}

    seq: int

    def frames(self) -> list[Any]:
        return _header(Kind.CANCEL, {"seq": self.seq})

    @classmethod
    def read(cls, message: Message) -> WorkerCancel:
        return cls(require(message.fields, "seq", int))


# -- results ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerReply:
    """One request's outputs, computed."""

    KIND: ClassVar[Kind] = Kind.REPLY
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {
        "seq": "int",
        "stats": "{`queue_ns`, `compute_input_ns`, `compute_infer_ns`, `compute_output_ns`, `batch_size`, "
        "`queue_start_ns`, `compute_start_ns` (monotonic clock)}",
        "shm_outputs": "the outputs placed in the request's segment instead of frames; absent = frames",
        "outputs": "tensor metas, one frame each",
    }

    seq: int
    outputs: Tensors
    stats: dict[str, Any] = field(default_factory=dict)
    shm_outputs: list[Any] | None = None

    def frames(self) -> list[Any]:
        fields = {"seq": self.seq, "stats": self.stats, "shm_outputs": self.shm_outputs}
        return _header(Kind.REPLY, fields, self.outputs, "outputs")

    @classmethod
    def read(cls, message: Message) -> WorkerReply:
        fields = message.fields
        return cls(
            seq=require(fields, "seq", int),
            outputs=message.tensors,
            stats=_map(fields, "stats"),
            shm_outputs=_optional_list(fields, "shm_outputs"),
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """One request's outputs, as the gateway receives them."""

    KIND: ClassVar[Kind] = Kind.REPLY
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_GATEWAY
    FIELDS: ClassVar[dict[str, str]] = {
        "id": "str",
        "model": "str",
        "version": "str",
        "worker": "str, the slot that computed it",
        "stats": "as the worker's REPLY",
        "shm_outputs": "as the worker's REPLY",
        "outputs": "tensor metas, one frame each",
    }

    id: str
    model: str
    version: str
    worker: str
    outputs: Tensors
    stats: dict[str, Any] = field(default_factory=dict)
    shm_outputs: list[Any] | None = None

    def frames(self) -> list[Any]:
        fields = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "worker": self.worker,
            "stats": self.stats,
            "shm_outputs": self.shm_outputs,
        }
        return _header(Kind.REPLY, fields, self.outputs, "outputs")

    @classmethod
    def read(cls, message: Message) -> Reply:
        fields = message.fields
        return cls(
            id=require(fields, "id", str),
            model=_text(fields, "model"),
            version=_text(fields, "version"),
            worker=_text(fields, "worker"),
            outputs=message.tensors,
            stats=_map(fields, "stats"),
            shm_outputs=_optional_list(fields, "shm_outputs"),
        )


@dataclass(frozen=True, slots=True)
class WorkerError:
    """Why a worker could not compute one request."""

    KIND: ClassVar[Kind] = Kind.ERROR
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {"seq": "int", "code": "`ErrorCode`", "message": "str"}

    seq: int
    code: ErrorCode
    message: str

    def frames(self) -> list[Any]:
        return _header(Kind.ERROR, {"seq": self.seq, "code": self.code.value, "message": self.message})

    @classmethod
    def read(cls, message: Message) -> WorkerError:
        fields = message.fields
        return cls(require(fields, "seq", int), _code(fields), _text(fields, "message") or "worker error")


@dataclass(frozen=True, slots=True)
class Error:
    """Why a request failed, as the gateway receives it."""

    KIND: ClassVar[Kind] = Kind.ERROR
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_GATEWAY
    FIELDS: ClassVar[dict[str, str]] = {
        "id": "str",
        "code": "`ErrorCode`",
        "message": "str",
        "worker": "str, the slot that failed it; absent when the dispatcher did",
    }

    id: str
    code: ErrorCode
    message: str
    worker: str | None = None

    def frames(self) -> list[Any]:
        fields = {"id": self.id, "code": self.code.value, "message": self.message, "worker": self.worker}
        return _header(Kind.ERROR, fields)

    @classmethod
    def read(cls, message: Message) -> Error:
        fields = message.fields
        return cls(
            require(fields, "id", str),
            _code(fields),
            _text(fields, "message"),
            _optional_text(fields, "worker"),
        )
