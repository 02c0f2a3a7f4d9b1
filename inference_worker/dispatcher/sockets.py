"""The dispatcher's two ROUTER sockets: binding them safely, and sending to a gateway or a worker.

The hot path calls pyzmq's Cython ``send``/``recv`` with plain integer flags: ``send_multipart`` builds an
enum flag (``SNDMORE | flags``) and checks every part's type per frame, ``recv_multipart`` asks ``RCVMORE``
through the Python layer per frame, and an empty socket answered by ``zmq.Again`` costs an exception;
``EVENTS`` says whether a message waits for a fraction of that.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from inference_worker.dispatcher.config import DispatcherConfig
from inference_worker.security import CurveServer, SecurityError, bind, is_network

log = logging.getLogger("torchgate.dispatcher")

SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get


def send_frames(socket: zmq.Socket[Any], frames: list[Any]) -> None:
    """Send one multipart message; received frames go on untouched, small buffers are copied (as
    ``send_multipart(copy=False)``)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(socket, frame, SNDMORE if i < last else 0, copy=False)


def receive(socket: zmq.Socket[Any]) -> list[Any] | None:
    """Return the next message's frames (``zmq.Frame``, not copied) without blocking; None if none waits."""
    if not _get(socket, EVENTS) & POLLIN:  # type: ignore[operator]
        return None
    try:
        frame = _recv(socket, NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame]
    while frame.more:  # the parts of one message arrive together
        frame = _recv(socket, NOBLOCK, copy=False)
        frames.append(frame)
    return frames


class Peers:
    """How many peers are connected to a bound socket, counted from its monitor's events.

    libzmq reports connections made over ipc and tcp, not over inproc: there the count is None (unknown).
    """

    def __init__(self, socket: zmq.Socket[Any], endpoint: str) -> None:
        self.socket = socket
        self.connected = 0
        self.monitor: zmq.Socket[Any] | None = None
        if endpoint.startswith(("ipc://", "tcp://")):
            self.monitor = socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)

    @property
    def known(self) -> int | None:
        """How many peers were connected when the events were last taken in (None: unknown); no socket call,
        so a signal handler may ask it while the loop is reading the monitor."""
        return None if self.monitor is None else self.connected

    def count(self) -> int | None:
        """Take in the events that arrived; return how many peers are connected now (None: unknown).

        Only the serving thread calls it: a socket read from a signal handler could interleave with the loop's
        own read of one event's two frames."""
        if self.monitor is None:
            return None
        while (frames := receive(self.monitor)) is not None:
            try:
                event = parse_monitor_message([f.bytes for f in frames])["event"]
            except RuntimeError:  # a torn event (a monitor is not expected to send one): not counted
                continue
            if event == zmq.EVENT_ACCEPTED:
                self.connected += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = max(0, self.connected - 1)
        return self.connected

    def close(self) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None


class Endpoints:
    """The frontend (gateways connect) and the backend (workers connect), with CURVE over TCP."""

    def __init__(self, config: DispatcherConfig, context: zmq.Context[Any]) -> None:
        self.config = config
        self.context = context
        self.curve: CurveServer | None = None
        if is_network(config.frontend) or is_network(config.backend):
            if not (config.curve_secret_key and config.curve_authorized):
                raise SecurityError(
                    "a TCP endpoint needs --curve-secret-key and --curve-authorized (see `torchgate keys`)"
                )
            self.curve = CurveServer(context, config.curve_secret_key, config.curve_authorized)
        self.frontend = self._socket(config.frontend)
        self.backend = self._socket(config.backend)
        self.gateways = Peers(self.frontend, config.frontend)  # what a stopping dispatcher waits for

    def _socket(self, endpoint: str) -> zmq.Socket[Any]:
        socket: zmq.Socket[Any] = self.context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        if self.curve is not None and is_network(endpoint):
            self.curve.secure(socket)
        bind(socket, endpoint)
        return socket

    def to_gateway(self, gateway: bytes, frames: list[Any]) -> None:
        try:
            send_frames(self.frontend, [gateway, *frames])
        except zmq.ZMQError as exc:
            log.info("dispatcher: gateway gone, answer dropped (%s)", exc)

    def to_worker(self, identity: bytes, frames: list[Any]) -> bool:
        """Send to a worker; return False if its connection is gone."""
        try:
            send_frames(self.backend, [identity, *frames])
            return True
        except zmq.ZMQError as exc:
            log.warning("dispatcher: worker %r unreachable (%s)", identity, exc)
            return False

    def close(self, backend_linger: int = 0) -> None:
        self.gateways.close()
        self.frontend.close(linger=0)
        self.backend.close(linger=backend_linger)
        if self.curve is not None:
            self.curve.stop()
