"""The worker's direct lane: requests from gateways on this host that skip the dispatcher's hop.

Through the dispatcher, a request and its answer cross four ZeroMQ hops, each a hand-off between threads and
processes; at one connection those hops cost more than a small model (docs/performance.md, "The direct
lane"). So a worker on the dispatcher's host also listens on a unix socket beside the dispatcher's and says
where in its READY; the dispatcher's STATUS lists it, and a gateway thread with no other request in flight in
its process connects and sends the REQUEST straight here (gateway/direct.py), its version resolved as the
dispatcher would. A plain stream socket, not ZeroMQ: the worker's loop and the gateway's thread read and
write it themselves, with no I/O thread to wake on either side (messages framed by
:mod:`inference_worker.protocol.stream`).

The worker takes a direct request only when its next batch would run it (``Worker._declines``), and
answers it here as the dispatcher would (REPLY or ERROR, with the request's ``id``); otherwise it answers
DECLINED, and the gateway sends the request to the dispatcher, which queues and balances it as any other.
The dispatcher never learns of a direct request: a worker killed while computing one is noticed by the
gateway (its connection ends) and the request goes to the dispatcher then. A gateway whose client went away
sends CANCEL with the request's ``id`` down the same connection; the worker drops the request if it has not
started it, and answers ERROR CANCELLED.

Direct requests are keyed by negative sequence numbers in the worker (the dispatcher's are positive), so
each answer finds its way back. One connection per gateway thread; all of them are watched through one epoll
descriptor, which is what the worker's loop polls.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from inference_worker import protocol
from inference_worker.direct_lane import path_of, remove_stale
from inference_worker.protocol import ErrorCode, Link, ProtocolError, stream

log = logging.getLogger("torchgate.worker")

DEFAULT_TIMEOUT = 30.0  # seconds a request without a deadline may take (as the dispatcher's)
RECV_SIZE = 256 << 10  # smallest read
MAX_RECV = 16 << 20  # largest read (the rest of a large message, at most)
MAX_UNSENT = 64 << 20  # answers a gateway does not read, at most, before its connection is closed
MAX_CONNECTIONS = 4096
IN, OUT = select.EPOLLIN | select.EPOLLRDHUP, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLOUT


@dataclass(eq=False)
class Connection:
    """One gateway thread's connection: what arrived of its next message, and what could not be sent yet."""

    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    unsent: bytearray = field(default_factory=bytearray)
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a direct request, and what its answer must say."""

    connection: Connection
    id: str
    model: str
    version: str


class DirectLane:
    """The unix socket gateways send direct requests to, and the requests taken from it until answered."""

    def __init__(self, endpoint: str, worker: str) -> None:
        self.endpoint = endpoint
        self.path = path_of(endpoint)
        self.worker = worker  # the slot name answers carry
        self.callers: dict[int, Caller] = {}
        self._last_seq = 0
        self.taken = 0  # direct requests taken, and declined (the worker's log says so at exit)
        self.declined = 0
        remove_stale(endpoint, worker)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # reachable by this user only, as the dispatcher's sockets
        try:
            if os.path.exists(self.path):
                os.unlink(self.path)
            listener.bind(self.path)
            listener.listen(256)
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old)
        listener.setblocking(False)
        self.listener = listener
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), select.EPOLLIN)
        self.connections: dict[int, Connection] = {}

    def fileno(self) -> int:
        """The descriptor that is readable when anything on the lane wants attention (for the loop's poll)."""
        return self.epoll.fileno()

    def close(self) -> None:
        for connection in list(self.connections.values()):
            self._drop(connection)
        self.epoll.close()
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    # -- requests -------------------------------------------------------------------------------------

    def receive(self) -> list[tuple[Connection, protocol.Request | protocol.Cancel]]:
        """Accept, read and write what is ready without blocking; return the requests (and cancellations of
        requests sent earlier) that arrived whole.

        A malformed request is answered INVALID_ARGUMENT when its id can be read; a connection that sends
        something that is not a message at all is closed."""
        requests: list[tuple[Connection, protocol.Request | protocol.Cancel]] = []
        for fd, events in self.epoll.poll(0):
            if fd == self.listener.fileno():
                self._accept()
                continue
            connection = self.connections.get(fd)
            if connection is None:
                continue
            if events & select.EPOLLOUT:
                self._flush(connection)
            if events & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                self._read(connection, requests)
        return requests

    def _accept(self) -> None:
        while len(self.connections) < MAX_CONNECTIONS:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("worker[%s]: direct lane: accept failed: %s", self.worker, exc)
                return
            sock.setblocking(False)
            self.connections[sock.fileno()] = Connection(sock)
            self.epoll.register(sock.fileno(), IN)

    def _read(
        self, connection: Connection, requests: list[tuple[Connection, protocol.Request | protocol.Cancel]]
    ) -> None:
        while not connection.closed:
            try:
                rest = stream.needed(connection.received) - len(connection.received)
                data = connection.sock.recv(min(max(RECV_SIZE, rest), MAX_RECV))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the gateway's thread (or process) is gone
                self._drop(connection)
                return
            connection.received += data
            self._messages(connection, requests)

    def _messages(
        self, connection: Connection, requests: list[tuple[Connection, protocol.Request | protocol.Cancel]]
    ) -> None:
        while connection.received:
            try:
                frames = stream.take(connection.received)
            except ProtocolError as exc:
                log.warning("worker[%s]: direct lane: closed a connection that sent %s", self.worker, exc)
                self._drop(connection)
                return
            if frames is None:
                return
            try:
                requests.append((connection, protocol.receive(frames, Link.GATEWAY_TO_WORKER)))
            except ProtocolError as exc:
                log.warning("worker[%s]: dropped a malformed direct request: %s", self.worker, exc)
                request_id = protocol.header_id(frames)
                if request_id is not None:
                    text = f"malformed request: {exc}"
                    error = protocol.Error(request_id, ErrorCode.INVALID_ARGUMENT, text)
                    self._send(connection, error.frames())

    def take(self, connection: Connection, request: protocol.Request) -> protocol.ForwardedRequest:
        """Key ``request`` here and return it as the dispatcher would have forwarded it."""
        assert request.version, "the gateway resolves the version"
        self._last_seq -= 1
        seq = self._last_seq
        self.callers[seq] = Caller(connection, request.id, request.model, request.version)
        self.taken += 1
        deadline = request.deadline if request.deadline is not None else time.time() + DEFAULT_TIMEOUT
        return protocol.ForwardedRequest.of(request, seq, request.version, deadline or math.inf)

    def seq_of(self, connection: Connection, request_id: str) -> int | None:
        """Return the key here of the request ``request_id`` that ``connection`` sent and that is not
        answered yet, or None."""
        return next(
            (seq for seq, c in self.callers.items() if c.connection is connection and c.id == request_id),
            None,
        )

    def decline(self, connection: Connection, request: protocol.Request, why: str) -> None:
        """Tell the gateway to send ``request`` to the dispatcher instead."""
        self.declined += 1
        self._send(connection, protocol.Error(request.id, ErrorCode.DECLINED, why, self.worker).frames())

    # -- answers --------------------------------------------------------------------------------------

    @staticmethod
    def owns(seq: int) -> bool:
        return seq < 0

    def answer(self, message: protocol.WorkerReply | protocol.WorkerError) -> None:
        """Send a direct request's answer to its gateway, as the dispatcher would have passed it on."""
        caller = self.callers.pop(message.seq, None)
        if caller is None or caller.connection.closed:
            return  # its gateway thread went away: nobody waits for it
        if isinstance(message, protocol.WorkerError):
            frames = protocol.Error(caller.id, message.code, message.message, self.worker).frames()
        else:
            frames = protocol.Reply(
                caller.id,
                caller.model,
                caller.version,
                self.worker,
                message.outputs,
                message.stats,
                message.shm_outputs,
            ).frames()
        self._send(caller.connection, frames)

    def _send(self, connection: Connection, frames: list[Any]) -> None:
        """Send at once what the socket takes; keep the rest (copied) until it is writable."""
        if connection.closed:
            return
        buffers = stream.pack(frames)
        if not connection.unsent:
            try:
                sent = connection.sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(connection)
                return
            total = sum(stream.nbytes(b) for b in buffers)
            if sent == total:
                return
            rest = b"".join(bytes(b) for b in buffers)[sent:]
            connection.unsent += rest
            self.epoll.modify(connection.sock.fileno(), OUT)
        else:
            connection.unsent += b"".join(bytes(b) for b in buffers)
        if len(connection.unsent) > MAX_UNSENT:
            log.warning("worker[%s]: direct lane: a gateway does not read its answers; closed", self.worker)
            self._drop(connection)

    def _flush(self, connection: Connection) -> None:
        while connection.unsent and not connection.closed:
            try:
                sent = connection.sock.send(connection.unsent)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(connection)
                return
            del connection.unsent[:sent]
        if not connection.closed:
            self.epoll.modify(connection.sock.fileno(), IN)

    def _drop(self, connection: Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        fd = connection.sock.fileno()
        self.connections.pop(fd, None)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        connection.sock.close()
