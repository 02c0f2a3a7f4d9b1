"""The message kinds of a worker's session with the dispatcher: READY, HEARTBEAT, DRAIN, DISCONNECT, and
the load or unload of a model on one slot (CONTROL, CONTROL_REPLY).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from inference_worker.protocol.fields import (
    Link,
    _header,
    _integer,
    _list,
    _number,
    _optional_text,
    _text,
)
from inference_worker.protocol.frames import (
    Kind,
    Message,
    ProtocolError,
    require,
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
        "models": "list of `ModelConfig.signature(version)` (`config`: the config text it loaded), "
        "each with `name`, `version` and `files` (the stamp of the files it loaded)",
        "unavailable": "[{`model`, `version`, `reason`}]: what it could not load",
        "assigned": "list of str, its `--model` list; empty: every model",
        "direct": "str, `unix://<path>`: where it takes requests from gateways on its host; absent = none",
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
    direct: str | None = None

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
            "direct": self.direct,
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
            direct=_optional_text(fields, "direct"),
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
        "direct_requests": "int, requests from its direct lane it holds (queued or computing); the "
        "dispatcher does not see them otherwise",
        "rss_bytes": "int, the worker process's resident memory (0: unknown)",
    }

    incarnation: str | None = None
    stats: list[dict[str, Any]] | None = None
    device_memory: dict[str, Any] | None = None
    computing: Computing | None = None
    direct_requests: int = 0
    rss_bytes: int = 0

    def frames(self) -> list[Any]:
        fields = {
            "incarnation": self.incarnation,
            "stats": self.stats,
            "device_memory": self.device_memory,
            "computing": self.computing.to_wire() if self.computing else None,
            "direct_requests": self.direct_requests,
            "rss_bytes": self.rss_bytes,
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
            direct_requests=max(0, _integer(fields, "direct_requests")),
            rss_bytes=max(0, _integer(fields, "rss_bytes")),
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
