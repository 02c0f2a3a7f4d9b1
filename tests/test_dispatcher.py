"""The dispatcher's loop in-process over inproc://, its peers played by raw sockets speaking the wire: what
reaches a worker and a gateway, frame for frame, and what a malformed message gets."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import zmq

from harness import short_dir, wait_for
from inference_worker import protocol, shm
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


@contextmanager
def serving(context: zmq.Context[Any], **config: Any) -> Iterator[Dispatcher]:
    """Run a dispatcher on inproc:// in a thread until the block ends."""
    name = uuid.uuid4().hex
    dispatcher = Dispatcher(DispatcherConfig(f"inproc://{name}-f", f"inproc://{name}-b", **config), context)
    thread = threading.Thread(target=dispatcher.serve, daemon=True)
    thread.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stopping = True
        thread.join(10)
        dispatcher.close()


def connect(context: zmq.Context[Any], endpoint: str, identity: bytes | None = None) -> zmq.Socket[Any]:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        socket.setsockopt(zmq.IDENTITY, identity)
    socket.connect(endpoint)
    return socket


MODEL = {"name": "m", "version": "1", "max_queue_size": 8}


def register(dispatcher: Dispatcher, worker: zmq.Socket[Any], name: str, shared_memory: bool = False) -> None:
    worker.send_multipart(protocol.Ready(name, f"{name}-i", 4, [MODEL], shm=shared_memory).frames())
    end = time.monotonic() + 10
    while name not in {w.name for w in dispatcher.router.workers.values()}:
        assert time.monotonic() < end, f"worker {name} never registered"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    context: zmq.Context[Any] = zmq.Context()
    with serving(context, heartbeat_interval=0.2, heartbeat_liveness=25, startup_grace=0) as dispatcher:
        worker = connect(context, dispatcher.config.backend, b"w0-socket")
        gateway = connect(context, dispatcher.config.frontend)
        try:
            register(dispatcher, worker, "w0")
            yield Peers(dispatcher, gateway, worker)
        finally:
            for socket in (gateway, worker):
                socket.close(linger=0)
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


def test_what_crosses_decodes_field_for_field_as_the_typed_path_built_it(peers: Peers) -> None:
    """The dispatcher re-encodes only headers: peers read what ForwardedRequest and Reply would build."""
    request = protocol.Request(
        "c6",
        "m",
        [(X, X_BYTES), (Y, Y_BYTES)],
        deadline=time.time() + 30,
        request_id="trace-6",
        priority=1,
        outputs=("y", "z"),
    )
    peers.gateway.send_multipart(request.frames())
    forwarded, frames = peers.to_worker()
    typed = protocol.receive(request.frames(), Link.GATEWAY_TO_DISPATCHER)
    want = protocol.ForwardedRequest.of(typed, forwarded.seq, "1", request.deadline or 0.0)
    assert forwarded == protocol.receive(want.frames(), Link.DISPATCHER_TO_WORKER)
    assert frames[1:] == [X_BYTES, Y_BYTES]
    stats = {"queue_ns": 3, "compute_infer_ns": 4, "batch_size": 2}
    placed = [{"name": "z", "datatype": "FP32", "shape": [1], "offset": 64}]
    answer = protocol.WorkerReply(forwarded.seq, [(Y, Y_BYTES)], stats, placed).frames()
    peers.worker.send_multipart(answer)
    reply, frames = peers.to_gateway()
    worker_reply = protocol.receive(answer, Link.WORKER_TO_DISPATCHER)
    old = protocol.Reply(
        "c6", "m", "1", "w0", worker_reply.outputs, worker_reply.stats, worker_reply.shm_outputs
    )
    assert isinstance(reply, protocol.Reply)
    expected = protocol.receive(old.frames(), Link.DISPATCHER_TO_GATEWAY)
    for name in ("id", "model", "version", "worker", "stats", "shm_outputs", "outputs"):
        assert getattr(reply, name) == getattr(expected, name), name
    assert frames[1:] == [Y_BYTES]


def test_a_deadline_passed_before_routing_is_answered_deadline_exceeded(peers: Peers) -> None:
    peers.gateway.send_multipart(
        protocol.Request("c7", "m", [(X, X_BYTES)], deadline=time.time() - 1).frames()
    )
    error, _ = peers.to_gateway()
    assert isinstance(error, protocol.Error) and error.id == "c7"
    assert error.code is ErrorCode.DEADLINE_EXCEEDED


@pytest.mark.skipif(not shm.supported(), reason="needs memfd_create and /proc")
def test_a_worker_without_shared_memory_gets_the_segments_tensors_in_frames(peers: Peers) -> None:
    segment = shm.Segment.create(shm.HEADER + len(X_BYTES))
    segment.stamp()
    memoryview(segment.memory)[shm.HEADER : shm.HEADER + len(X_BYTES)] = X_BYTES
    ref = {**segment.ref(), "inputs": [shm.Placed(X, shm.HEADER).to_wire()], "reply": [0, 0]}
    try:
        peers.gateway.send_multipart(protocol.Request("c8", "m", [], request_id="t8", shm=ref).frames())
        forwarded, frames = peers.to_worker()
        assert (forwarded.id, forwarded.request_id, forwarded.shm) == ("c8", "t8", None)
        assert [meta for meta, _ in forwarded.inputs] == [X] and frames[1:] == [X_BYTES]
        peers.worker.send_multipart(protocol.WorkerReply(forwarded.seq, [(Y, Y_BYTES)]).frames())
        reply, _ = peers.to_gateway()
        assert isinstance(reply, protocol.Reply) and reply.id == "c8"
    finally:
        segment.close()
    peers.gateway.send_multipart(protocol.Request("c9", "m", [], shm=ref).frames())  # closed: refused
    error, _ = peers.to_gateway()
    assert isinstance(error, protocol.Error) and error.id == "c9" and error.code is ErrorCode.UNAVAILABLE
    assert error.message.startswith(shm.REFUSED)


def test_requests_wait_for_a_worker_and_go_again_when_theirs_is_lost() -> None:
    """Held while no worker is registered; re-sent, frames and all, when the worker computing it leaves or
    falls silent (as a worker killed with -9 does)."""
    context: zmq.Context[Any] = zmq.Context()
    config = {"heartbeat_interval": 0.05, "heartbeat_liveness": 20, "startup_grace": 30}
    with serving(context, **config) as dispatcher:
        gateway = connect(context, dispatcher.config.frontend)
        workers = [connect(context, dispatcher.config.backend, f"w{i}-socket".encode()) for i in range(3)]
        try:
            request = protocol.Request("h1", "m", [(X, X_BYTES)], deadline=time.time() + 60, request_id="t")
            gateway.send_multipart(request.frames())
            gateway.send_multipart(protocol.Query("h1").frames())
            assert gateway.poll(TIMEOUT_MS)
            known = protocol.receive(gateway.recv_multipart(), Link.DISPATCHER_TO_GATEWAY)
            assert isinstance(known, protocol.QueryReply) and known.known  # held, not refused
            register(dispatcher, workers[0], "w0")
            first = next_request(workers[0])
            register(dispatcher, workers[1], "w1")
            workers[0].send_multipart(protocol.Disconnect("leaving").frames())
            again = next_request(workers[1], heartbeat=True)
            assert again[0].seq == first[0].seq and again[1] == first[1]  # the same header, the same frames
            answer(workers[1], again[0].seq)
            assert reply_to(gateway) == ("h1", "w1")
            # the next one falls on w1, which falls silent: after its liveness the request goes to w2
            request = protocol.Request("h2", "m", [(X, X_BYTES)], deadline=time.time() + 60)
            gateway.send_multipart(request.frames())
            first = next_request(workers[1], heartbeat=True)
            register(dispatcher, workers[2], "w2")
            again = next_request(workers[2], heartbeat=True)
            assert again[0].seq == first[0].seq and again[1] == first[1]
            answer(workers[2], again[0].seq)
            assert reply_to(gateway) == ("h2", "w2")
            assert dispatcher.requests.counters["resent"] == 2 and dispatcher.requests.counters["lost"] == 0
        finally:
            for socket in (gateway, *workers):
                socket.close(linger=0)
    context.term()


def test_a_late_answer_to_an_earlier_dispatchers_request_is_never_a_new_requests() -> None:
    """A dispatcher killed and started again (supervisord) while a worker computes one of its requests: the
    worker registers with the new one, gets new requests, then answers the old one under its old key. That
    answer must not pass for a new request's (each dispatcher counted its keys from 1: the new request with
    the old one's key got the old one's outputs)."""
    context: zmq.Context[Any] = zmq.Context()
    config = {"heartbeat_interval": 0.05, "heartbeat_liveness": 200, "startup_grace": 0}
    stale = bytes(range(200, 212))
    sockets: list[zmq.Socket[Any]] = []
    try:
        with serving(context, **config) as first:
            worker = connect(context, first.config.backend, b"w0-socket")
            gateway = connect(context, first.config.frontend)
            sockets += [worker, gateway]
            register(first, worker, "w0")
            gateway.send_multipart(
                protocol.Request("old", "m", [(X, X_BYTES)], deadline=time.time() + 60).frames()
            )
            old, _ = next_request(worker)
        with serving(context, **config) as second:  # the worker still computes "old"
            worker = connect(context, second.config.backend, b"w0-socket")
            gateway = connect(context, second.config.frontend)
            sockets += [worker, gateway]
            register(second, worker, "w0")
            news = []
            for i in range(3):
                new = protocol.Request(f"new{i}", "m", [(X, X_BYTES)], deadline=time.time() + 60)
                gateway.send_multipart(new.frames())
                news.append(next_request(worker, heartbeat=True)[0])
            worker.send_multipart(protocol.WorkerReply(old.seq, [(Y, stale)], {"batch_size": 1}).frames())
            for request in news:
                answer(worker, request.seq)
            replies: dict[str, list[bytes]] = {}
            while len(replies) < len(news):
                assert gateway.poll(TIMEOUT_MS), f"no answer after {sorted(replies)}"
                frames = gateway.recv_multipart()
                message = protocol.receive(frames, Link.DISPATCHER_TO_GATEWAY)
                assert not isinstance(message, protocol.Error), message
                if isinstance(message, protocol.Reply):
                    replies[message.id] = frames[1:]
            assert replies == {f"new{i}": [Y_BYTES] for i in range(3)}
    finally:
        for socket in sockets:
            socket.close(linger=0)
        context.term()


def test_a_cancelled_request_is_dropped_while_held_and_passed_on_to_its_worker() -> None:
    """CANCEL of a request held while no worker is registered drops it; of one on a worker, goes on to that
    worker under the worker's key, and the worker's answer (ERROR CANCELLED) frees its place."""
    context: zmq.Context[Any] = zmq.Context()
    config = {"heartbeat_interval": 0.05, "heartbeat_liveness": 20, "startup_grace": 30}
    with serving(context, **config) as dispatcher:
        gateway = connect(context, dispatcher.config.frontend)
        worker = connect(context, dispatcher.config.backend, b"w0-socket")
        try:
            for call in ("k1", "k2"):
                gateway.send_multipart(protocol.Request(call, "m", [(X, X_BYTES)]).frames())
            gateway.send_multipart(protocol.Cancel("k1").frames())
            assert not known(gateway, "k1")
            register(dispatcher, worker, "w0")
            forwarded, _ = next_request(worker, heartbeat=True)
            assert forwarded.id == "k2"  # k1 never reaches a worker
            gateway.send_multipart(protocol.Cancel("k2").frames())
            assert next_cancel(worker) == forwarded.seq
            assert known(gateway, "k2")  # the worker decides: it may be computing it
            text = "its client went away before it ran"
            worker.send_multipart(protocol.WorkerError(forwarded.seq, ErrorCode.CANCELLED, text).frames())
            wait_for(lambda: not known(gateway, "k2"), timeout=10, what="the answer to free its place")
            gateway.send_multipart(protocol.Cancel("unknown").frames())  # too late, or never sent: nothing
            assert not known(gateway, "unknown")
            assert (
                dispatcher.requests.counters["cancelled"] == 1
                and not dispatcher.router.workers[b"w0-socket"].in_flight
            )
        finally:
            for socket in (gateway, worker):
                socket.close(linger=0)
    context.term()


def known(gateway: zmq.Socket[Any], call: str) -> bool:
    """Ask the dispatcher whether it still holds request ``call`` (QUERY); answers to earlier ones skipped."""
    gateway.send_multipart(protocol.Query(call).frames())
    while True:
        assert gateway.poll(TIMEOUT_MS), "no answer"
        message = protocol.receive(gateway.recv_multipart(), Link.DISPATCHER_TO_GATEWAY)
        if isinstance(message, protocol.QueryReply) and message.id == call:
            return message.known


def next_cancel(worker: zmq.Socket[Any]) -> int:
    """Return the key of the next CANCEL ``worker`` gets (heartbeats skipped)."""
    end = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < end:
        if worker.poll(20):
            message = protocol.receive(worker.recv_multipart(), Link.DISPATCHER_TO_WORKER)
            if isinstance(message, protocol.WorkerCancel):
                return message.seq
    raise AssertionError("no CANCEL arrived")


def next_request(
    worker: zmq.Socket[Any], heartbeat: bool = False
) -> tuple[protocol.ForwardedRequest, list[bytes]]:
    """Return the next REQUEST ``worker`` gets, answering heartbeats with heartbeats if asked."""
    end = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < end:
        if heartbeat:
            worker.send_multipart(protocol.Heartbeat().frames())
        if not worker.poll(20):
            continue
        frames = worker.recv_multipart()
        message = protocol.receive(frames, Link.DISPATCHER_TO_WORKER)
        if isinstance(message, protocol.ForwardedRequest):
            return message, frames
    raise AssertionError("no request arrived")


def answer(worker: zmq.Socket[Any], seq: int) -> None:
    worker.send_multipart(protocol.WorkerReply(seq, [(Y, Y_BYTES)], {"batch_size": 1}).frames())


def reply_to(gateway: zmq.Socket[Any]) -> tuple[str, str]:
    """Return the id and the worker of the next REPLY ``gateway`` gets."""
    while True:
        assert gateway.poll(TIMEOUT_MS), "no answer"
        message = protocol.receive(gateway.recv_multipart(), Link.DISPATCHER_TO_GATEWAY)
        assert not isinstance(message, protocol.Error), message
        if isinstance(message, protocol.Reply):
            assert message.version == "1" and [meta for meta, _ in message.outputs] == [Y]
            return message.id, message.worker


def route_one(peers: Peers) -> None:
    """Send a request; check that it reaches the worker and that the worker's answer reaches the gateway."""
    late = protocol.Request("late", "m", [(X, X_BYTES)], deadline=time.time() + 30)
    peers.gateway.send_multipart(late.frames())
    forwarded, _ = peers.to_worker()
    peers.worker.send_multipart(protocol.WorkerReply(forwarded.seq, [(Y, Y_BYTES)], {}).frames())
    reply, _ = peers.to_gateway()
    assert isinstance(reply, protocol.Reply) and reply.id == "late"


@pytest.mark.parametrize("linger", [60.0, 0.0])
def test_a_stopping_dispatcher_routes_what_comes_within_its_linger_then_stops(linger: float) -> None:
    """``restart all``: a stopping gateway still takes requests for a moment (kept-alive connections); a
    dispatcher that stopped as soon as it was idle left them unanswered. It routes for ``stop_linger`` at
    least, then stops once idle."""
    context: zmq.Context[Any] = zmq.Context()
    config = {"heartbeat_interval": 0.2, "startup_grace": 0, "stop_grace": 120.0, "stop_linger": linger}
    try:
        with serving(context, **config) as dispatcher:
            worker = connect(context, dispatcher.config.backend, b"w0-socket")
            gateway = connect(context, dispatcher.config.frontend)
            try:
                register(dispatcher, worker, "w0")
                dispatcher.request_stop()  # as its SIGTERM, with nothing in flight
                if linger == 0.0:  # idle, with no linger: it stops at once, as before
                    end = time.monotonic() + 10
                    while not dispatcher.stopping:
                        assert time.monotonic() < end, "the idle dispatcher did not stop"
                        time.sleep(0.01)
                else:
                    route_one(Peers(dispatcher, gateway, worker))
                    assert not dispatcher.stopping
            finally:
                for socket in (gateway, worker):
                    socket.close(linger=0)
    finally:
        context.term()


def test_a_stopping_dispatcher_lingers_only_while_a_gateway_is_connected() -> None:
    """Over ipc the dispatcher counts the gateways connected: once the last has gone (``torchgate serve``
    stops the gateway first), nothing more can come, and an idle dispatcher stops without waiting its
    linger."""
    context: zmq.Context[Any] = zmq.Context()
    try:
        with short_dir() as run:
            config = DispatcherConfig(
                f"ipc://{run}/f", f"ipc://{run}/b", 0.2, startup_grace=0, stop_grace=120.0, stop_linger=60.0
            )
            dispatcher = Dispatcher(config, context)
            thread = threading.Thread(target=dispatcher.serve, daemon=True)
            thread.start()
            worker = connect(context, config.backend, b"w0-socket")
            gateway = connect(context, config.frontend)
            try:
                register(dispatcher, worker, "w0")
                dispatcher.request_stop()
                route_one(Peers(dispatcher, gateway, worker))
                assert not dispatcher.stopping
                gateway.close(linger=0)  # the last gateway goes
                thread.join(10)
                assert not thread.is_alive(), "the dispatcher waited out its linger with no gateway left"
            finally:
                for socket in (gateway, worker):
                    socket.close(linger=0)
                dispatcher.stopping = True
                thread.join(10)
                dispatcher.close()
    finally:
        context.term()
