"""Sending several buffers on a blocking socket, in order, in as few system calls as the socket allows; and
telling, without reading, whether a client has closed its end."""

from __future__ import annotations

import select
import socket

CLOSED = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


def sendall_vectored(sock: socket.socket, parts: list[memoryview]) -> None:
    """Send every byte of ``parts`` (flat byte views) in order; raise what the socket raises."""
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client at the other end of ``sock`` has closed it (or reset it), without waiting and
    without reading: bytes it sent since (a pipelined request) stay where they are.

    A client that only shut down its sending side looks closed too, as it does to nginx (its 499)."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        return any(events & CLOSED for _, events in poller.poll(0))
    except (OSError, ValueError):  # closed here already
        return True
