"""The gateway's DispatcherClient against a real dispatcher and real CPU workers.

Threads, fork, stale answers, deadlines, a dispatcher restart and a dispatcher that is not there.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gateway.client import DispatcherClient, InferReply
from gateway.codec import Tensor
from gateway.errors import Cancelled, DeadlineExceeded, Unavailable, http_status
from harness import Stack, slow_repository, wait_for, wait_settled
from inference_worker.errors import CodedError

SLOW_SECONDS = 0.6


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A dispatcher and one worker serving `slow` (doubles FP32 [-1, 4] after SLOW_SECONDS)."""
    root = tmp_path_factory.mktemp("client")
    repository = slow_repository(root / "repo", seconds=SLOW_SECONDS, max_queue_size=64, max_batch_size=8)
    with Stack.at(root, repository) as backend:
        backend.start_dispatcher()
        backend.start_worker("w0")
        yield backend


@pytest.fixture
def client(backend: Stack) -> Iterator[DispatcherClient]:
    client = DispatcherClient(
        backend.frontend, status_ttl=0.2, status_timeout=1.0, poll_interval=0.2, unresponsive_after=5.0
    )
    yield client
    client.close()


def x_tensor(values: list[float]) -> Tensor:
    x = np.array([values], dtype=np.float32)
    return Tensor("x", "FP32", x.shape, x.tobytes())


def doubled(reply: InferReply) -> list[float]:
    (y,) = reply.outputs
    assert y.name == "y" and y.datatype == "FP32"
    return np.frombuffer(y.data, np.float32).reshape(y.shape)[0].tolist()


@pytest.mark.processes
def test_infer_and_status(client: DispatcherClient) -> None:
    reply = client.infer("slow", None, [x_tensor([1, 2, 3, 4])], [], time.time() + 30, "r1")
    assert doubled(reply) == [2, 4, 6, 8] and reply.version == "1" and reply.worker == "w0"
    status = client.status()
    assert status.models["slow"]["1"]["ready"] == 1 and status.ready_count("slow") == 1
    assert client.status(max_age=3600) is status  # reused while young enough
    assert client.status(max_age=0) is not status  # asked again once too old


@pytest.mark.processes
def test_many_threads_each_get_their_own_answer(client: DispatcherClient) -> None:
    def one(i: int) -> list[float]:
        return doubled(client.infer("slow", None, [x_tensor([i, i + 1, i + 2, i + 3])], [], time.time() + 60))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    assert results == [[2 * i, 2 * i + 2, 2 * i + 4, 2 * i + 6] for i in range(24)]


@pytest.mark.processes
def test_a_late_answer_is_never_taken_for_the_next_request(client: DispatcherClient) -> None:
    with pytest.raises(DeadlineExceeded):
        client.infer("slow", None, [x_tensor([1, 1, 1, 1])], [], time.time() + SLOW_SECONDS / 4)
    # the same thread (and socket) asks again while the late answer to [1, 1, 1, 1] is still coming
    assert doubled(client.infer("slow", None, [x_tensor([5, 6, 7, 8])], [], time.time() + 30)) == [
        10,
        12,
        14,
        16,
    ]


@pytest.mark.processes
def test_a_request_whose_client_has_gone_is_never_sent(client: DispatcherClient) -> None:
    def computed() -> int:  # samples of `slow` the worker has computed, as its heartbeats report them
        stats = client.status(max_age=0).stats
        return sum(int(e.get("inference_count", 0)) for e in stats if e.get("model") == "slow")

    def read() -> tuple[bool, int]:  # an earlier test's late answer may still be on its way to the counters
        busy = any(w.get("in_flight") for w in client.status(max_age=0).workers)
        return busy, computed()

    before = wait_settled(read, timeout=30, what="the worker's counters")  # 0.5 s apart: heartbeats are 0.2
    with pytest.raises(Cancelled, match="went away before it was sent"):
        client.infer("slow", None, [x_tensor([1, 2, 3, 4])], [], time.time() + 30, "r", gone=lambda: True)
    reply = client.infer("slow", None, [x_tensor([5, 6, 7, 8])], [], time.time() + 30, gone=lambda: False)
    assert doubled(reply) == [10, 12, 14, 16]
    # had the first been sent, the worker would have computed it before the second
    wait_for(lambda: computed() > before, timeout=30, what="the worker to report the second request")
    assert computed() == before + 1


@pytest.mark.processes
def test_errors_come_back_with_their_code(client: DispatcherClient) -> None:
    with pytest.raises(CodedError) as info:
        client.infer("slow", "9", [x_tensor([1, 2, 3, 4])], [], time.time() + 30)
    assert http_status(info.value.code) == 503  # no worker serves version 9
    with pytest.raises(CodedError) as info:
        client.infer("slow", None, [x_tensor([-1, 2, 3, 4])], [], time.time() + 30)
    assert http_status(info.value.code) in (400, 500) and "negative input" in info.value.message
    assert "Traceback" not in info.value.message and "\n" not in info.value.message


def _infer_in_child(client: DispatcherClient, queue: multiprocessing.Queue) -> None:
    try:
        queue.put(doubled(client.infer("slow", None, [x_tensor([3, 3, 3, 3])], [], time.time() + 30)))
    except Exception as exc:  # the parent reports it
        queue.put(repr(exc))


@pytest.mark.processes
def test_a_forked_child_uses_its_own_socket(client: DispatcherClient) -> None:
    assert doubled(client.infer("slow", None, [x_tensor([1, 2, 3, 4])], [], time.time() + 30)) == [2, 4, 6, 8]
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    child = fork.Process(target=_infer_in_child, args=(client, queue))
    child.start()
    try:
        assert queue.get(timeout=60) == [6, 6, 6, 6]
    finally:
        child.join(timeout=30)
        queue.close()
        queue.join_thread()
    assert child.exitcode == 0
    assert doubled(client.infer("slow", None, [x_tensor([4, 3, 2, 1])], [], time.time() + 30)) == [8, 6, 4, 2]


def test_nobody_listening_is_a_quick_503(tmp_path: Path) -> None:
    client = DispatcherClient(
        f"ipc://{tmp_path}/nobody.sock", status_timeout=0.3, poll_interval=0.1, unresponsive_after=0.5
    )
    try:
        with pytest.raises(Unavailable):
            client.status()
        with pytest.raises(Unavailable):
            client.status()  # the failure is cached for the TTL too
        with pytest.raises(Unavailable, match="has not answered"):
            client.infer("slow", None, [x_tensor([1, 2, 3, 4])], [], time.time() + 60)
    finally:
        client.close()


@pytest.mark.processes
def test_a_request_lost_in_a_dispatcher_restart_is_sent_again(
    backend: Stack, client: DispatcherClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Kill -9 the dispatcher while a request computes; the new one does not know it, so it is sent again."""
    caplog.set_level(logging.INFO, logger="torchgate.gateway")
    client.direct = False  # through the dispatcher (a request on the direct lane never meets it)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.infer, "slow", None, [x_tensor([9, 8, 7, 6])], [], time.time() + 60)
        wait_for(
            lambda: any(w["in_flight"] for w in client.status().workers),
            timeout=30,
            interval=0.01,
            what="the request in flight on the worker",
        )
        backend.started["dispatcher"].kill()
        backend.started["dispatcher"].wait(timeout=10)
        backend.start_dispatcher()
        assert doubled(future.result(timeout=90)) == [18, 16, 14, 12]  # sent again once w0 re-registered
    assert "unknown to the dispatcher; sending it again" in caplog.text
    wait_for(
        lambda: backend.ready_workers() == {"w0"},
        timeout=30,
        what="the worker re-registered",
    )
    # service is back without help, on the same sockets
    assert doubled(client.infer("slow", None, [x_tensor([1, 2, 3, 4])], [], time.time() + 30)) == [2, 4, 6, 8]
