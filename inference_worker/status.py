"""The one STATUS client: ask a dispatcher's frontend for its STATUS_REPLY (zmq, no torch)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import zmq

from inference_worker import protocol
from inference_worker.protocol import Link, ProtocolError, Status, StatusReply

STATUS_TIMEOUT = 2.0  # seconds


def ask_status(socket: zmq.Socket[Any], timeout: float, call_id: str | None = None) -> StatusReply | None:
    """Send STATUS on a connected DEALER ``socket`` and return the matching reply; None if none in ``timeout``
    s.

    Other messages arriving meanwhile (late answers to earlier calls on the socket) are skipped.
    """
    call_id = call_id or uuid.uuid4().hex
    socket.send_multipart(Status(call_id).frames(), flags=zmq.NOBLOCK)
    until = time.monotonic() + timeout
    while (remaining := until - time.monotonic()) > 0:
        if not socket.poll(max(1, int(remaining * 1000))):
            break
        try:
            message = protocol.receive(socket.recv_multipart(copy=False), Link.DISPATCHER_TO_GATEWAY)
        except ProtocolError:
            continue
        if isinstance(message, StatusReply) and message.id == call_id:
            return message
    return None


def query_status(
    endpoint: str, timeout: float = STATUS_TIMEOUT, context: zmq.Context[Any] | None = None
) -> StatusReply:
    """Ask the dispatcher at ``endpoint`` on a socket of its own; raise TimeoutError if it does not answer."""
    socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        reply = ask_status(socket, timeout)
    finally:
        socket.close(linger=0)
    if reply is None:
        raise TimeoutError(f"no STATUS_REPLY from the dispatcher at {endpoint} within {timeout:.1f} s")
    return reply
