"""The worker's direct lane: requests from gateways on this host that skip the dispatcher's hop.

Through the dispatcher, a request and its answer cross four ZeroMQ hops, each a hand-off between threads and
processes; at one connection that hop costs more than a small model (docs/performance.md, "The direct
lane"). So a worker on the dispatcher's host also binds a ROUTER socket next to the dispatcher's and says
where in its READY; the dispatcher's STATUS lists it, and a gateway with no other request in flight sends a
REQUEST straight here (gateway/direct.py), with its version resolved as the dispatcher would.

The worker takes a direct request only when it would run it in its next batch (:meth:`DirectLane.admit`),
and answers it here as the dispatcher would (REPLY or ERROR, with the request's ``id``). Otherwise it
answers DECLINED, and the gateway sends the request to the dispatcher, which queues and balances it as any
other. The dispatcher never learns of a direct request: a worker killed while computing one is noticed by
the gateway (its connection to the worker drops) and the request goes to the dispatcher then.

Direct requests are keyed by negative sequence numbers in the worker (the dispatcher's are positive), so
each answer finds its way back.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import zmq

from inference_worker import protocol
from inference_worker.direct_lane import remove_stale
from inference_worker.protocol import ErrorCode, Link, ProtocolError
from inference_worker.security import bind

log = logging.getLogger("torchgate.worker")

DEFAULT_TIMEOUT = 30.0  # seconds a request without a deadline may take (as the dispatcher's)
MAX_RECEIVE = 10_000  # messages read in one go
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a direct request, and what its answer must say."""

    identity: bytes
    id: str
    model: str
    version: str


class DirectLane:
    """The ROUTER socket gateways send direct requests to, and the requests taken from it until answered."""

    def __init__(self, context: zmq.Context[Any], endpoint: str, worker: str) -> None:
        self.endpoint = endpoint
        self.worker = worker  # the slot name answers carry
        self.callers: dict[int, Caller] = {}
        self._last_seq = 0
        self.taken = 0  # direct requests taken, and declined (the worker's log says so at exit)
        self.declined = 0
        remove_stale(endpoint, worker)
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 1000)
        try:
            bind(socket, endpoint)
        except zmq.ZMQError:
            socket.close(linger=0)
            raise
        self.socket: zmq.Socket[Any] = socket

    def close(self) -> None:
        self.socket.close()
        try:
            os.unlink(self.endpoint[len("ipc://") :])
        except OSError:
            pass

    # -- requests -------------------------------------------------------------------------------------

    def receive(self) -> list[tuple[bytes, protocol.Request]]:
        """Read every waiting request without blocking; a malformed one is answered INVALID_ARGUMENT."""
        requests: list[tuple[bytes, protocol.Request]] = []
        socket = self.socket
        for count in range(MAX_RECEIVE):
            if count and not int(socket.getsockopt(EVENTS)) & POLLIN:
                break
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            identity, body = frames[0].bytes, frames[1:]
            try:
                message = protocol.receive(body, Link.GATEWAY_TO_WORKER)
            except ProtocolError as exc:
                log.warning("worker[%s]: dropped a malformed direct request: %s", self.worker, exc)
                request_id = protocol.header_id(body)
                if request_id is not None:
                    text = f"malformed request: {exc}"
                    self._send(
                        identity, protocol.Error(request_id, ErrorCode.INVALID_ARGUMENT, text).frames()
                    )
                continue
            requests.append((identity, message))
        return requests

    def take(self, identity: bytes, request: protocol.Request) -> protocol.ForwardedRequest:
        """Key ``request`` here and return it as the dispatcher would have forwarded it."""
        assert request.version, "admit() took it: its version is resolved"
        self._last_seq -= 1
        seq = self._last_seq
        self.callers[seq] = Caller(identity, request.id, request.model, request.version)
        self.taken += 1
        deadline = request.deadline if request.deadline is not None else time.time() + DEFAULT_TIMEOUT
        return protocol.ForwardedRequest.of(request, seq, request.version, deadline or math.inf)

    def decline(self, identity: bytes, request: protocol.Request, why: str) -> None:
        """Tell the gateway to send ``request`` to the dispatcher instead."""
        self.declined += 1
        self._send(identity, protocol.Error(request.id, ErrorCode.DECLINED, why, self.worker).frames())

    # -- answers --------------------------------------------------------------------------------------

    @staticmethod
    def owns(seq: int) -> bool:
        return seq < 0

    def answer(self, message: protocol.WorkerReply | protocol.WorkerError, copy: bool = False) -> None:
        """Send a direct request's answer to its gateway, as the dispatcher would have passed it on."""
        caller = self.callers.pop(message.seq, None)
        if caller is None:
            return
        if isinstance(message, protocol.WorkerError):
            frames = protocol.Error(caller.id, message.code, message.message, self.worker).frames()
        else:
            frames = protocol.Reply(
                caller.id,
                caller.model,
                caller.version,
                self.worker,
                message.outputs,
                message.stats,
                message.shm_outputs,
            ).frames()
        self._send(caller.identity, frames, copy)

    def _send(self, identity: bytes, frames: list[Any], copy: bool = False) -> None:
        try:  # a gateway gone meanwhile: ROUTER drops what it cannot route
            self.socket.send_multipart([identity, *frames], copy=copy, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("worker[%s]: a gateway is not reading its direct answers; dropped one", self.worker)
