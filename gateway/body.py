"""Read a large request body of known length from gunicorn's socket straight into one buffer.

gunicorn's ``wsgi.input`` reads a body through two buffers (its unreader's and its body's), each a
``BytesIO`` written chunk by chunk and copied out whole: a 16 MiB tensor was copied five or six times on its
way to the application (57 ms of the gateway's CPU per 16 MiB request, docs/performance.md). Here the bytes
gunicorn already holds (read with the request head) are taken first, then the rest is received with
``recv_into`` directly into a ``bytearray`` of the body's size: one copy, out of the kernel, and as few system
calls as the socket allows. gunicorn's reader is then told that the body has been read, so that it neither
waits for it nor takes the next pipelined request for part of it. The buffer may be the caller's (``into``):
a binary infer body is received straight into the shared-memory segment its tensors travel in
(``gateway.client.DispatcherClient.lease_body``), so they are never copied on the gateway.
"""

from __future__ import annotations

import io
import socket
from typing import Any

LARGE_BODY = 64 * 1024  # below this gunicorn's own read is one or two system calls and as cheap
RECV_STEP = 16 << 20  # most bytes asked of one recv_into (the kernel returns what it holds)


class BodyDisconnected(OSError):
    """The client closed the connection (or stalled past the socket's timeout) before sending the whole
    body."""


def _parts(stream: Any, length: int) -> tuple[Any, Any, socket.socket] | None:
    """Return gunicorn's (reader, unreader, socket) behind ``stream`` if it is a fresh body of ``length``."""
    reader = getattr(stream, "reader", None)
    unreader = getattr(reader, "unreader", None)
    sock = getattr(unreader, "sock", None)
    if not isinstance(sock, socket.socket) or getattr(reader, "length", None) != length:
        return None
    own = getattr(stream, "buf", None)
    held = getattr(unreader, "buf", None)
    if not isinstance(own, io.BytesIO) or not isinstance(held, io.BytesIO):
        return None
    with own.getbuffer() as view:
        if view.nbytes:  # the application read part of the body already: let gunicorn go on
            return None
    return reader, unreader, sock


def read_body(stream: Any, length: int, into: memoryview | None = None) -> bytearray | memoryview | None:
    """Read ``length`` bytes of gunicorn's ``wsgi.input`` into one buffer: ``into`` (``length`` bytes) when
    given, else a new ``bytearray``; return that buffer.

    Return None when ``stream`` is not gunicorn's (a test client, a chunked body) or the body is small: the
    caller then reads it the ordinary way. Raise :class:`BodyDisconnected` if the body ends early.
    """
    if length < LARGE_BODY or (into is not None and into.nbytes != length):
        return None
    reader: Any = getattr(stream, "reader", None)
    take = getattr(getattr(reader, "unreader", None), "take_body", None)
    if take is not None and reader.length == length:  # the front door read it whole (gateway.frontdoor)
        whole: bytearray | None = take(length)
        if whole is not None:
            reader.length = 0
            if into is None:
                return whole
            into[:] = whole  # the front door's buffer is its own: one copy, as the segment would take later
            return into
    parts = _parts(stream, length)
    if parts is None:
        return None
    reader, unreader, sock = parts
    buffer: bytearray | memoryview = bytearray(length) if into is None else into
    view = memoryview(buffer)
    held = unreader.buf.getvalue()
    unreader.buf = io.BytesIO()
    got = min(len(held), length)
    view[:got] = held[:got]
    if len(held) > got:  # the next request, pipelined behind this body: gunicorn parses it later
        unreader.buf.write(held[got:])
    try:
        while got < length:
            received = sock.recv_into(view[got:], min(length - got, RECV_STEP))
            if received == 0:
                raise BodyDisconnected(f"the client sent {got} of {length} body bytes and closed")
            got += received
    except TimeoutError:
        raise BodyDisconnected(f"the client sent {got} of {length} body bytes, then nothing") from None
    finally:
        reader.length -= got  # what gunicorn still expects: 0 unless the body ended early
    return buffer
