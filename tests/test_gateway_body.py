"""gateway.body: a large body read from gunicorn's own reader objects over a real socket pair."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader

from gateway.body import LARGE_BODY, BodyDisconnected, read_body

pytestmark = pytest.mark.timeout(60)


def _body(sock: socket.socket, length: int, read_ahead: bytes = b"") -> tuple[Body, SocketUnreader]:
    """gunicorn's wsgi.input for a body of ``length``, with ``read_ahead`` already read along with the
    head."""
    unreader = SocketUnreader(sock)
    if read_ahead:
        unreader.unread(read_ahead)
    return Body(LengthReader(unreader, length)), unreader


def _send_later(sock: socket.socket, data: bytes, close: bool = False) -> threading.Thread:
    def send() -> None:
        sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_reads_the_whole_body_and_leaves_the_pipelined_request() -> None:
    server, client = socket.socketpair()
    with server, client:
        payload = os.urandom(3 << 20)
        pipelined = b"GET /v2/health/live HTTP/1.1\r\n\r\n"
        head, rest = payload[:5000], payload[5000:]
        stream, unreader = _body(server, len(payload), read_ahead=head)
        sender = _send_later(client, rest + pipelined)
        data = read_body(stream, len(payload))
        sender.join(timeout=10)
        assert isinstance(data, bytearray) and data == payload
        assert stream.read() == b""  # gunicorn sees the body as read: it will not wait for more of it
        assert unreader.read(len(pipelined)) == pipelined  # the next request is left for gunicorn to parse


def test_read_ahead_holding_the_body_and_more() -> None:
    server, client = socket.socketpair()
    with server, client:
        payload = os.urandom(LARGE_BODY + 7)
        stream, unreader = _body(server, len(payload), read_ahead=payload + b"NEXT")
        assert read_body(stream, len(payload)) == bytearray(payload)
        assert unreader.read(4) == b"NEXT"


def test_a_body_cut_short_raises() -> None:
    server, client = socket.socketpair()
    with server, client:
        stream, _ = _body(server, 1 << 20)
        _send_later(client, b"x" * 1000, close=True).join(timeout=10)
        with pytest.raises(BodyDisconnected, match="sent 1000 of 1048576"):
            read_body(stream, 1 << 20)


def test_small_bodies_and_other_streams_are_left_to_the_caller() -> None:
    server, client = socket.socketpair()
    with server, client:
        stream, _ = _body(server, 100)
        assert read_body(stream, 100) is None
        stream, _ = _body(server, LARGE_BODY * 2)
        assert read_body(stream, LARGE_BODY) is None  # not the length gunicorn expects
        assert read_body(object(), LARGE_BODY) is None
