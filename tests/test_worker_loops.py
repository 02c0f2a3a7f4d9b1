"""The worker's and the dispatcher's loops driven in-process over inproc:// (no subprocesses)."""

from __future__ import annotations

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

from harness import write_slow_model
from harness.loops import serving_threads
from inference_worker import protocol
from inference_worker.dispatcher import Dispatcher
from inference_worker.protocol import ErrorCode, Link, TensorMeta
from inference_worker.status import ask_status
from inference_worker.worker import Worker
from inference_worker.worker.loop import wait_ms

INTERVAL, LIVENESS = 0.05, 10  # a peer silent for 0.5 s is gone
BATCH_SECONDS = 1.0  # each batch of the slow model: twice the liveness


@dataclass
class Loops:
    """A dispatcher and one worker, each serving on a thread of this process, and a gateway-like socket."""

    context: zmq.Context[Any]
    dispatcher: Dispatcher
    worker: Worker
    threads: list[threading.Thread]
    client: zmq.Socket[Any]

    def send(self, value: float, deadline: float | None = None) -> str:
        call_id = uuid.uuid4().hex
        x = np.full((1, 4), value, np.float32)
        request = protocol.Request(call_id, "slow", [(TensorMeta("x", "FP32", (1, 4)), x)], deadline=deadline)
        self.client.send_multipart(request.frames())
        return call_id

    def answers(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        found: dict[str, Any] = {}
        end = time.monotonic() + timeout
        while len(found) < count and (left := end - time.monotonic()) > 0:
            if self.client.poll(int(left * 1000) + 1):
                message = protocol.receive(self.client.recv_multipart(), Link.DISPATCHER_TO_GATEWAY)
                found[message.id] = message
        assert len(found) == count, f"{len(found)} of {count} answers in {timeout}s"
        return found

    def wait_computing(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the worker's heartbeat says it computes a batch; return what it says."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            (entry,) = self.status().workers
            if entry.get("computing"):
                return dict(entry["computing"])
            time.sleep(0.005)
        raise AssertionError("the worker never said it was computing")

    def status(self) -> protocol.StatusReply:
        reply = ask_status(self.client, 10.0)
        assert reply is not None
        return reply


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    write_slow_model(tmp_path, "slow", seconds=BATCH_SECONDS, max_batch_size=4, max_queue_size=16)
    context: zmq.Context[Any] = zmq.Context()
    name = uuid.uuid4().hex
    frontend, backend = f"inproc://{name}-f", f"inproc://{name}-b"
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    try:
        with serving_threads(context, tmp_path, frontend, backend, INTERVAL, LIVENESS) as served:
            client.connect(frontend)
            yield Loops(context, served.dispatcher, served.worker, served.threads, client)
    finally:
        client.close(linger=0)
        context.term()


def test_the_loop_waits_for_a_timer_rounded_up_and_for_a_batch_rounded_down() -> None:
    assert wait_ms(10.0, 10.0004) == 1  # a heartbeat 0.4 ms away: one wait, not a spin of waits of 0 ms
    assert wait_ms(10.0, 10.002) == 2
    assert wait_ms(10.0, 10.25) == 250
    assert wait_ms(10.0, 9.0) == 0  # due already
    assert wait_ms(10.0, 10.5, batch_due=10.0004) == 0  # a batch due in 0.4 ms must not wait 1 ms
    assert wait_ms(10.0, 10.5, batch_due=10.0123) == 12
    assert wait_ms(10.0, 10.002, batch_due=10.9) == 2  # whichever comes first
    assert wait_ms(10.0, 10.5, batch_due=9.0) == 0


def test_heartbeats_flow_while_a_batch_computes_longer_than_the_liveness(loops: Loops) -> None:
    ids = [loops.send(v) for v in (1.0, 2.0, 3.0)]
    computing = loops.wait_computing()  # the heartbeat says what is computing
    answers = loops.answers(3)
    assert computing["model"] == "slow" and computing["batch"] >= 1 and computing["since"] > 0
    for call_id, value in zip(ids, (1.0, 2.0, 3.0), strict=True):
        reply = answers[call_id]
        assert isinstance(reply, protocol.Reply) and reply.worker == "w0"
        assert np.frombuffer(reply.outputs[0][1], np.float32).tolist() == [2 * value] * 4
    counters = loops.status().dispatcher
    assert counters["resent"] == 0 and counters["lost"] == 0  # never taken for dead
    assert loops.status().ready_workers() == {"w0"}


def test_a_bad_request_fails_alone_in_its_batch(loops: Loops) -> None:
    first = loops.send(1.0)  # computes while the next three queue up into one batch
    good, bad, other = loops.send(2.0), loops.send(-1.0), loops.send(3.0)
    answers = loops.answers(4)
    assert isinstance(answers[first], protocol.Reply)
    assert isinstance(answers[good], protocol.Reply) and isinstance(answers[other], protocol.Reply)
    error = answers[bad]
    assert (
        isinstance(error, protocol.Error) and error.code is ErrorCode.INTERNAL and "negative" in error.message
    )


def test_a_request_past_its_deadline_is_never_computed(loops: Loops) -> None:
    first = loops.send(1.0)
    loops.wait_computing()
    late = loops.send(2.0, deadline=time.time() + 0.1)  # waits behind a 1 s batch
    answers = loops.answers(2)
    assert isinstance(answers[first], protocol.Reply)
    error = answers[late]
    assert isinstance(error, protocol.Error) and error.code is ErrorCode.DEADLINE_EXCEEDED
    end = time.monotonic() + 10
    while not (rows := [r for r in loops.status().stats if r["model"] == "slow"]) and time.monotonic() < end:
        time.sleep(0.01)  # counters come with the next heartbeat
    assert rows and rows[0]["success"] == 1 and rows[0]["inference_count"] == 1  # the late one never ran


def test_drain_finishes_queued_work_then_leaves(loops: Loops) -> None:
    ids = [loops.send(v) for v in (1.0, 2.0, 3.0, 4.0, 5.0)]
    while not any(w.get("in_flight") for w in loops.status().workers):
        time.sleep(0.01)
    loops.worker.stopping = 1
    answers = loops.answers(5)
    assert all(isinstance(answers[i], protocol.Reply) for i in ids), answers
    loops.threads[1].join(30)
    assert not loops.threads[1].is_alive()  # serve() returned: drained
    end = time.monotonic() + 10
    while loops.status().workers and time.monotonic() < end:  # DISCONNECT reached the dispatcher
        time.sleep(0.01)
    assert loops.status().workers == []
