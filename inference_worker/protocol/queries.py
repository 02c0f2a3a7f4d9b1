"""The message kinds a gateway asks the dispatcher with: QUERY, STATUS (the readiness rule), CONTROL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from inference_worker.protocol.fields import (
    Link,
    _header,
    _integer,
    _list,
    _map,
    _optional_text,
    _text,
)
from inference_worker.protocol.frames import (
    Kind,
    Message,
    ProtocolError,
    require,
)

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
        "`device_memory`, `computing`, `direct`, `direct_requests`, `rss_bytes`, "
        "`since` (registered, unix s)}]",
        "stats": "[{`worker`, `model`, `version`, counters...}], summed over the slot's incarnations",
        "dispatcher": "{`requests`, `rejected`, `expired`, `resent`, `lost`, `cancelled`, `pending`, `pid`}",
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

    def signatures(self, model: str) -> dict[str, dict[str, Any]]:
        """Return version -> the signature the workers serving ``model`` announced (with ``config``, the
        config text they loaded, and ``files``, the stamp of the files they loaded)."""
        versions = self.models.get(model)
        if not isinstance(versions, dict):
            return {}
        return {
            str(v): e["signature"]
            for v, e in versions.items()
            if isinstance(e, dict) and isinstance(e.get("signature"), dict)
        }

    def direct_lanes(self, model: str, version: str | None) -> tuple[str, list[str]] | None:
        """Return the version the dispatcher would run ``model`` on (``version``, or its default when None)
        and the direct endpoints of the ready workers serving that version; None when no ready worker does.
        """
        versions = self.models.get(model)
        if not isinstance(versions, dict):
            return None
        ready = [v for v, e in versions.items() if isinstance(e, dict) and _integer(e, "ready") > 0]
        chosen = version or (default_version(ready) if ready else None)
        if chosen is None or chosen not in ready:
            return None
        tag = f"{model}/{chosen}"
        endpoints = [
            w["direct"]
            for w in self.workers
            if isinstance(w, dict)
            and w.get("state") == "READY"
            and isinstance(w.get("direct"), str)
            and tag in (w.get("models") or ())
        ]
        return chosen, endpoints

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


def default_version(versions: Iterable[str]) -> str:
    """Return the version a request that names none runs on: the highest number (Triton's "latest")."""
    return max(versions, key=lambda v: int(v) if v.isdigit() else -1)
