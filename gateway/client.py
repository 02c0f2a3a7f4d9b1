"""The gateway's side of the wire: one ZeroMQ DEALER socket per request thread, talking to the dispatcher.

ZeroMQ sockets are not thread-safe and must not be used across ``fork``, so each (process, thread) pair gets
its own socket, created on first use, with ``LINGER 0``. A waiting request polls in slices; after a silent
slice it asks the dispatcher whether the request is still known (QUERY). A dispatcher that restarted and lost
the request gets it once more, as soon as a worker for its model has registered again (STATUS); a request lost
twice, or a dispatcher silent for too long, is a 503; a request past its deadline is a 504, at the deadline.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from gateway.codec import Tensor
from gateway.direct import SEND_TIMEOUT, DirectLink, DirectLinks, LinkDown
from gateway.errors import Cancelled, DeadlineExceeded, Unavailable
from inference_worker import direct_lane, protocol, shm
from inference_worker.errors import CodedError
from inference_worker.protocol import Link, ProtocolError, TensorMeta
from inference_worker.status import ask_status

log = logging.getLogger("torchgate.gateway")

MAX_ERROR_MESSAGE = 500  # characters of a worker's error message passed on to the client
SHM_ENV = "TORCHGATE_SHARED_MEMORY"  # "0": tensors always in frames
REPLY_ROOM = 64 * 1024  # room a body's segment keeps for the outputs, past the body (sizes round up too)
DIRECT_STATUS_AGE = 1.0  # seconds the workers' direct endpoints (from STATUS) are trusted before asking again


@dataclass(slots=True)
class BodyLease:
    """A request body's place in a segment (:meth:`DispatcherClient.lease_body`): its tensors then travel
    from where the body was received."""

    segment: shm.Segment
    view: memoryview  # where the body goes
    end: int  # the body's end in the segment


@dataclass(frozen=True, slots=True)
class InferReply:
    """What the dispatcher answered to one REQUEST."""

    model: str
    version: str
    worker: str
    outputs: list[Tensor]
    stats: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Call:
    """One infer call's arguments, as each way of sending it (the dispatcher, the direct lane) needs them."""

    model: str
    version: str | None  # as asked: None or "" is the default version
    tensors: Sequence[Tensor]
    outputs: Sequence[str]
    deadline: float  # unix seconds
    request_id: str
    priority: int
    parameters: protocol.Parameters
    # outputs (by name) that, answered in the request's segment, are handed straight to a function (which
    # copies them where they go and returns what stands for their data) instead of being copied out
    sinks: Mapping[str, Callable[[memoryview], memoryview]] | None = None
    gone: Callable[[], bool] | None = None  # whether the client went away (asked after each silent slice)

    def frames(
        self, call_id: str, version: str | None, segment: tuple[shm.Segment, dict[str, Any]] | None
    ) -> list[Any]:
        """The REQUEST's frames: the tensors in frames, or only the segment's reference when there is one."""
        inputs = []
        if segment is None:
            inputs = [(TensorMeta(t.name, t.datatype, t.shape), t.data) for t in self.tensors]
        return protocol.Request(
            id=call_id,
            model=self.model,
            inputs=inputs,
            version=version or None,
            deadline=self.deadline,
            request_id=self.request_id,
            priority=self.priority,
            outputs=tuple(self.outputs),
            shm=segment[1] if segment is not None else None,
            parameters=self.parameters,
        ).frames()


class _OwnedSocket(zmq.Socket):  # type: ignore[type-arg]
    """A socket collected with its thread or client closes itself quietly, but only in the process that made
    it.

    The gateway's per-thread sockets may be collected in any order with the objects that own them (say, an
    app in a reference cycle); pyzmq would warn about each one. One inherited across fork is never touched.
    """

    owner_pid = (
        0  # set right after creation (a class attribute, so pyzmq does not take it for a socket option)
    )

    def __del__(self) -> None:
        if not self.closed and self.owner_pid == os.getpid():
            self.close(linger=0)


class _Holder:
    """One thread's sockets (to the dispatcher, and its direct links to workers); closes them when the
    thread (and so its thread-local storage) goes away."""

    def __init__(self, socket: zmq.Socket[Any]) -> None:
        self.socket = socket
        self.links = DirectLinks()
        self.pid = os.getpid()

    def close(self) -> None:
        if self.pid == os.getpid() and not self.socket.closed:
            self.socket.close(linger=0)
            self.links.close()

    def __del__(self) -> None:
        self.close()


class DispatcherClient:
    """Send requests and status queries to the dispatcher from any number of threads and processes."""

    def __init__(
        self,
        endpoint: str,
        *,
        status_ttl: float = 0.5,
        status_timeout: float = 1.0,
        poll_interval: float = 0.5,
        unresponsive_after: float = 5.0,
        idle: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.idle = idle  # run once a request is sent, while its reply is awaited (gateway.afterwork)
        self.status_ttl = status_ttl
        self.status_timeout = status_timeout
        self.poll_interval = poll_interval
        self.unresponsive_after = unresponsive_after
        self._local = threading.local()
        self._lock = threading.Lock()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._ids = itertools.count(1)
        # Tensors in shared memory only with a dispatcher on this host (ipc), where segments can be mapped.
        self.shared_memory = (
            endpoint.startswith("ipc://") and shm.supported() and os.environ.get(SHM_ENV, "1") != "0"
        )
        self._pool = shm.Pool()
        self._leases: dict[int, BodyLease] = {}  # id of a leased segment's mapping -> its lease, until used
        self._status: tuple[float, protocol.StatusReply | CodedError] | None = None
        self._status_lock = threading.Lock()
        # Straight to a worker when this process has no other request in flight (gateway.direct).
        self.direct = direct_lane.enabled(endpoint)
        self._in_flight = 0
        self._turns = itertools.count()

    # -- sockets ----------------------------------------------------------------------------------------

    def _socket(self) -> zmq.Socket[Any]:
        holder = getattr(self._local, "holder", None)
        if holder is None or holder.pid != os.getpid() or holder.socket.closed:
            socket = self._ctx().socket(zmq.DEALER, socket_class=_OwnedSocket)
            socket.owner_pid = os.getpid()
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(self.endpoint)
            holder = _Holder(socket)  # a socket inherited across fork is dropped unclosed, never used
            self._local.holder = holder
            with self._lock:
                self._holders.add(holder)
        return holder.socket

    @staticmethod
    def _ctx() -> zmq.Context[Any]:
        return zmq.Context.instance()  # one per process: pyzmq makes a new one in a forked child

    def close(self) -> None:
        """Close every socket this process opened (call when no request is running)."""
        with self._lock:
            holders = list(self._holders)
        for holder in holders:
            holder.close()

    def _next_id(self) -> str:
        return f"{os.getpid():x}-{next(self._ids):x}"

    @staticmethod
    def _send(socket: zmq.Socket[Any], frames: list[Any]) -> None:
        # Zero-copy for large frames only: pyzmq copies any frame under zmq.COPY_THRESHOLD (64 KiB) itself.
        try:
            socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise Unavailable("the dispatcher is not accepting requests (its connection is full)") from None

    @staticmethod
    def _receive(socket: zmq.Socket[Any], timeout: float) -> Any:
        """Wait up to ``timeout`` seconds for one message (None if malformed); raise ``zmq.Again`` if none
        came.

        One blocking receive with a timeout instead of a poll and then a receive: each call into ZeroMQ lets
        go of the GIL and takes it back, and with dozens of request threads every hand-over costs futex calls.
        """
        timeout_ms = max(1, int(timeout * 1000))
        if socket.rcvtimeo != timeout_ms:
            socket.rcvtimeo = timeout_ms
        frames = socket.recv_multipart(copy=False)
        try:
            return protocol.receive(frames, Link.DISPATCHER_TO_GATEWAY)
        except ProtocolError as exc:
            log.warning("gateway: dropped a malformed message from the dispatcher: %s", exc)
            return None

    # -- requests ---------------------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        version: str | None,
        tensors: Sequence[Tensor],
        outputs: Sequence[str],
        deadline: float,
        request_id: str = "",
        priority: int = 0,
        reply_bytes: int = 0,
        parameters: protocol.Parameters | None = None,
        sinks: Mapping[str, Callable[[memoryview], memoryview]] | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> InferReply:
        """Run one request and return its outputs; raise a :class:`CodedError` for every failure.

        ``deadline`` is in unix seconds; ``version`` None or "" runs the default version. Large inputs
        travel in a shared-memory segment (:mod:`inference_worker.shm`) when the dispatcher is on this host,
        with room for ``reply_bytes`` of outputs; only the header crosses the dispatcher. ``parameters`` go
        to the model's handler. An output named in ``sinks`` that comes back in the segment is given to its
        function, a view of the segment, rather than copied out (a client's shared-memory region takes it).

        ``gone`` says whether the client went away. It is asked before the request is sent (a client may
        leave while its request waits for a gateway thread: it is then never sent), and each time an answer
        has not come for ``poll_interval`` seconds: once it says yes, the request is withdrawn (CANCEL: a
        worker that has not started it never will) and :class:`Cancelled` is raised.
        """
        if gone is not None and gone():
            raise Cancelled(f"request {request_id or 'of ' + model}: the client went away before it was sent")
        call = _Call(
            model, version, tensors, outputs, deadline, request_id, priority, parameters or {}, sinks, gone
        )
        with self._lock:
            alone = self._in_flight == 0
            self._in_flight += 1
        try:
            return self._infer_any(call, reply_bytes, alone)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _infer_any(self, call: _Call, reply_bytes: int, alone: bool) -> InferReply:
        """:meth:`infer` down the direct lane when ``alone`` and a worker takes it, else (or then) through
        the dispatcher."""
        segment = self._segment(call.tensors, reply_bytes)
        abandoned = False  # a worker took it directly and may still write the segment: never reused
        try:
            reply = None
            lane = self._direct_lane(call.model, call.version) if alone else None
            if lane is not None:
                reply, abandoned = self._infer_direct(*lane, call, segment)
            if reply is None:
                reply = self._infer(call, segment)
        except _SharedMemoryRefused:
            if segment is not None:
                segment[0].close()
            return self._infer(call, None)
        except BaseException:
            if segment is not None:  # a worker may still hold it: never used again, freed when all let go
                segment[0].close()
            raise
        if segment is not None and abandoned:  # a worker may still hold it: freed when all let go
            segment[0].close()
        elif segment is not None:  # answered: no worker touches it any more, and the outputs were copied out
            self._pool.give(segment[0])
        return reply

    def lease_body(self, length: int, json_bytes: int, reply_bytes: int = 0) -> BodyLease | None:
        """Lend a segment to receive a binary infer body of ``length`` bytes into, its JSON header of
        ``json_bytes`` placed so that the binary tensors after it start 64-byte aligned, with room for
        ``reply_bytes`` of outputs after it; None when its tensors would not travel in shared memory.
        :meth:`infer` takes the segment over when the request's tensors are views of it; else
        :meth:`release_body` gives it back."""
        if not self.shared_memory or not 0 <= json_bytes <= length or length - json_bytes < shm.MIN_BYTES:
            return None
        base = -(-(shm.HEADER + json_bytes) // 64) * 64 - json_bytes
        try:
            segment = self._pool.take(base + length + max(REPLY_ROOM, reply_bytes))
        except OSError:
            return None
        lease = BodyLease(segment, memoryview(segment.memory)[base : base + length], base + length)
        with self._lock:
            self._leases[id(segment.memory)] = lease
        return lease

    def release_body(self, lease: BodyLease) -> None:
        """Give back a lease's segment unless a request took it over (call once the request is answered)."""
        with self._lock:
            if self._leases.get(id(lease.segment.memory)) is not lease:
                return
            del self._leases[id(lease.segment.memory)]
        self._pool.give(lease.segment)

    def _in_place(
        self, tensors: Sequence[Tensor], metas: list[TensorMeta], reply_bytes: int
    ) -> tuple[shm.Segment, dict[str, Any]] | None:
        """Take over the leased segment the inputs were received into, if they all lie in it and the
        outputs fit after the body; return it with its reference."""
        owner = next((t.data.obj for t in tensors if isinstance(t.data, memoryview)), None)
        with self._lock:
            lease = self._leases.pop(id(owner), None) if owner is not None else None
        if lease is None:
            return None
        segment = lease.segment
        offsets = [segment.offset_of(t.data) if t.data else shm.HEADER for t in tensors]
        reply_at = -(-lease.end // 64) * 64
        if any(o is None for o in offsets) or reply_at + max(0, reply_bytes) > segment.size:
            with self._lock:  # still lent: the inputs are copied to another; given back once answered
                self._leases[id(segment.memory)] = lease
            return None
        ref: dict[str, Any] = {
            **segment.ref(),
            "inputs": [
                shm.Placed(m, o).to_wire() for m, o in zip(metas, offsets, strict=True) if o is not None
            ],
            "reply": [reply_at, segment.size - reply_at],
        }
        return segment, ref

    def _segment(
        self, tensors: Sequence[Tensor], reply_bytes: int
    ) -> tuple[shm.Segment, dict[str, Any]] | None:
        """Return the segment the inputs travel in with its reference, or None (frames, then): the one the
        body was received into (:meth:`lease_body`), else a new one the inputs are copied into."""
        total = sum(len(t.data) for t in tensors)
        if not self.shared_memory or total < shm.MIN_BYTES:
            return None
        metas = [TensorMeta(t.name, t.datatype, t.shape) for t in tensors]
        if not shm.placeable(metas):  # BYTES (strings, files) go in frames
            return None
        if self._leases and (in_place := self._in_place(tensors, metas, reply_bytes)) is not None:
            return in_place
        offsets, end = shm.layout(metas)
        reply_at = -(-end // 64) * 64
        try:
            segment = self._pool.take(reply_at + max(0, reply_bytes))
        except OSError as exc:
            log.warning("gateway: no shared memory (%s); tensors go in frames", exc)
            self.shared_memory = False
            return None
        view = memoryview(segment.memory)
        for t, offset in zip(tensors, offsets, strict=True):
            view[offset : offset + len(t.data)] = t.data
        ref: dict[str, Any] = {
            **segment.ref(),
            "inputs": [shm.Placed(m, o).to_wire() for m, o in zip(metas, offsets, strict=True)],
            "reply": [reply_at, segment.size - reply_at],
        }
        return segment, ref

    def _infer(self, call: _Call, segment: tuple[shm.Segment, dict[str, Any]] | None) -> InferReply:
        """Send one request through the dispatcher and wait for its answer (re-sent once if the dispatcher
        restarted and lost it)."""
        socket = self._socket()
        call_id = self._next_id()
        model, version, deadline, request_id = call.model, call.version, call.deadline, call.request_id
        frames = call.frames(call_id, version, segment)
        self._send(socket, frames)
        if self.idle is not None:
            self.idle()
        resent = False
        status_id = call_id + "/s"  # asked while a lost request waits for a worker to come back
        awaiting_worker = False
        heard = time.monotonic()
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"request {request_id or call_id} passed its deadline")
            try:
                message = self._receive(socket, min(remaining, self.poll_interval))
            except zmq.Again:  # a silent slice: is the request still known, or is a worker back?
                if call.gone is not None and call.gone():
                    self._send(socket, protocol.Cancel(call_id).frames())
                    raise Cancelled(f"request {request_id or call_id}: the client went away") from None
                if time.monotonic() - heard >= self.unresponsive_after:
                    raise Unavailable(
                        f"the dispatcher has not answered for {self.unresponsive_after:g}s"
                    ) from None
                if awaiting_worker:
                    self._send(socket, protocol.Status(status_id).frames())
                else:
                    self._send(socket, protocol.Query(call_id).frames())
                continue
            if message is None:
                continue
            heard = time.monotonic()
            if isinstance(message, protocol.StatusReply):
                if message.id == status_id and awaiting_worker and message.model_ready(model, version):
                    awaiting_worker = False
                    self._send(socket, frames)
                continue
            if message.id != call_id:
                continue  # a late answer to an earlier request of this thread, or to its status query
            if isinstance(message, protocol.Reply):
                return _reply(message, segment[0] if segment else None, call.sinks)
            if isinstance(message, protocol.Error):
                if segment is not None and message.message.startswith(shm.REFUSED):
                    log.warning(
                        "gateway: a worker cannot map shared memory (%s); tensors go in frames",
                        message.message,
                    )
                    self.shared_memory = False
                    raise _SharedMemoryRefused()
                raise _error(message)
            if isinstance(message, protocol.QueryReply) and not message.known and not awaiting_worker:
                if resent:
                    raise Unavailable("the dispatcher lost the request twice (did it restart?)")
                # A restarted dispatcher lost it; send it again once a worker has registered with the new one.
                log.info(
                    "gateway: request %s unknown to the dispatcher; sending it again", request_id or call_id
                )
                resent = awaiting_worker = True
                self._send(socket, protocol.Status(status_id).frames())

    # -- the direct lane ----------------------------------------------------------------------------------

    def _direct_lane(self, model: str, version: str | None) -> tuple[DirectLink, str] | None:
        """Return a connection to a ready worker serving ``model`` and the version it would run, or None."""
        if not self.direct:
            return None
        try:
            status = self.status(max_age=DIRECT_STATUS_AGE)
        except CodedError:
            return None
        links = self._holder().links
        links.prune(status)
        lanes = status.direct_lanes(model, version)
        if lanes is None or not lanes[1]:
            return None
        resolved, endpoints = lanes
        link = links.get(endpoints[next(self._turns) % len(endpoints)])
        return (link, resolved) if link is not None else None

    def _infer_direct(
        self,
        link: DirectLink,
        version: str,
        call: _Call,
        segment: tuple[shm.Segment, dict[str, Any]] | None,
    ) -> tuple[InferReply | None, bool]:
        """Send one request straight to a worker; return its answer, or None when it must go through the
        dispatcher after all, with whether the worker may still hold it (declined: no; its connection dropped,
        or the dispatcher took it out of rotation for silence: yes)."""
        call_id = self._next_id()
        deadline, request_id = call.deadline, call.request_id
        try:
            link.send(call.frames(call_id, version, segment), min(SEND_TIMEOUT, deadline - time.time()))
        except LinkDown:
            self._holder().links.drop(link)
            return None, False  # the worker was gone before it had read the request whole
        if self.idle is not None:
            self.idle()
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"request {request_id or call_id} passed its deadline")
            try:
                received = link.receive(min(remaining, self.poll_interval))
            except LinkDown as exc:
                self._holder().links.drop(link)
                log.info("gateway: worker at %s: %s; request sent to the dispatcher", link.endpoint, exc)
                return None, True
            if received is None:  # a silent slice: slow is not dead, only silence takes a worker out
                if call.gone is not None and call.gone():
                    try:
                        link.send(protocol.Cancel(call_id).frames(), SEND_TIMEOUT)
                    except LinkDown:
                        self._holder().links.drop(link)
                    raise Cancelled(f"request {request_id or call_id}: the client went away")
                if not self._still_listed(link.endpoint):
                    log.warning(
                        "gateway: worker at %s out of rotation; request sent to the dispatcher", link.endpoint
                    )
                    return None, True
                continue
            try:
                message = protocol.receive(received, Link.WORKER_TO_GATEWAY)
            except ProtocolError as exc:
                log.warning("gateway: dropped a malformed message from a worker: %s", exc)
                continue
            if message.id != call_id:
                continue  # a late answer to an earlier request of this thread
            if isinstance(message, protocol.Reply):
                return _reply(message, segment[0] if segment else None, call.sinks), False
            if message.code is protocol.ErrorCode.DECLINED:
                return None, False
            if segment is not None and message.message.startswith(shm.REFUSED):
                self.shared_memory = False
                raise _SharedMemoryRefused()
            raise _error(message)

    def _still_listed(self, endpoint: str) -> bool:
        """Whether the dispatcher still counts the worker at ``endpoint`` in (it takes out a worker whose
        heartbeats stopped, not a busy one); True when the dispatcher cannot say."""
        try:
            status = self.status(max_age=DIRECT_STATUS_AGE)
        except CodedError:
            return True
        return any(isinstance(w, dict) and w.get("direct") == endpoint for w in status.workers)

    def _holder(self) -> _Holder:
        self._socket()
        holder: _Holder = self._local.holder
        return holder

    # -- status -----------------------------------------------------------------------------------------

    def status(self, max_age: float | None = None) -> protocol.StatusReply:
        """Return the dispatcher's STATUS_REPLY, reused for ``max_age`` (default ``status_ttl``) seconds: one
        asked for at most that long before this call (with 0, after it began; concurrent callers share one).

        Raise :class:`Unavailable` within about ``status_timeout`` seconds if the dispatcher does not answer.
        """
        max_age = self.status_ttl if max_age is None else max_age
        oldest = time.monotonic() - max_age  # the earliest a status may have been asked for
        cached = self._status
        if cached is None or cached[0] < oldest or (max_age == 0 and cached[0] <= oldest):
            with self._status_lock:  # one refresh at a time; those waiting then find it fresh enough
                cached = self._status
                if cached is None or cached[0] < oldest or (max_age == 0 and cached[0] <= oldest):
                    asked = time.monotonic()
                    try:
                        result: protocol.StatusReply | CodedError = self._fetch_status()
                    except CodedError as exc:
                        result = exc
                    cached = self._status = (asked, result)
        if isinstance(cached[1], CodedError):
            raise cached[1]
        return cached[1]

    def _fetch_status(self) -> protocol.StatusReply:
        try:
            reply = ask_status(self._socket(), self.status_timeout, self._next_id())
        except zmq.Again:
            raise Unavailable("the dispatcher is not accepting requests (its connection is full)") from None
        if reply is not None:
            return reply
        raise Unavailable(f"the dispatcher did not answer a status query within {self.status_timeout:g}s")

    def control(self, action: str, model: str, timeout: float) -> protocol.ControlReply:
        """Ask the dispatcher to load or unload ``model``; return its CONTROL_REPLY (``ok``, ``error``).

        Raise :class:`Unavailable` if no answer comes within ``timeout`` seconds (the job may still finish).
        """
        socket = self._socket()
        call_id = self._next_id()
        self._send(socket, protocol.Control(call_id, action, model).frames())
        until = time.monotonic() + timeout
        while (remaining := until - time.monotonic()) > 0:
            try:
                message = self._receive(socket, remaining)
            except zmq.Again:
                break
            if isinstance(message, protocol.ControlReply) and message.id == call_id:
                self._status = None  # what this process says next about readiness must include the change
                return message
        raise Unavailable(f"the {action} of model {model!r} did not finish within {timeout:g}s")


class _SharedMemoryRefused(Exception):
    """A worker could not map the request's segment: send it again in frames."""


def _reply(
    message: protocol.Reply,
    segment: shm.Segment | None = None,
    sinks: Mapping[str, Callable[[memoryview], memoryview]] | None = None,
) -> InferReply:
    outputs = [Tensor(meta.name, meta.datatype, meta.shape, buf) for meta, buf in message.outputs]
    placed = message.shm_outputs
    if placed is not None:
        if segment is None:
            raise Unavailable("the worker answered in shared memory the request did not offer")
        try:
            tensors = shm.placed_tensors(placed, segment.size)
        except ProtocolError as exc:
            raise Unavailable(f"malformed answer from the worker: {exc}") from None
        view = memoryview(segment.memory)
        sinks = sinks or {}
        for p in tensors:  # copied out: the segment serves the next request as soon as this one is answered
            data = view[p.offset : p.offset + p.meta.nbytes]
            sink = sinks.get(p.meta.name)
            outputs.append(
                Tensor(p.meta.name, p.meta.datatype, p.meta.shape, sink(data) if sink else bytes(data))
            )
    return InferReply(message.model, message.version, message.worker, outputs, message.stats)


def _error(message: protocol.Error) -> CodedError:
    text = (message.message or "the request failed").strip()
    text = text.splitlines()[0][:MAX_ERROR_MESSAGE] if text else "the request failed"
    return CodedError(message.code, text)
