"""The worker's session against a bare ROUTER standing in for the dispatcher, over inproc:// (no models)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from inference_worker import protocol
from inference_worker.protocol import Link
from inference_worker.worker.config import WorkerConfig
from inference_worker.worker.session import Session


class FakeDispatcher:
    """A ROUTER socket that reads what the worker sends, with a timeout, and answers as the dispatcher
    would."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting session keeps its identity
        self.socket.bind(endpoint)

    def receive(self, timeout_ms: int = 5000) -> tuple[bytes, Any]:
        assert self.socket.poll(timeout_ms), "the worker sent nothing"
        identity, *frames = self.socket.recv_multipart()
        return identity, protocol.receive(frames, Link.WORKER_TO_DISPATCHER)

    def send(self, identity: bytes, message: Any) -> None:
        self.socket.send_multipart([identity, *message.frames()])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Session, FakeDispatcher]]:
    context: zmq.Context[Any] = zmq.Context()
    endpoint = f"inproc://{uuid.uuid4().hex}"
    dispatcher = FakeDispatcher(context, endpoint)
    config = WorkerConfig(tmp_path, endpoint, "w0", heartbeat_interval=0.01, heartbeat_liveness=3)
    beats = iter(range(1, 1_000_000))
    session = Session(
        config,
        context,
        "w0/abc",
        lambda: protocol.Ready("w0", "abc", 2, [], 1, "cpu"),
        lambda: protocol.Heartbeat("abc", [], computing=protocol.Computing(next(beats), 1.0)),
    )
    try:
        yield session, dispatcher
    finally:
        session.close(linger=0)
        dispatcher.socket.close(linger=0)
        context.term()


def test_connect_announces_ready_and_requests_come_back_to_the_caller(
    pair: tuple[Session, FakeDispatcher],
) -> None:
    session, dispatcher = pair
    session.connect()
    identity, ready = dispatcher.receive()
    assert identity == b"w0/abc" and isinstance(ready, protocol.Ready) and ready.capacity == 2
    request = protocol.ForwardedRequest(5, "m", "1", [])
    dispatcher.send(identity, request)
    dispatcher.send(identity, protocol.Heartbeat())
    assert session.socket is not None and session.socket.poll(5000)
    received: list[protocol.ForwardedRequest | protocol.WorkerCancel | protocol.WorkerControl] = []
    while len(received) < 1:
        session.socket.poll(5000)
        received += session.receive()
    assert [r.seq for r in received if isinstance(r, protocol.ForwardedRequest)] == [5] and len(received) == 1


def test_every_waiting_request_is_read_in_one_go(pair: tuple[Session, FakeDispatcher]) -> None:
    session, dispatcher = pair
    session.connect()
    identity, _ = dispatcher.receive()
    for seq in range(5):
        dispatcher.send(identity, protocol.ForwardedRequest(seq, "m", "1", []))
    dispatcher.send(identity, protocol.Drain())  # the last one sent: once it is read, all were
    assert session.socket is not None
    received: list[protocol.ForwardedRequest | protocol.WorkerCancel | protocol.WorkerControl] = []
    end = time.monotonic() + 5
    while not session.drain_acked and time.monotonic() < end:
        session.socket.poll(100)
        received += session.receive()
    assert [r.seq for r in received if isinstance(r, protocol.ForwardedRequest)] == [0, 1, 2, 3, 4]
    assert session.receive() == []  # nothing left: asking again reads nothing and does not block


def test_a_waiting_message_proves_the_dispatcher_alive(pair: tuple[Session, FakeDispatcher]) -> None:
    session, dispatcher = pair
    session.connect()
    identity, _ = dispatcher.receive()
    dispatcher.send(identity, protocol.Heartbeat())
    assert session.socket is not None and session.socket.poll(5000)
    first_socket = session.socket
    session.keep_alive(session.last_seen + 1.0)  # silent for longer than 3 x 0.01 s, but a message waits
    assert session.socket is first_socket


def test_disconnect_from_the_dispatcher_means_announce_again(pair: tuple[Session, FakeDispatcher]) -> None:
    session, dispatcher = pair
    session.connect()
    identity, _ = dispatcher.receive()
    dispatcher.send(identity, protocol.Disconnect("unknown worker"))
    assert session.socket is not None and session.socket.poll(5000)
    assert session.receive() == []
    assert isinstance(dispatcher.receive()[1], protocol.Ready)


def test_heartbeats_carry_the_applications_state_and_silence_means_reconnect(
    pair: tuple[Session, FakeDispatcher],
) -> None:
    session, dispatcher = pair
    session.connect()
    dispatcher.receive()
    session.keep_alive(session.last_seen)  # due at once
    _, beat = dispatcher.receive()
    assert isinstance(beat, protocol.Heartbeat) and beat.computing is not None and beat.computing.batch == 1
    first_socket = session.socket
    session.keep_alive(session.last_seen + 1.0)  # silent for longer than 3 x 0.01 s
    assert session.socket is not first_socket
    while not isinstance(dispatcher.receive()[1], protocol.Ready):  # READY again, on the new socket
        pass


def test_drain_waits_for_the_acknowledgement_then_says_goodbye(pair: tuple[Session, FakeDispatcher]) -> None:
    session, dispatcher = pair
    session.connect()
    identity, _ = dispatcher.receive()
    session.start_drain(session.last_seen)
    assert isinstance(dispatcher.receive()[1], protocol.Drain)
    assert not session.may_leave(session.drain_started)  # neither acknowledged nor timed out
    dispatcher.send(identity, protocol.Drain())
    assert session.socket is not None and session.socket.poll(5000)
    session.receive()
    assert session.drain_acked and session.may_leave(session.drain_started)
    session.leave()
    _, goodbye = dispatcher.receive()
    assert isinstance(goodbye, protocol.Disconnect) and goodbye.reason == "drained"
