"""The direct lane: a gateway with no other request in flight sends it straight to a worker on its host.

The rules without I/O (which version and which workers a STATUS offers, where a lane's socket lives), then a
dispatcher and a worker on threads of this process over ipc with a raw socket on the lane (what the worker
takes, what it declines), and the gateway's client against them. Killing a worker while it computes a direct
request is in tests/test_direct_lane_faults.py, with real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from gateway.client import DispatcherClient
from gateway.codec import Tensor
from gateway.direct import DirectLink, LinkDown
from harness import short_dir, wait_for, write_slow_model
from harness.loops import serving_threads
from inference_worker import direct_lane, protocol
from inference_worker.dispatcher import Dispatcher
from inference_worker.protocol import ErrorCode, Link, TensorMeta, stream
from inference_worker.status import ask_status
from inference_worker.worker import Worker

INTERVAL, LIVENESS = 0.05, 40
BATCH_SECONDS = 1.0  # each batch of the slow model


def status_of(models: dict[str, Any], workers: list[dict[str, Any]]) -> protocol.StatusReply:
    return protocol.StatusReply("s", models, workers, [], {}, [], [])


def test_a_lane_runs_the_version_the_dispatcher_would_on_a_ready_worker_that_serves_it() -> None:
    models = {"m": {"2": {"ready": 1}, "10": {"ready": 1}, "11": {"ready": 0}}}
    workers = [
        {"worker": "a", "state": "READY", "models": ["m/10", "m/2"], "direct": "ipc:///r/a"},
        {"worker": "b", "state": "READY", "models": ["m/2"], "direct": "ipc:///r/b"},
        {"worker": "c", "state": "DRAINING", "models": ["m/10"], "direct": "ipc:///r/c"},
        {"worker": "d", "state": "READY", "models": ["m/10"]},  # on another host: no lane
    ]
    status = status_of(models, workers)
    assert status.direct_lanes("m", None) == ("10", ["ipc:///r/a"])  # the highest number, as the dispatcher
    assert status.direct_lanes("m", "2") == ("2", ["ipc:///r/a", "ipc:///r/b"])
    assert status.direct_lanes("m", "11") is None  # no ready worker serves it
    assert status.direct_lanes("m", "3") is None
    assert status.direct_lanes("other", None) is None
    assert status_of({"m": {"1": {"ready": 1}}}, []).direct_lanes("m", None) == ("1", [])


def test_a_lane_lives_beside_the_dispatcher_socket_and_only_on_its_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert direct_lane.endpoint_for("ipc:///run/tg/sockets/backend.sock", "worker-cpu-0", 42) == (
        "unix:///run/tg/sockets/direct-worker-cpu-0-42.sock"
    )
    assert (
        direct_lane.endpoint_for("ipc:///r/backend.sock", "a b/../c", 7) == "unix:///r/direct-a_b_.._c-7.sock"
    )
    assert direct_lane.path_of("unix:///r/direct-w-7.sock") == "/r/direct-w-7.sock"
    with pytest.raises(ValueError):
        direct_lane.path_of("ipc:///r/direct-w-7.sock")
    assert direct_lane.endpoint_for("tcp://10.0.0.1:5556", "w", 1) is None
    assert direct_lane.endpoint_for("ipc:///" + "x" * 120 + "/backend.sock", "w", 1) is None
    assert direct_lane.enabled("ipc:///r/frontend.sock")
    assert not direct_lane.enabled("tcp://10.0.0.1:5555")
    monkeypatch.setenv(direct_lane.DIRECT_ENV, "0")
    assert not direct_lane.enabled("ipc:///r/frontend.sock")


def test_socket_files_of_dead_processes_of_the_slot_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    left = tmp_path / f"direct-w-{dead_pid}.sock"
    live = tmp_path / f"direct-w-{os.getpid()}.sock"
    other = tmp_path / f"direct-v-{dead_pid}.sock"
    for path in (left, live, other):
        path.touch()
    direct_lane.remove_stale(f"unix://{tmp_path}/direct-w-1.sock", "w")
    assert not left.exists() and live.exists() and other.exists()


# -- a dispatcher and a worker on threads, over ipc ---------------------------------------------------------


@dataclass
class Loops:
    context: zmq.Context[Any]
    dispatcher: Dispatcher
    worker: Worker
    threads: list[threading.Thread]
    frontend: str

    def status(self) -> protocol.StatusReply:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.frontend)
        try:
            reply = ask_status(socket, 10.0)
        finally:
            socket.close()
        assert reply is not None
        return reply

    def lane(self) -> DirectLink:
        (entry,) = self.status().workers
        return DirectLink(entry["direct"])

    def wait_direct_requests(self, count: int) -> None:
        wait_for(
            lambda: self.status().workers[0]["direct_requests"] == count,
            timeout=30,
            interval=0.005,
            what=f"the worker to say it holds {count} direct requests",
        )

    def wait_computing(self) -> None:
        wait_for(
            lambda: self.status().workers[0].get("computing"),
            timeout=30,
            interval=0.005,
            what="the worker to say it computes",
        )

    def computing(self, lane: DirectLink) -> protocol.Request:
        """Send a request down ``lane``; return it once the worker computes it (a 1 s batch)."""
        first = request(1.0)
        lane.send(first.frames(), 10)
        self.wait_computing()
        return first


def request(value: float, version: str | None = "1") -> protocol.Request:
    x = np.full((1, 4), value, np.float32)
    deadline = time.time() + 60
    return protocol.Request(
        uuid.uuid4().hex, "slow", [(TensorMeta("x", "FP32", (1, 4)), x)], version, deadline
    )


def answer(lane: DirectLink, timeout: float = 30.0) -> protocol.Reply | protocol.Error:
    frames = lane.receive(timeout)
    assert frames is not None, f"no answer within {timeout}s"
    message = protocol.receive(frames, Link.WORKER_TO_GATEWAY)
    assert isinstance(message, protocol.Reply | protocol.Error)
    return message


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    write_slow_model(tmp_path, "slow", seconds=BATCH_SECONDS, max_batch_size=1, max_queue_size=16)
    context: zmq.Context[Any] = zmq.Context()
    try:
        with short_dir() as run:
            frontend, backend = f"ipc://{run}/frontend.sock", f"ipc://{run}/backend.sock"
            with serving_threads(context, tmp_path, frontend, backend, INTERVAL, LIVENESS) as served:
                yield Loops(context, served.dispatcher, served.worker, served.threads, frontend)
    finally:
        context.destroy(linger=0)


def test_the_worker_takes_what_its_next_batch_would_and_declines_the_rest(loops: Loops) -> None:
    lane = loops.lane()
    first = loops.computing(lane)  # the next batch (of one) has room for one more
    loops.wait_direct_requests(1)  # STATUS counts the direct requests a worker holds
    second, third = request(2.0), request(3.0)
    lane.send(second.frames(), 10)
    lane.send(third.frames(), 10)
    unknown = request(4.0, version="9")
    lane.send(unknown.frames(), 10)
    answers = {a.id: a for a in (answer(lane) for _ in range(4))}
    for sent, value in ((first, 1.0), (second, 2.0)):
        reply = answers[sent.id]
        assert isinstance(reply, protocol.Reply), reply
        assert (reply.model, reply.version, reply.worker) == ("slow", "1", "w0")
        assert np.frombuffer(reply.outputs[0][1], np.float32).tolist() == [2 * value] * 4
        assert reply.stats["batch_size"] == 1
    declined = answers[third.id]
    assert isinstance(declined, protocol.Error) and declined.code is ErrorCode.DECLINED
    assert declined.message == "busy" and declined.worker == "w0"
    not_here = answers[unknown.id]
    assert isinstance(not_here, protocol.Error) and not_here.code is ErrorCode.DECLINED
    assert "not loaded here" in not_here.message
    assert loops.status().dispatcher["requests"] == 0  # none of them crossed the dispatcher
    loops.wait_direct_requests(0)
    lane.close()


def test_a_direct_request_whose_deadline_passes_in_the_worker_queue_is_504_uncomputed(loops: Loops) -> None:
    lane = loops.lane()
    first = loops.computing(lane)
    x = np.full((1, 4), 2.0, np.float32)
    short = protocol.Request(
        uuid.uuid4().hex, "slow", [(TensorMeta("x", "FP32", (1, 4)), x)], "1", time.time() + 0.2
    )
    lane.send(short.frames(), 10)  # taken (the next batch has room), then waits behind the 1 s batch
    answers = {a.id: a for a in (answer(lane) for _ in range(2))}
    expired = answers[short.id]
    assert isinstance(expired, protocol.Error) and expired.code is ErrorCode.DEADLINE_EXCEEDED, expired
    assert isinstance(answers[first.id], protocol.Reply)
    count = wait_for(  # the first batch's, once a heartbeat has carried the worker's counters at all
        lambda: sum(row["inference_count"] for row in loops.status().stats),
        timeout=10,
        what="the worker to report its batch",
    )
    assert count == 1, "the expired request was computed"
    lane.close()


def test_a_draining_worker_declines_and_finishes_what_it_took(loops: Loops) -> None:
    lane = loops.lane()
    first = loops.computing(lane)
    loops.worker.stopping = 1  # as SIGTERM: drain
    wait_for(  # the dispatcher sends it no more work
        lambda: loops.worker.session.drain_acked, timeout=10, interval=0.005, what="the drain acknowledged"
    )
    late = request(2.0)
    lane.send(late.frames(), 10)
    answers = {a.id: a for a in (answer(lane) for _ in range(2))}
    assert isinstance(answers[first.id], protocol.Reply)
    declined = answers[late.id]
    assert isinstance(declined, protocol.Error) and declined.code is ErrorCode.DECLINED
    assert declined.message == "draining"
    lane.close()


@pytest.mark.parametrize("sent", ["before the stop, unread", "while draining"])
def test_a_worker_draining_under_a_stopping_dispatcher_still_takes_direct_requests(
    loops: Loops, sent: str
) -> None:
    """``restart all``: the dispatcher, stopping too, acknowledges drains only when it stops; a direct request
    declined meanwhile would reach a dispatcher about to stop, so the worker runs it itself. One sent before
    the stop waits unread while the worker computes (its lane is not read then); the worker reads it once it
    drains, before the drain can be acknowledged."""
    routed = loops.context.socket(zmq.DEALER)
    routed.setsockopt(zmq.LINGER, 0)
    routed.connect(loops.frontend)
    lane = loops.lane()
    try:
        through = request(1.0)
        routed.send_multipart(through.frames())  # keeps the stopping dispatcher up until answered
        loops.wait_computing()
        late = request(2.0)
        if sent == "before the stop, unread":
            lane.send(late.frames(), 10)
        loops.dispatcher.request_stop()  # as its SIGTERM
        loops.worker.stopping = 1  # as the worker's
        wait_for(
            lambda: loops.worker.session.drain_started, timeout=10, interval=0.005, what="the worker draining"
        )
        if sent == "while draining":
            assert not loops.worker.session.drain_acked
            lane.send(late.frames(), 10)
        reply = answer(lane)
        assert isinstance(reply, protocol.Reply), reply
        assert reply.id == late.id
        assert np.frombuffer(reply.outputs[0][1], np.float32).tolist() == [4.0] * 4
        assert routed.poll(30_000), "the request through the dispatcher was not answered"
        answered = protocol.receive(routed.recv_multipart(), Link.DISPATCHER_TO_GATEWAY)
        assert isinstance(answered, protocol.Reply) and answered.id == through.id
    finally:
        routed.close()
        lane.close()


def test_a_malformed_direct_request_gets_an_error_and_the_lane_carries_on(loops: Loops) -> None:
    lane = loops.lane()
    lane.send(protocol.encode(protocol.Kind.REQUEST, {"id": "bad"}), 10)  # no model
    lane.send([b"\xff\x00garbage"], 10)  # no header at all: dropped
    good = request(5.0)
    lane.send(good.frames(), 10)
    answers = {a.id: a for a in (answer(lane) for _ in range(2))}
    bad = answers["bad"]
    assert isinstance(bad, protocol.Error) and bad.code is ErrorCode.INVALID_ARGUMENT
    assert isinstance(answers[good.id], protocol.Reply)
    lane.close()


def test_bytes_that_are_no_message_close_that_connection_only(loops: Loops) -> None:
    rogue, lane = loops.lane(), loops.lane()
    rogue.sock.sendall(stream.PREFIX.pack(4, 9) + b"\0" * 4)  # nine frames in four bytes
    with pytest.raises(LinkDown):
        while rogue.receive(30) is not None:
            pass
    good = request(6.0)
    lane.send(good.frames(), 10)
    reply = answer(lane)
    assert isinstance(reply, protocol.Reply) and reply.id == good.id
    rogue.close()
    lane.close()


def test_messages_on_a_stream_go_and_come_back_whole() -> None:
    frames: list[Any] = [b"header", memoryview(b"x" * 70_000), b"", np.arange(6, dtype=np.float32)]
    wire = b"".join(bytes(memoryview(b).cast("B")) for b in stream.pack(frames))
    received = bytearray(wire[:5])
    assert stream.take(received) is None and stream.needed(received) == 8
    received += wire[5:-1]
    assert stream.take(received) is None and stream.needed(received) == len(wire)
    received += wire[-1:] + wire[:3]  # the next message begins
    taken = stream.take(received)
    assert taken is not None and [bytes(f) for f in taken] == [bytes(memoryview(f).cast("B")) for f in frames]
    assert not taken[0].readonly  # tensors are viewed in place: a writable copy of its own
    assert received == wire[:3]
    for bad in (
        stream.PREFIX.pack(4, 9) + b"\0" * 4,
        stream.PREFIX.pack(8, 1) + (5).to_bytes(4, "little") * 2,
    ):
        with pytest.raises(protocol.ProtocolError):
            stream.take(bytearray(bad))


def test_the_gateway_client_goes_direct_when_its_link_is_up_and_through_the_dispatcher_when_off(
    loops: Loops,
) -> None:
    client = DispatcherClient(loops.frontend, poll_interval=0.2)
    x = np.full((1, 4), 3.0, np.float32)
    tensors = [Tensor("x", "FP32", (1, 4), memoryview(x.tobytes()))]

    def infer(version: str | None = None) -> list[float]:
        reply = client.infer("slow", version, tensors, [], time.time() + 60)
        assert (reply.model, reply.version, reply.worker) == ("slow", "1", "w0")
        return np.frombuffer(reply.outputs[0].data, np.float32).tolist()

    try:
        wait_for(  # once STATUS lists the lane
            lambda: client._direct_lane("slow", None), timeout=10, interval=0.01, what="the direct link up"
        )
        before = loops.status().dispatcher["requests"]
        assert infer() == [6.0] * 4
        assert infer("1") == [6.0] * 4
        assert loops.status().dispatcher["requests"] == before  # both went straight to the worker
        client.direct = False
        assert infer() == [6.0] * 4
        assert loops.status().dispatcher["requests"] == before + 1
    finally:
        client.close()
