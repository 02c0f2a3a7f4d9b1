"""Sending several buffers on a blocking socket, in order, in as few system calls as the socket allows."""

from __future__ import annotations

import socket


def sendall_vectored(sock: socket.socket, parts: list[memoryview]) -> None:
    """Send every byte of ``parts`` (flat byte views) in order; raise what the socket raises."""
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]
