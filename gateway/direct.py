"""The gateway's end of the direct lane: one thread's connections to the workers on this host.

A worker on the dispatcher's host takes requests straight from a gateway while it has room for them in its
next batch (inference_worker/worker/direct.py): at one connection that skips the dispatcher's two ZeroMQ
hops each way. :class:`gateway.client.DispatcherClient` uses the lane only when its process has no other
request in flight (under load the dispatcher's queue and balancing are worth their hop) and falls back to
the dispatcher when the worker declines, when its connection drops (killed) or when it stays silent.

Each thread has a DEALER socket per worker endpoint, with a monitor: a link is used only once its handshake
succeeded, and a dropped connection is seen at once rather than after a timeout.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from inference_worker import protocol

log = logging.getLogger("torchgate.gateway")

UP, DOWN = int(zmq.EVENT_HANDSHAKE_SUCCEEDED), int(zmq.EVENT_DISCONNECTED)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class DirectLink:
    """One thread's connection to one worker's direct lane, and whether it is up."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.endpoint = endpoint
        self.pid = os.getpid()
        self.up = False
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        self.monitor = socket.get_monitor_socket(UP | DOWN)
        socket.connect(endpoint)
        self.socket: zmq.Socket[Any] = socket

    def refresh(self) -> bool:
        """Read what the monitor saw; return whether the connection is up."""
        monitor = self.monitor
        try:
            # asked before reading: once a request, and a zmq.Again raised each time cost more than the ask
            while int(monitor.getsockopt(EVENTS)) & POLLIN:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
                if event == UP or event == DOWN:
                    self.up = event == UP
        except zmq.ZMQError:
            self.up = False
        return self.up

    def close(self) -> None:
        if self.pid != os.getpid() or self.socket.closed:
            return  # inherited across fork: never touched
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.socket.close(linger=0)

    def __del__(self) -> None:
        self.close()


class DirectLinks:
    """One thread's links, by endpoint; links to workers no longer listed are closed."""

    def __init__(self) -> None:
        self.links: dict[str, DirectLink] = {}
        self.listed: object = None  # the STATUS_REPLY the links were last pruned against

    def get(self, context: zmq.Context[Any], endpoint: str) -> DirectLink | None:
        """Return the link to ``endpoint`` if it is up; connect one if there is none yet (used once up)."""
        link = self.links.get(endpoint)
        if link is None:
            self.links[endpoint] = DirectLink(context, endpoint)
            return None
        return link if link.refresh() else None

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
