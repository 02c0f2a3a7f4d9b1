"""The worker's half of the dispatcher session, apart from the application (as MDP's ``mdwrkapi``).

It connects a DEALER socket, announces READY, sends heartbeats, judges the dispatcher alive or gone (and then
reconnects on a new socket), answers DISCONNECT with READY again, and runs the drain handshake: DRAIN, wait
for the acknowledgement (or the dispatcher's silence, or a timeout), DISCONNECT. What to announce and what a
heartbeat carries come from the application through two callables; requests are handed back to the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from inference_worker import protocol
from inference_worker.protocol import Link, ProtocolError
from inference_worker.security import SecurityError, is_network, secure_client
from inference_worker.worker.config import WorkerConfig

log = logging.getLogger("torchgate.worker")

MAX_RECEIVE = 10_000  # messages read in one go, so a flood cannot starve heartbeats
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's flag enums cost a call per operation


class Session:
    """One worker incarnation's connection to the dispatcher."""

    def __init__(
        self,
        config: WorkerConfig,
        context: zmq.Context[Any],
        identity: str,
        ready: Callable[[], protocol.Ready],
        heartbeat: Callable[[], protocol.Heartbeat],
    ) -> None:
        self.config = config
        self.context = context
        self.identity = identity
        self.ready = ready
        self.heartbeat = heartbeat
        self.socket: zmq.Socket[Any] | None = None
        self.last_seen = 0.0
        self.next_heartbeat = 0.0
        self.last_heartbeat = 0.0
        self.drain_started = 0.0
        self.drain_acked = False
        self.tag = f"worker[{config.name}]"

    def connect(self) -> None:
        """(Re)connect on a new socket and announce READY."""
        if self.socket is not None:
            self.socket.close(linger=0)
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.IDENTITY, self.identity.encode())
        socket.setsockopt(zmq.LINGER, 2000)
        if is_network(self.config.dispatcher):
            if not (self.config.curve_secret_key and self.config.curve_server_key):
                socket.close(linger=0)
                raise SecurityError("a TCP dispatcher needs --curve-secret-key and --curve-server-key")
            secure_client(socket, self.config.curve_secret_key, self.config.curve_server_key)
        socket.connect(self.config.dispatcher)
        self.socket = socket
        self.announce()

    def announce(self) -> None:
        ready = self.ready()
        self.send(ready.frames())
        self.last_seen = time.monotonic()
        if ready.models:
            log.info("%s: READY (%s, capacity %d)", self.tag, ready.device, ready.capacity)
        else:
            log.info("%s: nothing loaded; telling the dispatcher what could not load", self.tag)

    def close(self, linger: int = 2000) -> None:
        if self.socket is not None:
            self.socket.close(linger=linger)
            self.socket = None

    # -- receiving --------------------------------------------------------------------------------------

    def receive(self) -> list[protocol.ForwardedRequest | protocol.WorkerCancel | protocol.WorkerControl]:
        """Read every waiting message without blocking; handle the session's own, return the application's."""
        assert self.socket is not None, "connect() first"
        requests: list[protocol.ForwardedRequest | protocol.WorkerCancel | protocol.WorkerControl] = []
        socket = self.socket
        for count in range(MAX_RECEIVE):
            # After the first message, ask whether another waits rather than read until zmq.Again: raising
            # it cost more than the rest of a small request's decoding.
            if count and not int(socket.getsockopt(EVENTS)) & POLLIN:
                break
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.last_seen = time.monotonic()
            try:
                message = protocol.receive(frames, Link.DISPATCHER_TO_WORKER)
            except ProtocolError as exc:
                log.warning("%s: dropped a malformed message: %s", self.tag, exc)
                continue
            if isinstance(
                message, protocol.ForwardedRequest | protocol.WorkerCancel | protocol.WorkerControl
            ):
                requests.append(message)
            elif isinstance(message, protocol.Drain):
                self.drain_acked = True
            elif isinstance(message, protocol.Disconnect):
                log.info("%s: dispatcher does not know us (%s); announcing again", self.tag, message.reason)
                if not self.drain_started:
                    self.announce()
        return requests

    # -- sending ----------------------------------------------------------------------------------------

    def send(self, frames: list[Any], copy: bool = False) -> None:
        """Send without blocking; pyzmq copies frames under ``zmq.COPY_THRESHOLD`` (64 KiB) even without
        ``copy``."""
        assert self.socket is not None, "connect() first"
        try:
            self.socket.send_multipart(frames, copy=copy, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s: dispatcher not accepting messages; dropped one", self.tag)

    def keep_alive(self, now: float) -> None:
        """Send a heartbeat when one is due; reconnect when the dispatcher has been silent too long."""
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.config.heartbeat_interval
            self.last_heartbeat = now
            self.send(self.heartbeat().frames())
        silent = now - self.last_seen
        if self.drain_started or silent <= self.config.liveness_seconds:
            return
        # A message waiting to be read proves the dispatcher alive: read it before judging the dispatcher
        # gone (asked only then: polling the socket on every turn of the loop cost microseconds a request).
        if self.socket is not None and self.socket.poll(0, zmq.POLLIN):
            return
        log.warning("%s: no word from the dispatcher for %.1fs; reconnecting", self.tag, silent)
        self.connect()

    def hasten_heartbeat(self, now: float) -> None:
        """Send the next heartbeat (and so fresh counters) soon: at once, or a tenth of an interval after the
        last."""
        self.next_heartbeat = min(
            self.next_heartbeat, max(now, self.last_heartbeat + self.config.heartbeat_interval / 10)
        )

    # -- draining ---------------------------------------------------------------------------------------

    def start_drain(self, now: float) -> None:
        """Ask the dispatcher to send no more work."""
        if not self.drain_started:
            self.drain_started = now
            self.send(protocol.Drain().frames())
            log.info("%s: draining", self.tag)

    def may_leave(self, now: float) -> bool:
        """Return whether a drained worker may leave: acknowledged, dispatcher gone, or timed out."""
        gone = now - max(self.last_seen, self.drain_started) > self.config.liveness_seconds
        return self.drain_acked or gone or now - self.drain_started > self.config.drain_timeout

    def leave(self, reason: str = "drained") -> None:
        """Say goodbye: DISCONNECT."""
        self.send(protocol.Disconnect(reason).frames())
        if reason == "drained":
            log.info("%s: drained, exiting", self.tag)
