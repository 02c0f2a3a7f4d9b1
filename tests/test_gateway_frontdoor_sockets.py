"""The front door's socket helpers (gateway.frontdoor): one write per answer, mode switches, linger."""

from __future__ import annotations

import collections
import fcntl
import functools
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from gateway.frontdoor import ONE_WRITE_COPY, ClientSocket, FrontDoorWorker, OneWriteResponse, _readable


class CountingSocket(socket.socket):
    """A real socket that counts the system calls that send."""

    sends = 0

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.sends += 1
        super().sendall(data, flags)

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        self.sends += 1
        return super().sendmsg(buffers, *args)


@pytest.fixture
def pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    a, b = socket.socketpair()
    server = CountingSocket(a.family, a.type, a.proto, fileno=a.detach())
    server.settimeout(10)
    b.settimeout(10)
    yield server, b
    server.close()
    b.close()


def answer(
    server: CountingSocket, client: socket.socket, request: bytes, body: bytes, head_only: bool = False
) -> bytes:
    """Have :class:`OneWriteResponse` answer ``request`` with ``body``; return every byte the client got."""
    cfg = Config()
    client.sendall(request)
    req = next(iter(RequestParser(cfg, server, ("127.0.0.1", 1))))
    resp = OneWriteResponse(req, server, cfg)
    resp.start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))]
    )
    got = bytearray()

    def read() -> None:
        while chunk := client.recv(1 << 20):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    resp.write(body)
    resp.close()
    server.shutdown(socket.SHUT_WR)
    reader.join(10)
    return bytes(got)


@pytest.mark.parametrize("size", [0, 5, ONE_WRITE_COPY, ONE_WRITE_COPY + 1, 3 << 20])
def test_head_and_body_leave_in_one_write(pair: tuple[CountingSocket, socket.socket], size: int) -> None:
    server, client = pair
    body = os.urandom(size)
    got = answer(server, client, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", body)
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {size}".encode() in head.split(b"\r\n")
    assert b"Connection: keep-alive" in head.split(b"\r\n")
    assert rest == body
    assert server.sends == 1 if size <= ONE_WRITE_COPY else server.sends >= 1


def test_a_head_request_gets_the_head_only(pair: tuple[CountingSocket, socket.socket]) -> None:
    server, client = pair
    got = answer(server, client, b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n", b"hello")
    head, _, rest = got.partition(b"\r\n\r\n")
    assert b"Content-Length: 5" in head.split(b"\r\n")
    assert rest == b""


def _nonblocking(sock: socket.socket) -> bool:
    return bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)


def test_client_socket_mode_follows_every_switch() -> None:
    a, b = socket.socketpair()
    sock = ClientSocket(a.family, a.type, a.proto, fileno=a.detach())
    try:
        for flag in (True, True, False, False, True, False, True):
            sock.setblocking(flag)
            assert _nonblocking(sock) is not flag
            assert sock.gettimeout() == (None if flag else 0.0)
        sock.settimeout(1.5)  # a timeout makes the descriptor non-blocking; blocking must switch it back
        sock.setblocking(True)
        assert not _nonblocking(sock) and sock.gettimeout() is None
    finally:
        sock.close()
        b.close()


def test_the_linger_wait_gives_up_when_woken() -> None:
    a, b = socket.socketpair()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK)
    try:
        assert not _readable(a, 0.0, wake_r)  # nothing to read
        b.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert _readable(a, 5.0, wake_r)
        assert _readable(a, 5.0)
        os.write(wake_w, b"w")  # a request waits for a thread: the connection goes back to the event loop
        assert not _readable(a, 5.0, wake_r)
        a.recv(100)
        assert not _readable(a, 5.0, wake_r)
    finally:
        for fd in (wake_r, wake_w):
            os.close(fd)
        a.close()
        b.close()


class IdleConnection:
    """What the front door's pressure relief touches of a kept-alive connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reserved = 0
        self.front = None

    def close(self) -> None:
        self.sock.close()


def test_an_event_of_a_connection_closed_earlier_in_the_same_round_is_skipped() -> None:
    """Under pressure a new connection makes an idle kept-alive one give way; when that one's next request
    is in the same round of events, its callback finds it closed and must leave it (a process died of it)."""
    worker = FrontDoorWorker.__new__(FrontDoorWorker)  # the event loop's state only; no gunicorn arbiter
    worker.poller = selectors.DefaultSelector()
    worker.keepalived_conns = collections.deque()
    worker.reading, worker.lingering = collections.OrderedDict(), collections.OrderedDict()
    worker.nr_conns, worker.worker_connections = 2, 2
    worker._budget_lock, worker.body_held = threading.Lock(), 0
    server, client = socket.socketpair()
    idle = IdleConnection(server)
    worker.keepalived_conns.append(idle)
    worker.poller.register(
        server, selectors.EVENT_READ, functools.partial(worker.on_client_socket_readable, idle)
    )
    try:
        client.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        events = worker.poller.select(10)  # the round: the idle connection's next request is in it
        assert len(events) == 1
        worker._relieve_pressure()  # an earlier event of the round (an accept) made it give way
        assert server.fileno() < 0 and worker.nr_conns == 1
        for key, _ in events:
            key.data(key.fileobj)  # as gunicorn's loop calls it: nothing happens, nothing raises
        assert worker.nr_conns == 1 and not worker.keepalived_conns
    finally:
        worker.poller.close()
        client.close()
