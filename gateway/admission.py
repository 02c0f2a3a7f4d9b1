"""Admission at the HTTP stage: gunicorn's gthread worker, with a bounded wait for a request thread.

gthread hands every readable connection to its thread pool; when all threads are busy (each waits on the
dispatcher), further requests wait inside the process without limit (up to ``worker_connections``) and their
clients hear nothing. :class:`AdmittingThreadWorker` lets at most ``TORCHGATE_GATEWAY_QUEUE`` requests wait
for a thread; the next ones are answered at once by a refusing thread: 503, ``Retry-After`` and an ``{"error":
...}`` body, and the connection is closed. The dispatcher's queue and the workers' credits bound the later
stages.

It also saves the thread hand-offs of a kept-alive connection: gthread returns every answered connection to
its main thread, which waits for the next request and hands it to a pool thread again (each hand-off a GIL
hand-over, futex calls and context switches: most of the gateway's kernel time). While no request waits for
a thread, the pool thread that answered instead waits up to ``LINGER`` seconds for the client's next request
and serves it itself; the moment a request has to wait for a thread, a wake-up pipe ends every such wait, so
a lingering thread never delays another client (docs/performance.md, "Gateway threading model").
"""

from __future__ import annotations

import logging
import os
import socket
import time
from concurrent import futures
from typing import Any

from gunicorn import util

from gateway import afterwork
from gateway.config import GatewayConfig
from gateway.errors import error_body
from gateway.frontdoor import FrontDoorWorker
from gateway.metrics import request_metrics

log = logging.getLogger("torchgate.gateway")

QUEUE_ENV = "TORCHGATE_GATEWAY_QUEUE"
READ_TIMEOUT = 1.0  # seconds a refused client gets to send its request head
MAX_DRAIN = 1 << 20  # bytes of a refused request's body read before answering (the rest: close_graceful)
REFUSE_BACKLOG = 256  # connections waiting for their 503; past that (a flood) they are closed unanswered
LINGER = 0.05  # seconds a pool thread waits for the next request on the connection it just answered
LOG_EVERY = 10.0  # seconds between two "refusing" warnings


def default_queue(threads: int) -> int:
    """Requests that may wait for a thread, per process, unless ``TORCHGATE_GATEWAY_QUEUE`` says otherwise."""
    return 4 * threads


def refusal(message: str, retry_after: int) -> bytes:
    """Return the whole HTTP response of a refused request."""
    body = error_body(message)
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Retry-After: {retry_after}\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class AdmittingThreadWorker(FrontDoorWorker):
    """gthread with a bounded wait for a request thread; the excess gets a 503 at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_limit = int(os.environ.get(QUEUE_ENV) or default_queue(self.cfg.threads))
        retry_after = GatewayConfig.from_env().retry_after
        self.refusal = refusal(
            f"the gateway is overloaded ({self.cfg.threads} request threads busy and "
            f"{self.queue_limit} requests waiting); retry later",
            retry_after,
        )
        self.admitted = 0  # requests handed to the thread pool and not finished (main thread only)
        self.refusing = 0  # connections handed to the refusing thread and not closed yet
        self.refused = 0
        self.refuser: futures.ThreadPoolExecutor | None = None
        self._logged = 0.0

    def init_process(self) -> None:
        # Readable while a request waits for a thread: lingering threads (see handle) give up at once.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.waking = False
        self.refuser = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="refuser")
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        if self.admitted - self.cfg.threads < self.queue_limit:
            self.admitted += 1
            if self.admitted > self.cfg.threads and not self.waking:
                self.waking = True
                os.write(self.wake_w, b"w")
            super().enqueue_req(conn)
            return
        self.refused += 1
        request_metrics().refused.inc()
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning(
                "gateway: overloaded (%d threads busy, %d waiting): refusing requests with 503 (%d so far)",
                self.cfg.threads,
                self.admitted - self.cfg.threads,
                self.refused,
            )
        if (
            self.refuser is None or self.refusing >= REFUSE_BACKLOG
        ):  # even the refusals are behind: just close
            self.release_body(conn)
            self.nr_conns -= 1
            util.close(conn.sock)
            return
        self.refusing += 1
        fs = self.refuser.submit(self.refuse, conn)
        fs.add_done_callback(lambda _: self.method_queue.defer(self._refused, conn))

    def handle(self, conn: Any) -> Any:
        """Answer a request; then, while no other request waits for a thread, the connection's next ones.

        A next request is served here only if it arrives whole within ``LINGER`` and no other request waits
        for a thread meanwhile (the wake-up pipe); else the event loop reads it.
        """
        keepalive = super().handle(conn)
        while (
            keepalive is True
            and self.alive
            and self.admitted <= self.cfg.threads
            and self.next_request_ready(conn, LINGER, self.wake_r)
        ):
            keepalive = super().handle(conn)
        afterwork.run_pending()  # before the connection goes back to the event loop
        return keepalive

    def finish_request(self, conn: Any, fs: Any) -> None:
        self.admitted -= 1
        if self.waking and self.admitted <= self.cfg.threads:
            self.waking = False
            try:
                os.read(self.wake_r, 64)
            except BlockingIOError:
                pass
        super().finish_request(conn, fs)

    def _refused(self, conn: Any) -> None:
        self.release_body(conn)
        self.refusing -= 1
        self.nr_conns -= 1

    def refuse(self, conn: Any) -> None:
        """Read the request head (and a small body), answer 503, close. Runs on the refusing thread."""
        sock: socket.socket = conn.sock
        try:
            sock.setblocking(True)
            sock.settimeout(READ_TIMEOUT)
            conn.init()
            request = next(conn.parser)
            drained = 0
            while drained < MAX_DRAIN and (chunk := request.body.read(65536)):
                drained += len(chunk)
            sock.sendall(self.refusal)
            if (
                drained >= MAX_DRAIN
            ):  # unread body left: closing now would reset the connection, answer and all
                util.close_graceful(sock, timeout=READ_TIMEOUT)
        except Exception:  # a client gone, slow or speaking garbage: nothing to answer
            pass
        finally:
            util.close(sock)

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.refuser is not None:
                self.refuser.shutdown(wait=False)
