"""The dispatcher's loop in-process over inproc://, its peers played by raw sockets speaking the wire: what
reaches a worker and a gateway, frame for frame, and what a malformed message gets."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq

from inference_worker import protocol
from inference_worker.dispatcher import Dispatcher, DispatcherConfig
from inference_worker.protocol import ErrorCode, Link, TensorMeta

X = TensorMeta("x", "FP32", (2, 2))
X_BYTES = bytes(range(16))
Y = TensorMeta("y", "INT32", (3,))
Y_BYTES = bytes(range(100, 112))
TIMEOUT_MS = 10_000


@dataclass
class Peers:
    dispatcher: Dispatcher
    gateway: zmq.Socket[Any]
    worker: zmq.Socket[Any]

    def receive(self, socket: zmq.Socket[Any], link: Link) -> tuple[Any, list[bytes]]:
        """Return the next message on ``socket`` other than a heartbeat, typed, with its raw frames."""
        while True:
            assert socket.poll(TIMEOUT_MS), "nothing arrived"
            frames = socket.recv_multipart()
            message = protocol.receive(frames, link)
            if not isinstance(message, protocol.Heartbeat):
                return message, frames

    def to_worker(self) -> tuple[protocol.ForwardedRequest, list[bytes]]:
        message, frames = self.receive(self.worker, Link.DISPATCHER_TO_WORKER)
        assert isinstance(message, protocol.ForwardedRequest), message
        return message, frames

    def to_gateway(self) -> tuple[Any, list[bytes]]:
        return self.receive(self.gateway, Link.DISPATCHER_TO_GATEWAY)


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    context: zmq.Context[Any] = zmq.Context()
    name = uuid.uuid4().hex
    dispatcher = Dispatcher(
        DispatcherConfig(f"inproc://{name}-f", f"inproc://{name}-b", 0.2, 25, startup_grace=0), context
    )
    thread = threading.Thread(target=dispatcher.serve, daemon=True)
    thread.start()
    worker = context.socket(zmq.DEALER)
    worker.setsockopt(zmq.IDENTITY, b"w0-socket")
    worker.connect(f"inproc://{name}-b")
    model = {"name": "m", "version": "1", "max_queue_size": 8}
    worker.send_multipart(protocol.Ready("w0", "i1", 4, [model]).frames())
    gateway = context.socket(zmq.DEALER)
    gateway.connect(f"inproc://{name}-f")
    peers = Peers(dispatcher, gateway, worker)
    try:
        end = time.monotonic() + 10
        while "w0" not in {w.name for w in dispatcher.router.workers.values()}:
            assert time.monotonic() < end, "the worker never registered"
            time.sleep(0.01)
        yield peers
    finally:
        dispatcher.stopping = True
        thread.join(10)
        for socket in (gateway, worker):
            socket.close(linger=0)
        dispatcher.close()
        context.term()


def test_a_request_and_its_reply_cross_with_their_fields_and_tensor_bytes(peers: Peers) -> None:
    request = protocol.Request(
        "c1", "m", [(X, X_BYTES)], deadline=time.time() + 30, request_id="trace", priority=2, outputs=("y",)
    )
    peers.gateway.send_multipart(request.frames())
    forwarded, frames = peers.to_worker()
    assert (forwarded.id, forwarded.model, forwarded.version, forwarded.request_id) == (
        "c1",
        "m",
        "1",
        "trace",
    )
    assert (forwarded.priority, forwarded.outputs, forwarded.deadline) == (2, ("y",), request.deadline)
    assert frames[1:] == [X_BYTES]
    stats = {"batch_size": 1, "queue_ns": 5}
    peers.worker.send_multipart(protocol.WorkerReply(forwarded.seq, [(Y, Y_BYTES)], stats).frames())
    reply, frames = peers.to_gateway()
    assert isinstance(reply, protocol.Reply)
    assert (reply.id, reply.model, reply.version, reply.worker, reply.stats) == ("c1", "m", "1", "w0", stats)
    assert [meta for meta, _ in reply.outputs] == [Y] and frames[1:] == [Y_BYTES]


def test_a_malformed_request_is_answered_invalid_argument(peers: Peers) -> None:
    bad = protocol.Request("c2", "m", [(X, X_BYTES)]).frames()
    peers.gateway.send_multipart([bad[0], X_BYTES[:-4]])
    error, _ = peers.to_gateway()
    assert isinstance(error, protocol.Error) and error.id == "c2"
    assert error.code is ErrorCode.INVALID_ARGUMENT and "frame holds 12 bytes" in error.message
    names = msgpack.packb({"v": 1, "kind": "REQUEST", "id": "c3", "model": "m", "outputs": [1]})
    peers.gateway.send_multipart([names])
    error, _ = peers.to_gateway()
    assert isinstance(error, protocol.Error) and error.id == "c3" and "list of names" in error.message


def test_a_malformed_reply_is_dropped_and_the_request_still_answered(peers: Peers) -> None:
    peers.gateway.send_multipart(protocol.Request("c4", "m", [(X, X_BYTES)]).frames())
    forwarded, _ = peers.to_worker()
    reply = protocol.WorkerReply(forwarded.seq, [(Y, Y_BYTES)]).frames()
    peers.worker.send_multipart([reply[0], Y_BYTES + b"!"])  # one byte too many: dropped
    peers.worker.send_multipart(
        protocol.WorkerError(forwarded.seq, ErrorCode.INVALID_ARGUMENT, "bad input").frames()
    )
    error, _ = peers.to_gateway()
    assert isinstance(error, protocol.Error) and (error.id, error.worker) == ("c4", "w0")
    assert error.code is ErrorCode.INVALID_ARGUMENT and error.message == "bad input"


def test_query_and_status_are_answered_between_requests(peers: Peers) -> None:
    peers.gateway.send_multipart(protocol.Request("c5", "m", [(X, X_BYTES)]).frames())
    forwarded, _ = peers.to_worker()
    peers.gateway.send_multipart(protocol.Query("c5").frames())
    known, _ = peers.to_gateway()
    assert isinstance(known, protocol.QueryReply) and known.known
    peers.gateway.send_multipart(protocol.Status("s1").frames())
    status, _ = peers.to_gateway()
    assert isinstance(status, protocol.StatusReply) and status.ready_workers() == {"w0"}
    peers.worker.send_multipart(protocol.WorkerReply(forwarded.seq, [(Y, Y_BYTES)]).frames())
    reply, _ = peers.to_gateway()
    assert isinstance(reply, protocol.Reply) and reply.id == "c5"
    peers.gateway.send_multipart(protocol.Query("c5").frames())
    known, _ = peers.to_gateway()
    assert isinstance(known, protocol.QueryReply) and not known.known
