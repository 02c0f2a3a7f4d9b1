"""Every message kind of the torchgate wire: a typed builder (``frames``) and reader (``read``) per kind and
link.

No other module writes a header field name or calls msgpack. Readers check what they rely on and raise
:class:`ProtocolError`; fields a reader does not know are ignored, so adding an optional field keeps the wire
compatible within a version. ``FIELDS`` of each class documents its header fields; ``docs/architecture.md``
holds :func:`message_table`, and a unit test keeps the two equal.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from inference_worker.protocol.frames import (
    ErrorCode,
    Kind,
    Message,
    ProtocolError,
    TensorMeta,
    encode,
    require,
)

Tensors = Sequence[tuple[TensorMeta, Any]]  # each tensor's meta and its frame (any buffer)


class Link(enum.StrEnum):
    """Which way a message travels."""

    GATEWAY_TO_DISPATCHER = "gateway -> dispatcher"
    DISPATCHER_TO_GATEWAY = "dispatcher -> gateway"
    WORKER_TO_DISPATCHER = "worker -> dispatcher"
    DISPATCHER_TO_WORKER = "dispatcher -> worker"


def _text(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    return "" if value is None else str(value)


def _optional_text(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def _number(fields: dict[str, Any], key: str) -> float | None:
    value = fields.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(fields: dict[str, Any], key: str, default: int = 0) -> int:
    value = fields.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _names(fields: dict[str, Any], key: str) -> tuple[str, ...]:
    value = fields.get(key) or []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"field {key!r} must be a list of names")
    return tuple(value)


def _code(fields: dict[str, Any]) -> ErrorCode:
    value = fields.get("code")
    return ErrorCode(str(value)) if value in ErrorCode.__members__ else ErrorCode.INTERNAL


def _map(fields: dict[str, Any], key: str) -> dict[str, Any]:
    value = fields.get(key)
    return value if isinstance(value, dict) else {}


def _optional_map(fields: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = fields.get(key)
    return value if isinstance(value, dict) else None


def _optional_list(fields: dict[str, Any], key: str) -> list[Any] | None:
    value = fields.get(key)
    return value if isinstance(value, list) else None


def _list(fields: dict[str, Any], key: str) -> list[Any]:
    value = fields.get(key)
    return value if isinstance(value, list) else []


def _header(kind: Kind, fields: dict[str, Any], tensors: Tensors = (), key: str = "inputs") -> list[Any]:
    return encode(kind, {k: v for k, v in fields.items() if v is not None}, tensors, tensor_key=key)


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
        )


# -- results ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerReply:
    """One request's outputs, computed."""

    KIND: ClassVar[Kind] = Kind.REPLY
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {
        "seq": "int",
        "stats": "{`queue_ns`, `compute_input_ns`, `compute_infer_ns`, `compute_output_ns`, `batch_size`}",
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


# -- worker session -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker announcing itself and what it serves."""

    KIND: ClassVar[Kind] = Kind.READY
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {
        "worker": "str, the slot name",
        "incarnation": "str, new at every start",
        "pid": "int",
        "device": "str",
        "shm": "bool, it maps the gateways' shared-memory segments (on this host)",
        "capacity": "int, the requests in flight it accepts: its credits",
        "models": "list of `ModelConfig.signature(version)`, each with `name` and `version`",
        "unavailable": "[{`model`, `version`, `reason`}]: what it could not load",
        "assigned": "list of str, its `--model` list; empty: every model",
    }

    worker: str
    incarnation: str
    capacity: int
    models: list[dict[str, Any]]
    pid: int = 0
    device: str = ""
    shm: bool = False
    unavailable: list[Any] = field(default_factory=list)
    assigned: list[str] = field(default_factory=list)

    def frames(self) -> list[Any]:
        fields = {
            "worker": self.worker,
            "incarnation": self.incarnation,
            "pid": self.pid,
            "device": self.device,
            "shm": self.shm,
            "capacity": self.capacity,
            "models": self.models,
            "unavailable": self.unavailable,
            "assigned": self.assigned,
        }
        return _header(Kind.READY, fields)

    @classmethod
    def read(cls, message: Message) -> Ready:
        fields = message.fields
        models = require(fields, "models", list)
        for sig in models:
            if not (
                isinstance(sig, dict)
                and isinstance(sig.get("name"), str)
                and isinstance(sig.get("version"), str)
            ):
                raise ProtocolError("READY: every model needs a name and a version")
        return cls(
            worker=require(fields, "worker", str),
            incarnation=require(fields, "incarnation", str),
            capacity=require(fields, "capacity", int),
            models=models,
            pid=_integer(fields, "pid"),
            device=_text(fields, "device"),
            shm=fields.get("shm") is True,
            unavailable=_list(fields, "unavailable"),
            assigned=[m for m in _list(fields, "assigned") if isinstance(m, str)],
        )

    def signatures(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Return each model version's signature keyed by (name, version)."""
        return {(sig["name"], sig["version"]): sig for sig in self.models}


@dataclass(frozen=True, slots=True)
class Computing:
    """What a worker is computing now: its batch number, since when (unix seconds), which model, how big."""

    batch: int
    since: float
    model: str = ""
    version: str = ""
    size: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "since": self.since,
            "model": self.model,
            "version": self.version,
            "size": self.size,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> Computing | None:
        if not isinstance(raw, dict):
            return None
        since = _number(raw, "since")
        if since is None:
            return None
        return cls(
            _integer(raw, "batch"), since, _text(raw, "model"), _text(raw, "version"), _integer(raw, "size")
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """I am alive; from a worker, also its counters and what it is computing."""

    KIND: ClassVar[Kind] = Kind.HEARTBEAT
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {
        "incarnation": "str",
        "stats": "cumulative counters per model version; absent from the dispatcher",
        "device_memory": "{`used_bytes`, `reserved_bytes`}, GPU workers only",
        "computing": "{`batch`, `since` (unix s), `model`, `version`, `size`}, absent when idle",
    }

    incarnation: str | None = None
    stats: list[dict[str, Any]] | None = None
    device_memory: dict[str, Any] | None = None
    computing: Computing | None = None

    def frames(self) -> list[Any]:
        fields = {
            "incarnation": self.incarnation,
            "stats": self.stats,
            "device_memory": self.device_memory,
            "computing": self.computing.to_wire() if self.computing else None,
        }
        return _header(Kind.HEARTBEAT, fields)

    @classmethod
    def read(cls, message: Message) -> Heartbeat:
        fields = message.fields
        stats = fields.get("stats")
        memory = fields.get("device_memory")
        return cls(
            incarnation=_optional_text(fields, "incarnation"),
            stats=stats if isinstance(stats, list) else None,
            device_memory=memory if isinstance(memory, dict) else None,
            computing=Computing.from_wire(fields.get("computing")),
        )


@dataclass(frozen=True, slots=True)
class Drain:
    """From a worker: send me no more work. From the dispatcher: acknowledged."""

    KIND: ClassVar[Kind] = Kind.DRAIN
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {}

    def frames(self) -> list[Any]:
        return _header(Kind.DRAIN, {})

    @classmethod
    def read(cls, message: Message) -> Drain:
        return cls()


@dataclass(frozen=True, slots=True)
class Disconnect:
    """From a worker: I am leaving. From the dispatcher: I do not know you, send READY again."""

    KIND: ClassVar[Kind] = Kind.DISCONNECT
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {"reason": "str"}

    reason: str = ""

    def frames(self) -> list[Any]:
        return _header(Kind.DISCONNECT, {"reason": self.reason})

    @classmethod
    def read(cls, message: Message) -> Disconnect:
        return cls(_text(message.fields, "reason"))


# -- gateway queries
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """Is my request still queued or in flight?"""

    KIND: ClassVar[Kind] = Kind.QUERY
    LINK: ClassVar[Link] = Link.GATEWAY_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {"id": "str, the request's"}

    id: str

    def frames(self) -> list[Any]:
        return _header(Kind.QUERY, {"id": self.id})

    @classmethod
    def read(cls, message: Message) -> Query:
        return cls(require(message.fields, "id", str))


@dataclass(frozen=True, slots=True)
class QueryReply:
    """Whether a request is still known."""

    KIND: ClassVar[Kind] = Kind.QUERY_REPLY
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_GATEWAY
    FIELDS: ClassVar[dict[str, str]] = {"id": "str", "known": "bool"}

    id: str
    known: bool

    def frames(self) -> list[Any]:
        return _header(Kind.QUERY_REPLY, {"id": self.id, "known": self.known})

    @classmethod
    def read(cls, message: Message) -> QueryReply:
        return cls(require(message.fields, "id", str), message.fields.get("known") is not False)


@dataclass(frozen=True, slots=True)
class Status:
    """Health, signatures and statistics, please."""

    KIND: ClassVar[Kind] = Kind.STATUS
    LINK: ClassVar[Link] = Link.GATEWAY_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {"id": "str"}

    id: str

    def frames(self) -> list[Any]:
        return _header(Kind.STATUS, {"id": self.id})

    @classmethod
    def read(cls, message: Message) -> Status:
        return cls(_text(message.fields, "id"))


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker as a STATUS_REPLY describes it."""

    name: str
    state: str
    pid: int | None
    models: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return self.state.upper() == "READY"


@dataclass(frozen=True, slots=True)
class StatusReply:
    """The dispatcher's view: models, workers, their statistics and its own counters."""

    KIND: ClassVar[Kind] = Kind.STATUS_REPLY
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_GATEWAY
    FIELDS: ClassVar[dict[str, str]] = {
        "id": "str",
        "models": "{name: {version: {`ready`: n workers, `queued`: n, `signature`}}}",
        "workers": "[{`worker`, `incarnation`, `device`, `pid`, `state`, `capacity`, `in_flight`, `models`, "
        "`device_memory`, `computing`}]",
        "stats": "[{`worker`, `model`, `version`, counters...}], summed over the slot's incarnations",
        "dispatcher": "{`requests`, `rejected`, `expired`, `resent`, `lost`, `pending`, `pid`}",
        "unavailable": "[{`model`, `version` (absent = every version), `reason`, `worker`}]: "
        "why a model is not served",
        "unloaded": "list of str, the models unloaded on request",
    }

    id: str
    models: dict[str, Any] = field(default_factory=dict)
    workers: list[Any] = field(default_factory=list)
    stats: list[Any] = field(default_factory=list)
    dispatcher: dict[str, Any] = field(default_factory=dict)
    unavailable: list[Any] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)

    def frames(self) -> list[Any]:
        fields = {
            "id": self.id,
            "models": self.models,
            "workers": self.workers,
            "stats": self.stats,
            "dispatcher": self.dispatcher,
            "unavailable": self.unavailable,
            "unloaded": self.unloaded,
        }
        return _header(Kind.STATUS_REPLY, fields)

    @classmethod
    def read(cls, message: Message) -> StatusReply:
        fields = message.fields
        return cls(
            id=_text(fields, "id"),
            models=_map(fields, "models"),
            workers=_list(fields, "workers"),
            stats=_list(fields, "stats"),
            dispatcher=_map(fields, "dispatcher"),
            unavailable=_list(fields, "unavailable"),
            unloaded=[str(name) for name in _list(fields, "unloaded")],
        )

    # -- the one readiness rule ---------------------------------------------------------------------------

    def ready_count(self, model: str, version: str | None = None) -> int:
        """Return how many ready workers serve ``model`` (that ``version``, or any when None)."""
        versions = self.models.get(model)
        if not isinstance(versions, dict):
            return 0
        entries = [versions.get(version)] if version else list(versions.values())
        return sum(_integer(e, "ready") for e in entries if isinstance(e, dict))

    def model_ready(self, model: str, version: str | None = None) -> bool:
        """Return whether some ready worker serves ``model`` (that ``version``, or any when None)."""
        return self.ready_count(model, version) > 0

    def worker_list(self) -> list[WorkerStatus]:
        """Return the workers, raising :class:`ProtocolError` on an entry without a name."""
        result = []
        for entry in self.workers:
            if not isinstance(entry, dict) or not isinstance(entry.get("worker"), str):
                raise ProtocolError("STATUS_REPLY worker entry without a 'worker' name")
            models = entry.get("models")
            names = tuple(str(m) for m in models if isinstance(m, str)) if isinstance(models, list) else ()
            pid = entry.get("pid")
            result.append(
                WorkerStatus(
                    entry["worker"], _text(entry, "state"), pid if isinstance(pid, int) else None, names
                )
            )
        return result

    def registered(self) -> set[str]:
        """Return the names of every worker the dispatcher knows, ready or draining."""
        return {
            str(e["worker"]) for e in self.workers if isinstance(e, dict) and isinstance(e.get("worker"), str)
        }

    def ready_workers(self) -> set[str]:
        """Return the names of the workers in rotation."""
        return {w.name for w in self.worker_list() if w.ready}


@dataclass(frozen=True, slots=True)
class Control:
    """Load (again, from disk) or unload a model on every slot that serves it."""

    KIND: ClassVar[Kind] = Kind.CONTROL
    LINK: ClassVar[Link] = Link.GATEWAY_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {"id": "str", "action": "`load` or `unload`", "model": "str"}

    id: str
    action: str
    model: str

    def frames(self) -> list[Any]:
        return _header(Kind.CONTROL, {"id": self.id, "action": self.action, "model": self.model})

    @classmethod
    def read(cls, message: Message) -> Control:
        fields = message.fields
        return cls(require(fields, "id", str), require(fields, "action", str), require(fields, "model", str))


@dataclass(frozen=True, slots=True)
class ControlReply:
    """How a load or unload ended."""

    KIND: ClassVar[Kind] = Kind.CONTROL_REPLY
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_GATEWAY
    FIELDS: ClassVar[dict[str, str]] = {
        "id": "str",
        "ok": "bool",
        "error": "str, why it failed (absent if ok)",
        "workers": "list of str, the slots done",
    }

    id: str
    ok: bool
    error: str | None = None
    workers: list[str] = field(default_factory=list)

    def frames(self) -> list[Any]:
        fields = {"id": self.id, "ok": self.ok, "error": self.error or None, "workers": self.workers}
        return _header(Kind.CONTROL_REPLY, fields)

    @classmethod
    def read(cls, message: Message) -> ControlReply:
        fields = message.fields
        workers = [w for w in _list(fields, "workers") if isinstance(w, str)]
        return cls(
            require(fields, "id", str), fields.get("ok") is True, _optional_text(fields, "error"), workers
        )


@dataclass(frozen=True, slots=True)
class WorkerControl:
    """Load (again, from disk) or unload a model on this slot."""

    KIND: ClassVar[Kind] = Kind.CONTROL
    LINK: ClassVar[Link] = Link.DISPATCHER_TO_WORKER
    FIELDS: ClassVar[dict[str, str]] = {"action": "`load` or `unload`", "model": "str"}

    action: str
    model: str

    def frames(self) -> list[Any]:
        return _header(Kind.CONTROL, {"action": self.action, "model": self.model})

    @classmethod
    def read(cls, message: Message) -> WorkerControl:
        return cls(_text(message.fields, "action"), _text(message.fields, "model"))


@dataclass(frozen=True, slots=True)
class WorkerControlReply:
    """How a load or unload ended on this slot."""

    KIND: ClassVar[Kind] = Kind.CONTROL_REPLY
    LINK: ClassVar[Link] = Link.WORKER_TO_DISPATCHER
    FIELDS: ClassVar[dict[str, str]] = {"action": "str", "model": "str", "ok": "bool", "error": "str"}

    action: str
    model: str
    ok: bool
    error: str = ""

    def frames(self) -> list[Any]:
        fields = {"action": self.action, "model": self.model, "ok": self.ok, "error": self.error}
        return _header(Kind.CONTROL_REPLY, fields)

    @classmethod
    def read(cls, message: Message) -> WorkerControlReply:
        fields = message.fields
        return cls(
            _text(fields, "action"), _text(fields, "model"), fields.get("ok") is True, _text(fields, "error")
        )


# -- reading -------------------------------------------------------------------------------------------------

MESSAGES: tuple[type[Any], ...] = (
    Request,
    ForwardedRequest,
    WorkerReply,
    Reply,
    WorkerError,
    Error,
    Ready,
    Heartbeat,
    Drain,
    Disconnect,
    Query,
    QueryReply,
    Status,
    StatusReply,
    Control,
    ControlReply,
    WorkerControl,
    WorkerControlReply,
)

# The kinds each end accepts, and the class that reads each.
ACCEPTS: dict[Link, dict[Kind, type[Any]]] = {
    Link.GATEWAY_TO_DISPATCHER: {
        Kind.REQUEST: Request,
        Kind.QUERY: Query,
        Kind.STATUS: Status,
        Kind.CONTROL: Control,
    },
    Link.DISPATCHER_TO_GATEWAY: {
        Kind.REPLY: Reply,
        Kind.ERROR: Error,
        Kind.QUERY_REPLY: QueryReply,
        Kind.STATUS_REPLY: StatusReply,
        Kind.CONTROL_REPLY: ControlReply,
    },
    Link.WORKER_TO_DISPATCHER: {
        Kind.READY: Ready,
        Kind.HEARTBEAT: Heartbeat,
        Kind.REPLY: WorkerReply,
        Kind.ERROR: WorkerError,
        Kind.DRAIN: Drain,
        Kind.DISCONNECT: Disconnect,
        Kind.CONTROL_REPLY: WorkerControlReply,
    },
    Link.DISPATCHER_TO_WORKER: {
        Kind.REQUEST: ForwardedRequest,
        Kind.HEARTBEAT: Heartbeat,
        Kind.DRAIN: Drain,
        Kind.DISCONNECT: Disconnect,
        Kind.CONTROL: WorkerControl,
    },
}


def read(message: Message, link: Link) -> Any:
    """Return the typed message ``message`` is on ``link``; raise :class:`ProtocolError` if it does not
    belong."""
    reader = ACCEPTS[link].get(message.kind)
    if reader is None:
        raise ProtocolError(f"unexpected {message.kind} on {link.value}")
    return reader.read(message)


def message_table() -> str:
    """Return the Markdown table of every message kind, its link and its fields (docs/architecture.md)."""
    rows = ["| kind | direction | fields |", "|---|---|---|"]
    for cls in MESSAGES:
        links = [link.value for link, kinds in ACCEPTS.items() if kinds.get(cls.KIND) is cls]
        fields = ", ".join(f"`{name}` ({doc})" for name, doc in cls.FIELDS.items()) or "none"
        rows.append(f"| {cls.KIND.value} | {', '.join(links)} | {fields} |")
    return "\n".join(rows) + "\n"
