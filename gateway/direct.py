"""The gateway's end of the direct lane: one thread's connections to the workers on this host.

A worker on the dispatcher's host takes requests straight from a gateway thread while it has room for them in
its next batch (inference_worker/worker/direct.py): at one connection that skips the dispatcher's two hops
each way, and the lane's plain unix socket wakes no I/O thread on either side.
:class:`gateway.client.DispatcherClient` uses the lane only when its process has no other request in flight
(under load the dispatcher's queue and balancing are worth their hop) and falls back to the dispatcher when
the worker declines, when the connection ends (the worker was killed) or when the dispatcher takes the worker
out of rotation for silence.

Each thread connects to a worker on its first request for it and keeps the connection; it is closed when the
worker leaves STATUS or when it fails.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from gateway.sockets import sendall_vectored
from inference_worker import protocol
from inference_worker.direct_lane import path_of
from inference_worker.protocol import ProtocolError, stream

RECV_SIZE = 256 << 10  # smallest read
MAX_RECV = 16 << 20  # largest read (the rest of a large message, at most)
SEND_TIMEOUT = 5.0  # seconds a request may take to go out whole (a hung worker stops reading)
CONNECT_TIMEOUT = 1.0  # seconds; a connection is made at once unless the worker stopped accepting (hung)


class LinkDown(Exception):
    """The connection to the worker ended or failed: it was killed, or it closed a connection it could not
    read."""


class DirectLink:
    """One thread's connection to one worker's direct lane."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.pid = os.getpid()
        self.received = bytearray()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path_of(endpoint))  # at once on one host: refused if the worker is gone
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def send(self, frames: list[Any], timeout: float) -> None:
        """Send one message whole within ``timeout`` seconds (the worker reads as it comes); raise
        :class:`LinkDown` (the connection is then of no more use: part of a message may have gone)."""
        try:
            self.sock.settimeout(max(timeout, 0.001))
            sendall_vectored(self.sock, [memoryview(b).cast("B") for b in stream.pack(frames)])
        except OSError as exc:
            raise LinkDown(str(exc)) from None

    def receive(self, timeout: float) -> list[memoryview] | None:
        """Return the frames of the next message, or None if it did not come whole within ``timeout`` seconds
        (what came of it is kept for the next call); raise :class:`LinkDown`."""
        received = self.received
        self.sock.settimeout(max(timeout, 0.001))
        while True:
            try:
                frames = stream.take(received)
            except ProtocolError as exc:
                raise LinkDown(f"the worker sent {exc}") from None
            if frames is not None:
                return frames
            try:
                data = self.sock.recv(min(max(RECV_SIZE, stream.needed(received) - len(received)), MAX_RECV))
            except TimeoutError:
                return None
            except OSError as exc:
                raise LinkDown(str(exc)) from None
            if not data:
                raise LinkDown("the worker closed the connection")
            received += data

    def close(self) -> None:
        if self.pid == os.getpid():  # inherited across fork: never touched
            self.sock.close()

    def __del__(self) -> None:
        self.close()


class DirectLinks:
    """One thread's links, by endpoint; links to workers no longer listed are closed."""

    def __init__(self) -> None:
        self.links: dict[str, DirectLink] = {}
        self.listed: object = None  # the STATUS_REPLY the links were last pruned against

    def get(self, endpoint: str) -> DirectLink | None:
        """Return the link to ``endpoint``, connecting it first if need be; None if the worker cannot be
        reached."""
        link = self.links.get(endpoint)
        if link is None:
            try:
                link = self.links[endpoint] = DirectLink(endpoint)
            except (OSError, ValueError):
                return None
        return link

    def drop(self, link: DirectLink) -> None:
        if self.links.get(link.endpoint) is link:
            del self.links[link.endpoint]
        link.close()

    def prune(self, status: protocol.StatusReply) -> None:
        """Close the links to workers ``status`` no longer lists (once per STATUS_REPLY)."""
        if status is self.listed:
            return
        self.listed = status
        endpoints = {w.get("direct") for w in status.workers if isinstance(w, dict)}
        for endpoint in [e for e in self.links if e not in endpoints]:
            self.links.pop(endpoint).close()

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
