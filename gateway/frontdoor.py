"""The gateway's front door: every request is read whole on gunicorn's event loop before a thread sees it.

gunicorn's gthread hands a connection to a request thread as soon as it is readable, and the thread then
blocks reading the rest: a client sending one byte a second holds a thread for as long as it likes, and a few
dozen such clients (or idle connections) hold them all, liveness included. :class:`FrontDoorWorker` reads
instead, as nginx does, on the event loop without blocking, and hands a connection to a thread only once its
whole request (head and body) is in memory; the thread parses it from there and never reads the socket. On the
event loop:

- the head must arrive within ``TORCHGATE_HEADER_TIMEOUT`` seconds of the connection (or of its previous
  request), as nginx's ``client_header_timeout``; a client that sent part of a head then gets 408;
- the body must keep a minimum pace, as Apache's ``RequestReadTimeout body=...,MinRate=...``: it may take
  ``TORCHGATE_BODY_TIMEOUT`` seconds plus one second per ``TORCHGATE_BODY_MIN_RATE`` bytes received, else 408;
- framing is checked as bytes arrive (:mod:`gateway.framing`): a ``Content-Length`` or chunked body past the
body
  limit gets 413 at once, a malformed chunk 400, a head past ``TORCHGATE_MAX_HEAD_BYTES`` 431; the connection
  is then closed (after a short lingering read, so that the client sees the answer);
- an answer must keep leaving: a request thread that could send nothing of it for ``TORCHGATE_SEND_TIMEOUT``
  seconds (the client reads nothing, say, while it pipelines requests for large answers) gives up and closes
  the connection, as nginx's ``send_timeout``; without it a few such clients held every thread for good;
- idle kept-alive connections are bounded (gunicorn's keep-alive timeout and count) and, when the process
  nears ``worker_connections``, the oldest idle ones (then connections that sent nothing yet) are closed
  first.

gunicorn's own error pages (a bad request line, a header too long) are JSON ``{"error": ...}`` like every
other.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from gateway import afterwork
from gateway.config import GatewayConfig, body_budget
from gateway.errors import error_body
from gateway.framing import RequestFramer, State
from gateway.sockets import sendall_vectored
from gateway.trace import RECEIVED_KEY

log = logging.getLogger("torchgate.gateway")

HEADER_TIMEOUT_ENV = "TORCHGATE_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "TORCHGATE_BODY_TIMEOUT"
BODY_MIN_RATE_ENV = "TORCHGATE_BODY_MIN_RATE"
MAX_HEAD_ENV = "TORCHGATE_MAX_HEAD_BYTES"
SEND_TIMEOUT_ENV = "TORCHGATE_SEND_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_BODY_MIN_RATE = 64 << 10  # bytes per second
DEFAULT_MAX_HEAD = 64 << 10
DEFAULT_SEND_TIMEOUT = 10.0  # seconds an answer may make no progress (the client reads none of it)
STOP_LINGER = 1.0  # seconds a connection taken as the process stops has to begin its request
RECV_SIZE = 256 << 10  # largest read of a head or of a chunked body
RECV_BODY = 4 << 20  # largest read of a body of known length
LINGER_SECONDS = 2.0  # after an error answer, how long the client's unread bytes are discarded before closing
LINGER_BYTES = 8 << 20
REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """Return a whole HTTP/1.1 error response with a JSON body; the connection closes after it."""
    body = error_body(message)
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += ["Connection: close", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with a JSON body: ``{"error": "<reason>: <message>"}``."""
    util.write_nonblock(sock, error_response(status_int, f"{reason}: {mesg}" if mesg else reason))


# gunicorn writes its own error pages (a request it cannot parse) with util.write_error: HTML. Every error of
# the gateway is JSON, so this process's gunicorn writes JSON instead.
util.write_error = _write_json_error


ONE_WRITE_COPY = 64 << 10  # bodies up to this size are joined to the head; larger ones are sent vectored


class OneWriteResponse(wsgi.Response):  # type: ignore[misc]
    """gunicorn's response, but a whole body of known length leaves with its head in one system call."""

    headers_sent: bool

    def write(self, arg: bytes) -> None:
        if (
            self.headers_sent
            or self.chunked
            or self._omits_body
            or not isinstance(arg, bytes)
            or self.response_length != len(arg)
        ):
            super().write(arg)
            return
        tosend = self.default_headers()
        tosend.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        tosend.append("\r\n")
        head = "".join(tosend).encode("latin-1")
        self.headers_sent = True
        self.sent += len(arg)
        if len(arg) <= ONE_WRITE_COPY:
            self.sock.sendall(head + arg)
        else:
            sendall_vectored(self.sock, [memoryview(head), memoryview(arg)])


class ClientSocket(socket.socket):
    """A client connection whose ``setblocking`` makes no system call when the mode is already set.

    gthread and the front door switch a connection between the event loop (non-blocking) and a request
    thread (blocking) several times per request; each switch is an ``ioctl`` during which the GIL is let go,
    and with dozens of request threads every GIL hand-over costs futex calls and a context switch.
    """

    __slots__ = ()

    def setblocking(self, flag: bool) -> None:
        timeout = self.gettimeout()  # None: blocking, 0.0: non-blocking (no system call)
        if (timeout is None) if flag else (timeout == 0.0):
            return
        super().setblocking(flag)


class BufferUnreader(Unreader):  # type: ignore[misc]
    """A parser source holding exactly the request read by the event loop: it never reads the socket.

    A body of known length stays in the buffer it was received into: :meth:`take_body` hands it to the
    application whole (gateway.body), and gunicorn's own reads (:meth:`chunk`) get slices of it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body: bytearray | None = None
        self.body_pos = 0

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.body is None or self.body_pos >= len(self.body):
            return b""  # the end of the data: a request thread never blocks on a client
        end = len(self.body) if size_hint is None else self.body_pos + max(size_hint, 8192)
        data = bytes(self.body[self.body_pos : end])
        self.body_pos += len(data)
        return data

    def load(self, head: bytes, body: bytearray | None = None) -> None:
        """Hold one whole request: ``head`` (or all of it), then ``body`` (a body of known length)."""
        self.unread(head)
        self.body, self.body_pos = body, 0

    def take_body(self, length: int) -> bytearray | None:
        """Return the whole body of ``length`` bytes if nothing of it was read yet, else None."""
        body = self.body
        if body is None or self.body_pos or len(body) != length or self.buf.getbuffer().nbytes:
            return None
        self.body = None
        return body


@dataclass
class Reading:
    """One connection's request being read on the event loop."""

    framer: RequestFramer
    opened: float  # monotonic time the wait for this request began
    buf: bytearray = field(default_factory=bytearray)
    body_started: float | None = None
    arrived: float | None = None  # monotonic time its first bytes were read (a trace's HTTP_RECV_START)
    continued: bool = False  # we sent "100 Continue"
    reserved: int = 0  # bytes of the body budget held for this request


@dataclass(frozen=True, slots=True)
class FrontDoorLimits:
    """How long and how much a client may take to send its request."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    body_min_rate: float = DEFAULT_BODY_MIN_RATE
    max_head: int = DEFAULT_MAX_HEAD
    max_body: int = 64 << 20
    send_timeout: float = DEFAULT_SEND_TIMEOUT

    @classmethod
    def from_env(cls, max_body: int) -> FrontDoorLimits:
        env = os.environ
        limits = cls(
            header_timeout=float(env.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT),
            body_timeout=float(env.get(BODY_TIMEOUT_ENV) or DEFAULT_BODY_TIMEOUT),
            body_min_rate=float(env.get(BODY_MIN_RATE_ENV) or DEFAULT_BODY_MIN_RATE),
            max_head=int(env.get(MAX_HEAD_ENV) or DEFAULT_MAX_HEAD),
            max_body=max_body,
            send_timeout=float(env.get(SEND_TIMEOUT_ENV) or DEFAULT_SEND_TIMEOUT),
        )
        values = (limits.header_timeout, limits.body_timeout, limits.body_min_rate, limits.send_timeout)
        if not all(value > 0 for value in values):
            names = (HEADER_TIMEOUT_ENV, BODY_TIMEOUT_ENV, BODY_MIN_RATE_ENV, SEND_TIMEOUT_ENV)
            raise ValueError(f"{', '.join(names[:-1])} and {names[-1]} must be positive")
        return limits

    def deadline(self, reading: Reading) -> float:
        """Return when ``reading`` times out: its head's deadline, or its body's at the minimum pace."""
        if reading.body_started is None:
            return reading.opened + self.header_timeout
        head = reading.framer.head
        received = len(reading.buf) - (head.length if head else 0)
        return reading.body_started + self.body_timeout + received / self.body_min_rate


class FrontDoorWorker(ThreadWorker):  # type: ignore[misc]
    """gthread that reads each request whole on its event loop; request threads get complete requests only."""

    alive: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.is_ssl:  # the event loop reads raw bytes: TLS belongs to a proxy in front
            raise RuntimeError(
                "the gateway does not terminate TLS itself: put a TLS proxy (HAProxy, nginx) in front"
            )
        self.limits = FrontDoorLimits.from_env(GatewayConfig.from_env().max_body_bytes)
        self.reading: OrderedDict[TConn, None] = OrderedDict()  # oldest first
        self.lingering: OrderedDict[TConn, float] = OrderedDict()  # connection -> when to close it
        self.timed_out = 0
        self.rejected = 0
        self.body_budget = body_budget(self.limits.max_body)
        self.body_held = 0  # bytes of the budget held by requests read, queued or being answered
        self._budget_lock = threading.Lock()  # request threads reserve too (next_request_ready)
        # gunicorn's settings are looked up by name on every access: the per-request ones, read once
        self._pre_request, self._post_request = self.cfg.pre_request, self.cfg.post_request
        self._keepalive = self.cfg.keepalive
        seconds, fraction = divmod(self.limits.send_timeout, 1.0)
        self._send_timeout = struct.pack("ll", int(seconds), int(fraction * 1e6))  # a struct timeval
        self.listening = True  # until the process stops (_stop_listening)

    # -- accepting and reading on the event loop ---------------------------------------------------------

    def accept(self, listener: socket.socket) -> bool:
        """Take one connection from ``listener``'s backlog and start reading it; return whether there was
        one."""
        try:
            accepted, client_addr = listener.accept()
            client_sock = ClientSocket(
                listener.family, listener.type, listener.proto, fileno=accepted.detach()
            )
        except OSError as e:
            if e.errno == errno.ECONNABORTED:  # that one gave up meanwhile: the next may be there
                return True
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            return False
        self.nr_conns += 1
        # A request thread writes its answer on the blocking socket: a send that makes no progress for this
        # long fails (EAGAIN) instead of holding the thread as long as the client reads nothing.
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._send_timeout)
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self._relieve_pressure()
        self._start_reading(conn, b"")
        return True

    @property
    def stopping(self) -> bool:
        """Whether this process is on its way out: told to stop, or its master is gone (kill -9)."""
        return not self.alive or self.ppid != os.getppid()

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and self.listening and self.stopping:
            self.listening = False
            self._stop_listening()

    def _stop_listening(self) -> None:
        """Stopping: take the connections already in the listen backlog, then close the listening sockets.

        The kernel completes connections to a listening socket until its last descriptor is closed; gunicorn's
        master closes its own at once, but each process kept its own until it exited, after finishing its
        requests in flight. A client that connected meanwhile sent its request into a backlog nobody read and
        was reset when the process exited: a failure it cannot tell from a request lost after it ran. Closed
        here, the next connections are refused, which a client or load balancer can safely try elsewhere;
        those already waiting are served (docs/reliability.md).
        """
        for listener in self.sockets:
            try:  # as many as the process may hold (a flood must not keep it here)
                while self.nr_conns < self.worker_connections and self.accept(listener):
                    pass
            except OSError as exc:  # out of descriptors, say: what was taken is served, the rest refused
                log.warning("gateway: stopping: could not take the waiting connections: %s", exc)
            listener.close()

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection sends its next request: read it here, not on a thread."""
        if _closed(conn):
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._start_reading(conn, b"")
        self._on_readable(conn, client)

    def _start_reading(self, conn: TConn, pending: bytes) -> None:
        reading = Reading(RequestFramer(self.limits.max_head, self.limits.max_body), time.monotonic())
        conn.front = reading
        if pending:
            reading.buf += pending
            if self._advance(conn, reading):
                return
        conn.sock.setblocking(False)
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _resume_reading(self, conn: TConn) -> None:
        """Go on reading a request a thread started to read (its rest had not arrived)."""
        conn.sock.setblocking(False)
        if self._advance(conn, conn.front):
            return
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: TConn, client: Any) -> None:
        if _closed(conn):
            return
        reading: Reading = conn.front
        try:
            data = conn.sock.recv(self._recv_size(reading))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed (its side): a request it began is answered 400, else nothing
            self._stop_reading(conn)
            if reading.framer.started:
                head = reading.framer.head
                what = "request head" if head is None else f"request body ({reading.framer.body_bytes} bytes)"
                self._reject(conn, 400, f"the client closed the connection before the whole {what} arrived")
            else:
                self._close(conn)
            return
        if reading.arrived is None:
            reading.arrived = time.monotonic()
        reading.buf += data
        self._advance(conn, reading)

    def _recv_size(self, reading: Reading) -> int:
        framer = reading.framer
        if framer.state is State.BODY and framer.head is not None:
            return max(RECV_SIZE, min(RECV_BODY, framer.head.length + framer.body_bytes - len(reading.buf)))
        return RECV_SIZE

    def _advance(self, conn: TConn, reading: Reading) -> bool:
        """Frame what arrived; hand a complete request on, answer a refused one. Return whether it is done."""
        framer = reading.framer
        state = framer.feed(reading.buf)
        if state is State.COMPLETE:
            self._stop_reading(conn)
            self._dispatch(conn, reading)
            return True
        if state is State.ERROR:
            assert framer.error is not None
            self.rejected += 1
            self._stop_reading(conn)
            self._reject(conn, framer.error.status, framer.error.message)
            return True
        if framer.body_bytes > reading.reserved and not self._reserve(reading, framer.body_bytes):
            self.rejected += 1
            self._stop_reading(conn)
            self._reject(
                conn,
                503,
                f"the gateway holds {self.body_held} bytes of request bodies (its budget is "
                f"{self.body_budget}); retry later",
                {"Retry-After": "1"},
            )
            return True
        if framer.head is not None and reading.body_started is None:
            reading.body_started = time.monotonic()
            if framer.head.expect_continue and len(reading.buf) == framer.head.length:
                reading.continued = True
                _send_some(conn.sock, CONTINUE)
        return False

    def _reserve(self, reading: Reading, size: int) -> bool:
        """Hold ``size`` bytes of the body budget for ``reading`` (what it announced so far), if they fit."""
        with self._budget_lock:
            extra = size - reading.reserved
            if self.body_held + extra > self.body_budget:
                return False
            self.body_held += extra
            reading.reserved = size
            return True

    def release_body(self, conn: TConn) -> None:
        """Give back the body budget a connection's request held (once answered, refused or closed)."""
        held = getattr(conn, "reserved", 0)
        reading = getattr(conn, "front", None)
        if reading is not None:
            held += reading.reserved
            reading.reserved = 0
        conn.reserved = 0
        with self._budget_lock:
            self.body_held -= held

    def _stop_reading(self, conn: TConn) -> None:
        if conn in self.reading:
            del self.reading[conn]
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _dispatch(self, conn: TConn, reading: Reading) -> None:
        """Give a complete request to the parser and a thread; bytes past it wait for the next request."""
        conn.sock.setblocking(True)
        if not conn.initialized:
            conn.init()
            conn.parser.unreader = BufferUnreader()
        _load(conn, reading)
        conn.continued = reading.continued
        conn.data_ready = True
        self.enqueue_req(conn)

    # -- on a request thread ------------------------------------------------------------------------------

    def handle_request(self, req: Any, conn: TConn) -> Any:
        if getattr(conn, "continued", False):  # we answered "100 Continue" already, on the event loop
            req._expected_100_continue = False
        try:
            return self._handle_request(req, conn)
        except BlockingIOError:  # the answer made no progress for the send timeout: the client reads none
            log.info(
                "gateway: a client read nothing of its answer for %gs (%s): connection closed",
                self.limits.send_timeout,
                SEND_TIMEOUT_ENV,
            )
            return False

    def _handle_request(self, req: Any, conn: TConn) -> bool:
        """gthread's ``handle_request``, answering with :class:`OneWriteResponse`."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self._pre_request(self, req)
            logged = getattr(self.log, "access_log_enabled", True)  # gunicorn's own access log (off here)
            request_start = datetime.now() if logged else None
            resp, environ = wsgi.create(
                req, conn.sock, conn.client, conn.server, self.cfg, response_class=OneWriteResponse
            )
            environ["wsgi.multithread"] = True
            environ[afterwork.ENVIRON_KEY] = True  # its bookkeeping waits for a thread's idle moment
            environ[RECEIVED_KEY] = getattr(conn, "received", None)
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self._keepalive or len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                if request_start is not None:  # the gateway writes its own access line (gateway.afterwork)
                    self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:  # a 500 written now would corrupt the answer begun
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self._post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

    def next_request_ready(self, conn: TConn, wait: float, wake: int = -1) -> bool:
        """On a thread, after a request: read the next one if it arrives whole within ``wait`` seconds.

        Return whether it did (the parser then holds it). Otherwise what arrived stays in ``conn.front``,
        and the event loop reads the rest (see :meth:`finish_request`). If nothing came within
        ``afterwork.GRACE``, the answered requests' bookkeeping runs before the rest of the wait.
        """
        self.release_body(
            conn
        )  # the request just answered gives back its budget before the next one holds any
        pending = getattr(conn, "pending", b"")
        conn.pending = b""
        reading = Reading(RequestFramer(self.limits.max_head, self.limits.max_body), time.monotonic())
        reading.buf += pending
        conn.front = reading
        if not pending and not _readable(conn.sock, min(wait, afterwork.GRACE), wake):
            afterwork.run_pending()  # no next request yet: the answered ones' bookkeeping, while waiting
            if wait <= afterwork.GRACE or not _readable(conn.sock, wait - afterwork.GRACE, wake):
                return False
        reading.arrived = time.monotonic()
        try:  # the socket stays blocking: MSG_DONTWAIT reads without a mode switch
            while reading.framer.feed(reading.buf) not in (State.COMPLETE, State.ERROR):
                data = conn.sock.recv(self._recv_size(reading), socket.MSG_DONTWAIT)
                if not data:
                    return False
                reading.buf += data
        except OSError:  # BlockingIOError: the rest has not arrived; the event loop reads it
            return False
        if reading.framer.state is not State.COMPLETE or not self._reserve(
            reading, reading.framer.body_bytes
        ):
            return False  # an error, or a body past the budget: the event loop answers it
        _load(conn, reading)
        conn.continued = False
        return True

    # -- back on the event loop ---------------------------------------------------------------------------

    def finish_request(self, conn: TConn, fs: Any) -> None:
        afterwork.run_pending()  # left by a thread (as a rule none: AdmittingThreadWorker.handle runs it)
        self.release_body(conn)
        try:
            keepalive = fs.result() if not fs.cancelled() else False
        except Exception:
            keepalive = False
        reading: Reading | None = getattr(conn, "front", None)
        if keepalive and reading is not None and reading.buf:
            try:
                self._resume_reading(conn)
            except Exception:
                self._close(conn)
            return
        pending = getattr(conn, "pending", b"")
        if keepalive and pending:
            conn.pending = b""
            try:
                self._start_reading(conn, pending)
            except Exception:
                self._close(conn)
            return
        super().finish_request(conn, fs)

    def _reject(self, conn: TConn, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` and close: first discard what the client still sends, briefly, so it reads it."""
        self.release_body(conn)
        _send_some(conn.sock, error_response(status, message, headers))
        self._linger(conn)

    def _linger(self, conn: TConn) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.sock.setblocking(False)
        conn.discarded = 0
        self.lingering[conn] = time.monotonic() + LINGER_SECONDS
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering_readable, conn))

    def _on_lingering_readable(self, conn: TConn, client: Any) -> None:
        if _closed(conn):
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.discarded += len(data)
        if not data or conn.discarded > LINGER_BYTES:
            self._end_linger(conn)

    def _end_linger(self, conn: TConn) -> None:
        self.lingering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self._close(conn)

    def _close(self, conn: TConn) -> None:
        self.release_body(conn)
        self.nr_conns -= 1
        conn.close()

    # -- timeouts and pressure (the event loop calls murder_keepalived about once a second) ----------------

    def murder_keepalived(self, force: bool = False) -> None:
        afterwork.run_pending()
        super().murder_keepalived(force)
        now = time.monotonic()
        # A stopping process waits for no connection that has not begun a request, once it had STOP_LINGER to
        # (one taken from the backlog at the stop may not have sent its first bytes yet).
        stopping = self.stopping
        expired = [
            c
            for c in self.reading
            if force
            or self.limits.deadline(c.front) <= now
            or (stopping and not c.front.framer.started and now - c.front.opened >= STOP_LINGER)
        ]
        for conn in expired:
            self._stop_reading(conn)
            reading: Reading = conn.front
            self.timed_out += 1
            if reading.framer.started and not force:
                what = "request head" if reading.body_started is None else "request body"
                self._reject(conn, 408, f"the {what} did not arrive in time")
            else:  # nothing of a request came: an idle connection, closed quietly
                self._close(conn)
        for conn in [c for c, until in self.lingering.items() if force or until <= now]:
            self._end_linger(conn)
        self._relieve_pressure()

    def _relieve_pressure(self) -> None:
        """Near ``worker_connections``, close idle kept-alive connections first, then silent new ones."""
        limit = self.worker_connections - 1
        while self.nr_conns > limit and self.keepalived_conns:
            conn = self.keepalived_conns.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self._close(conn)
        if self.nr_conns > limit:
            for conn in [c for c in self.reading if not c.front.framer.started]:
                if self.nr_conns <= limit:
                    break
                self._stop_reading(conn)
                self._close(conn)


def _load(conn: TConn, reading: Reading) -> None:
    """Hand ``reading``'s complete request to the connection's parser; keep any bytes past it for later."""
    framer, buf = reading.framer, reading.buf
    end = framer.end
    conn.received = (reading.arrived or reading.opened, time.monotonic())  # for a trace (gateway.tracing)
    conn.pending = bytes(buf[end:])
    conn.reserved = reading.reserved  # held until the request is answered
    reading.reserved = 0
    conn.front = None
    head = framer.head
    if head is None or head.chunked or not head.content_length:
        conn.parser.unreader.load(bytes(buf[:end]))
        return
    start = framer.body_start
    request_head = bytes(buf[:start])
    if end == len(buf):
        del buf[:start]  # a bytearray drops its front without copying the rest
        body = buf
    else:
        body = buf[start:end]
    reading.buf = bytearray()
    conn.parser.unreader.load(request_head, body)


def _closed(conn: TConn) -> bool:
    """Whether ``conn`` was closed earlier in the event loop's current round of events (under pressure, say,
    an idle connection makes way while its own readiness is still in the round): its event is stale, and
    acting on it would unregister a closed socket (ValueError: the gateway process died of it once)."""
    return bool(conn.sock.fileno() < 0)


def _send_some(sock: socket.socket, data: bytes) -> None:
    """Send a short answer without blocking; whatever does not fit is dropped (the connection closes
    anyway)."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass


def _readable(sock: socket.socket, timeout: float, wake: int = -1) -> bool:
    """Return whether ``sock`` has data (or its peer closed) within ``timeout`` seconds.

    False at once if the file descriptor ``wake`` (when given) is readable.
    """
    poller = select.poll()
    fd = sock.fileno()
    poller.register(fd, select.POLLIN)
    if wake >= 0:
        poller.register(wake, select.POLLIN)
    try:
        events = poller.poll(timeout * 1000)
    except (OSError, ValueError):
        return False
    return bool(events) and all(ready == fd for ready, _ in events)
