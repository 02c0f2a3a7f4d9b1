"""The dispatcher's state and routing choices, without I/O.

Workers register with their capacity (credits) and the model versions they serve. A request goes to the
least-loaded ready worker that serves its model version and has credit; otherwise it waits in a bounded
queue per model, in priority order (Triton's levels, each first come first served). Requests in flight on a
worker that is lost are re-sent once, then failed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from inference_worker.batching import priority_level
from inference_worker.errors import CodedError
from inference_worker.protocol import Computing, ErrorCode
from inference_worker.protocol.queries import default_version
from inference_worker.protocol.relay import RelayedRequest

MAX_ATTEMPTS = 2  # the first try and one re-send


@dataclass(slots=True)
class Request:
    """A request the dispatcher holds, queued or in flight."""

    seq: int
    gateway: bytes  # the gateway socket's routing identity
    id: str  # the gateway's correlation id
    model: str
    version: str
    deadline: float  # unix seconds
    message: RelayedRequest  # as the gateway sent it; forwarded with its tensor frames untouched
    attempts: int = 0
    worker: bytes | None = None
    level: int = 0  # its priority level (inference_worker.batching.priority_level): lower goes first

    @property
    def key(self) -> tuple[bytes, str]:
        return self.gateway, self.id

    @property
    def request_id(self) -> str:
        return self.message.request_id


@dataclass(slots=True)
class WorkerState:
    """One worker incarnation as the dispatcher sees it."""

    identity: bytes
    name: str
    incarnation: str
    capacity: int
    signatures: dict[tuple[str, str], dict[str, Any]]
    expires: float
    device: str = "cpu"
    pid: int = 0
    draining: bool = False
    controlling: bool = False  # loading or unloading a model on request: it takes no new work meanwhile
    overdue: bool = False  # held a request past its deadline: no new work until it answers anything
    assigned: tuple[str, ...] = ()  # the models this slot is configured to serve; empty: every model
    device_memory: dict[str, Any] | None = None  # GPU workers: used and reserved bytes, from heartbeats
    # What its last heartbeat said it computes (batch number, since when): a busy worker is not a dead one.
    computing: Computing | None = None
    shared_memory: bool = (
        False  # on this host (ipc): it maps the gateways' tensor segments (inference_worker.shm)
    )
    in_flight: dict[int, Request] = field(default_factory=dict)
    direct: str | None = None  # where gateways on this host may send it requests directly (its READY)
    direct_requests: int = 0  # how many of those it holds, by its last heartbeat
    rss_bytes: int = 0  # its resident memory, by its last heartbeat
    since: float = 0.0  # when this incarnation first registered (unix s)

    @property
    def credit(self) -> int:
        if self.draining or self.controlling or self.overdue:
            return 0
        return self.capacity - len(self.in_flight)

    def describe(self) -> dict[str, Any]:
        return {
            "worker": self.name,
            "incarnation": self.incarnation,
            "device": self.device,
            "pid": self.pid,
            "state": "DRAINING" if self.draining else "READY",
            "capacity": self.capacity,
            "in_flight": len(self.in_flight),
            "models": [f"{m}/{v}" for m, v in self.signatures],
            "device_memory": self.device_memory,
            "computing": self.computing.to_wire() if self.computing else None,
            "direct": self.direct,
            "direct_requests": self.direct_requests,
            "rss_bytes": self.rss_bytes,
            "since": self.since,
        }


class Router:
    """Registered workers, per-model queues and in-flight requests."""

    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerState] = {}
        self.queues: dict[str, deque[Request]] = {}
        self.requests: dict[tuple[bytes, str], Request] = {}
        self._turn = 0  # rotates among equally loaded workers

    # -- workers ----------------------------------------------------------------------------------------

    def disagreeing(self, worker: WorkerState) -> list[tuple[str, str, str]]:
        """Return (model, version, other slot) for each version ``worker`` serves with another config, or from
        other files, than another serving slot (say, a slot restarted on a config.toml edited and not loaded,
        or a load that failed on some slots only): requests are checked against one of the two."""
        found = []
        for (model, version), signature in sorted(worker.signatures.items()):
            for other in self.workers.values():
                theirs = other.signatures.get((model, version))
                if other.name != worker.name and not other.draining and theirs not in (None, signature):
                    found.append((model, version, other.name))
                    break
        return found

    def register(self, worker: WorkerState) -> list[Request]:
        """Add a worker; return requests orphaned by an earlier incarnation of the same slot."""
        orphans: list[Request] = []
        for other in [
            w for w in self.workers.values() if w.name == worker.name and w.identity != worker.identity
        ]:
            orphans.extend(self.remove(other.identity))
        previous = self.workers.get(worker.identity)
        if previous is not None:  # READY again on the same socket: keep what it has in flight
            worker.in_flight = previous.in_flight
        self.workers[worker.identity] = worker
        return orphans

    def remove(self, identity: bytes) -> list[Request]:
        """Forget a worker; return its in-flight requests (to be re-sent or failed)."""
        worker = self.workers.pop(identity, None)
        if worker is None:
            return []
        orphans = list(worker.in_flight.values())
        for request in orphans:
            request.worker = None
        return orphans

    def expired_workers(self, now: float) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.expires <= now]

    def serves(self, model: str) -> dict[str, dict[str, Any]]:
        """Return version -> signature for every version some non-draining worker serves."""
        return {
            v: sig
            for w in self.workers.values()
            if not w.draining
            for (m, v), sig in w.signatures.items()
            if m == model
        }

    def resolve_version(self, model: str, version: str | None) -> str:
        """Return the version a request will run on; raise :class:`CodedError` if no worker serves it."""
        versions = self.serves(model)
        if not versions:
            raise CodedError(ErrorCode.UNAVAILABLE, f"no ready worker serves model {model!r}")
        if not version:
            return default_version(versions)
        if version not in versions:
            raise CodedError(
                ErrorCode.UNAVAILABLE, f"no ready worker serves model {model!r} version {version!r}"
            )
        return version

    # -- requests ---------------------------------------------------------------------------------------

    def enqueue(self, request: Request, front: bool = False) -> None:
        """Queue a request for its model, or raise :class:`CodedError` when the queue is full."""
        queue = self.queues.setdefault(request.model, deque())
        limit = self._queue_limit(request.model, request.version)
        if not front and len(queue) >= limit:
            raise CodedError(
                ErrorCode.UNAVAILABLE, f"model {request.model!r} queue is full ({limit} requests)"
            )
        if front:
            queue.appendleft(request)
        elif not queue or queue[-1].level <= request.level:
            queue.append(request)
        else:  # after every request of its level or a higher one
            queue.insert(next(i for i, queued in enumerate(queue) if queued.level > request.level), request)
        self.requests[request.key] = request

    def assignments(self) -> Iterator[tuple[Request, WorkerState]]:
        """Yield (request, worker) pairs for every queued request a worker has credit for, oldest first."""
        for queue in self.queues.values():
            while queue:
                worker = self.pick(queue[0].model, queue[0].version)
                if worker is None:
                    break
                request = queue.popleft()
                request.worker = worker.identity
                request.attempts += 1
                worker.in_flight[request.seq] = request
                yield request, worker

    def pick(self, model: str, version: str) -> WorkerState | None:
        """Return the least-loaded ready worker with credit that serves ``model`` ``version``; ties take
        turns."""
        best: list[WorkerState] = []
        best_load = 2.0
        for worker in self.workers.values():
            if worker.credit > 0 and (model, version) in worker.signatures:
                load = len(worker.in_flight) / worker.capacity
                if load < best_load:
                    best, best_load = [worker], load
                elif load == best_load:
                    best.append(worker)
        if not best:
            return None
        self._turn += 1
        return best[self._turn % len(best)]

    def complete(self, identity: bytes, seq: int) -> Request | None:
        """Take a finished request off its worker; None if it is not known there."""
        worker = self.workers.get(identity)
        request = worker.in_flight.pop(seq, None) if worker else None
        if request is not None:
            self.requests.pop(request.key, None)
        return request

    def forget(self, request: Request) -> None:
        self.requests.pop(request.key, None)

    def withdraw(self, key: tuple[bytes, str]) -> Request | None:
        """Take the request ``key`` off its queue, never to run (its client went away), and return it; None
        when it is not queued (unknown, or in flight: its worker decides, see ``Requests.cancel``)."""
        request = self.requests.get(key)
        if request is None or request.worker is not None:
            return None
        queue = self.queues.get(request.model, deque())
        at = next((i for i, queued in enumerate(queue) if queued is request), None)
        if at is not None:
            del queue[at]
        del self.requests[key]
        return request

    def expired_requests(self, now_unix: float) -> list[Request]:
        """Remove and return queued requests whose deadline has passed (they are never computed)."""
        expired: list[Request] = []
        for model, queue in self.queues.items():
            if any(r.deadline <= now_unix for r in queue):
                expired.extend(r for r in queue if r.deadline <= now_unix)
                self.queues[model] = deque(r for r in queue if r.deadline > now_unix)
        for request in expired:
            self.requests.pop(request.key, None)
        return expired

    def overdue(self, now_unix: float, grace: float) -> list[Request]:
        """Remove and return in-flight requests ``grace`` seconds past their deadline (their client has had
        its 504); each worker that held one takes no new work until it answers something (it is slow or hung,
        not silent: its heartbeats still come)."""
        late: list[Request] = []
        for worker in self.workers.values():
            for seq, request in list(worker.in_flight.items()):
                if request.deadline + grace <= now_unix:
                    del worker.in_flight[seq]
                    self.requests.pop(request.key, None)
                    worker.overdue = True
                    late.append(request)
        return late

    def unservable(self) -> list[Request]:
        """Remove and return queued requests whose model version no worker serves any more."""
        lost: list[Request] = []
        for model, queue in self.queues.items():
            versions = self.serves(model)
            if any(r.version not in versions for r in queue):
                lost.extend(r for r in queue if r.version not in versions)
                self.queues[model] = deque(r for r in queue if r.version in versions)
        for request in lost:
            self.requests.pop(request.key, None)
        return lost

    def queued(self, model: str) -> int:
        return len(self.queues.get(model, ()))

    def pending(self) -> int:
        return len(self.requests)

    def level(self, model: str, version: str, asked: int) -> int:
        """Return the priority level a request of ``model`` ``version`` that asked for ``asked`` runs at."""
        signature = self.serves(model).get(version, {})
        levels, default = signature.get("priority_levels", 0), signature.get("default_priority_level", 0)
        if type(levels) is not int or type(default) is not int:
            return 0
        return priority_level(asked, levels, default)

    def _queue_limit(self, model: str, version: str) -> int:
        signature = self.serves(model).get(version, {})
        return int(signature.get("max_queue_size", 1024))

    def status(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Return models and workers as STATUS_REPLY carries them."""
        models: dict[str, dict[str, Any]] = {}
        for worker in self.workers.values():
            for (model, version), signature in worker.signatures.items():
                entry = models.setdefault(model, {}).setdefault(
                    version, {"ready": 0, "queued": 0, "signature": signature}
                )
                entry["ready"] += 0 if worker.draining else 1
        for model, versions in models.items():
            for version, entry in versions.items():
                entry["queued"] = sum(1 for r in self.queues.get(model, ()) if r.version == version)
        return models, [w.describe() for w in self.workers.values()]
