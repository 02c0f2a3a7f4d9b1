"""A real dispatcher and real CPU workers: correctness under concurrency, faults, scaling and restarts."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import (
    DEFAULT_REPOSITORY,
    Answer,
    Client,
    Processes,
    Stack,
    assert_all_match,
    outputs,
    send_digits,
    slow_repository,
    wait_for,
)
from inference_worker import protocol
from inference_worker.protocol import ErrorCode

pytestmark = pytest.mark.processes


@pytest.fixture
def backend(processes: Processes, tmp_path: Path) -> Iterator[Stack]:
    """A dispatcher alone; each test starts its workers."""
    backend = Stack(processes, tmp_path / "run")
    backend.start_dispatcher()
    try:
        yield backend
    finally:
        backend.stop()


def load(
    backend: Stack, requests: int, threads: int = 8, during: threading.Event | None = None
) -> list[tuple[np.ndarray, Answer]]:
    return send_digits(backend.context, backend.frontend, requests, threads, during=during)


def test_concurrent_requests_give_exactly_what_the_model_gives(
    backend: Stack, digits_model: torch.nn.Module
) -> None:
    backend.start_worker("w0")
    backend.start_worker("w1")
    pairs = load(backend, requests=400, threads=8)
    assert_all_match(pairs, digits_model)
    served_by = {m.worker for _, m in pairs if isinstance(m, protocol.Reply)}
    assert served_by == {"w0", "w1"}
    batch_sizes = [m.stats["batch_size"] for _, m in pairs if isinstance(m, protocol.Reply)]
    assert max(batch_sizes) > 3  # requests of at most 3 samples were batched together


def test_kill_9_a_worker_in_flight_and_every_request_completes(
    backend: Stack, digits_model: torch.nn.Module
) -> None:
    backend.start_worker("w0")
    victim = backend.start_worker("w1")
    started = threading.Event()

    def act() -> None:
        if started.wait(60):
            os.kill(victim.pid, signal.SIGKILL)

    killer = threading.Thread(target=act)
    killer.start()
    pairs = load(backend, requests=600, threads=8, during=started)
    killer.join(timeout=60)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert_all_match(pairs, digits_model)  # every one a REPLY, none lost
    wait_for(
        lambda: backend.ready_workers() == {"w0"},
        timeout=30,
        what="w1 out of rotation",
    )


def test_a_third_worker_started_while_running_receives_work(
    backend: Stack, digits_model: torch.nn.Module
) -> None:
    backend.start_worker("w0")
    backend.start_worker("w1")
    load(backend, requests=50)
    backend.start_worker("w2")
    pairs = load(backend, requests=300, threads=8)
    assert "w2" in {m.worker for _, m in pairs if isinstance(m, protocol.Reply)}
    assert_all_match(pairs, digits_model)


def test_dispatcher_restart_and_service_comes_back_without_help(
    backend: Stack, digits_model: torch.nn.Module
) -> None:
    backend.start_worker("w0")
    backend.start_worker("w1")
    load(backend, requests=20)
    backend.started["dispatcher"].kill()
    backend.started["dispatcher"].wait(timeout=10)
    backend.start_dispatcher()
    wait_for(
        lambda: backend.ready_workers() == {"w0", "w1"},
        timeout=30,
        what="workers re-registered with the new dispatcher",
    )
    assert_all_match(load(backend, requests=100), digits_model)


def test_sigterm_drains_a_worker_with_no_failed_requests(
    backend: Stack, digits_model: torch.nn.Module
) -> None:
    backend.start_worker("w0")
    leaving = backend.start_worker("w1")
    started = threading.Event()

    def act() -> None:
        if started.wait(60):
            leaving.send_signal(signal.SIGTERM)

    stopper = threading.Thread(target=act)
    stopper.start()
    pairs = load(backend, requests=400, threads=8, during=started)
    stopper.join(timeout=60)
    assert leaving.wait(timeout=30) == 0
    assert_all_match(pairs, digits_model)
    assert "drained" in backend.processes.log("w1")
    assert backend.ready_workers() == {"w0"}


def test_a_worker_that_cannot_load_exits_non_zero_and_never_serves(backend: Stack, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "digits" / "1").mkdir(parents=True)
    (broken / "digits" / "config.toml").write_text(
        (DEFAULT_REPOSITORY / "digits" / "config.toml").read_text()
    )
    (broken / "digits" / "1" / "model.pt2").write_bytes(b"not a model")
    proc = backend.start_worker("bad", wait=False, repository=broken)
    assert proc.wait(timeout=120) != 0
    log = backend.processes.log("bad")
    assert "cannot load" in log and "model.pt2" in log and "READY" not in log

    # It said why before leaving, so readiness can name the reason (the dispatcher may read what it sent a
    # moment after the process is gone).
    def told() -> protocol.StatusReply | None:
        status = backend.status()
        return status if status is not None and status.unavailable else None

    status = wait_for(told, timeout=10, what="the dispatcher to hear why the worker left")
    assert status.workers == []
    [entry] = status.unavailable
    assert entry["model"] == "digits" and entry["worker"] == "bad" and "model.pt2" in entry["reason"]


def test_no_worker_answers_unavailable_once_the_startup_grace_is_over(backend: Stack) -> None:
    backend.started["dispatcher"].kill()
    backend.started["dispatcher"].wait(timeout=10)
    backend.start_dispatcher("--startup-grace", "0")
    client = Client(backend.context, backend.frontend)
    try:
        reply = client.infer("digits", {"input": np.zeros((1, 64), np.float32)}, timeout=30)
    finally:
        client.close()
    assert isinstance(reply, protocol.Error) and reply.code == ErrorCode.UNAVAILABLE


def test_requests_sent_before_workers_register_wait_for_them_during_the_grace(backend: Stack) -> None:
    backend.started["dispatcher"].kill()
    backend.started["dispatcher"].wait(timeout=10)
    backend.start_dispatcher("--startup-grace", "120")  # longer than any worker start on a busy machine
    client = Client(backend.context, backend.frontend)
    try:
        early = client.send("digits", {"input": np.zeros((1, 64), np.float32)}, timeout=120)
        backend.start_worker("w0", wait=False)
        reply = client.receive(early, timeout=150)
    finally:
        client.close()
    assert isinstance(reply, protocol.Reply) and reply.worker == "w0"


def test_full_queue_unavailable_deadline_and_bad_request_fails_alone(backend: Stack, tmp_path: Path) -> None:
    backend.repository = slow_repository(tmp_path / "repo", seconds=0.3, max_queue_size=2, max_batch_size=4)
    backend.start_worker("w0")  # capacity 8 in flight, then 2 queued
    client = Client(backend.context, backend.frontend)
    try:
        good = np.ones((1, 4), np.float32)
        ids = [client.send("slow", {"x": good * (i + 1)}) for i in range(10)]
        rejected = client.send("slow", {"x": good})
        assert client.receive(rejected, timeout=5).code == ErrorCode.UNAVAILABLE  # type: ignore[union-attr]  # queue full, at once
        for i, request_id in enumerate(ids):
            np.testing.assert_array_equal(outputs(client.receive(request_id))["y"], good * (i + 1) * 2)
        # stats arrive with heartbeats: wait until they count the ten, or the count below starts short
        before = 10
        wait_for(lambda: _successes(backend) == before, timeout=10, what="stats to count the first ten")
        # a past deadline is never computed
        late = client.infer("slow", {"x": good}, deadline=time.time() - 1)
        assert isinstance(late, protocol.Error) and late.code == ErrorCode.DEADLINE_EXCEEDED
        # in one batch, the request that makes the model fail fails alone
        ids = [
            client.send("slow", {"x": good}),
            client.send("slow", {"x": -good}),
            client.send("slow", {"x": good}),
        ]
        answers = [client.receive(i) for i in ids]
        assert [type(a) for a in answers] == [protocol.Reply, protocol.Error, protocol.Reply]
        error = answers[1]
        assert isinstance(error, protocol.Error)
        assert error.code == ErrorCode.INTERNAL and "ValueError" in error.message
        # an out-of-memory error fails only its own request, and the worker stays up
        ids = [
            client.send("slow", {"x": good}),
            client.send("slow", {"x": good * 1e38}),
            client.send("slow", {"x": good}),
        ]
        answers = [client.receive(i) for i in ids]
        assert [type(a) for a in answers] == [protocol.Reply, protocol.Error, protocol.Reply]
        assert answers[1].code == ErrorCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
        assert backend.started["w0"].poll() is None
        wait_for(
            lambda: _successes(backend) == before + 4, timeout=10, what="stats to count four more successes"
        )
    finally:
        client.close()


def _successes(backend: Stack) -> int:
    status = backend.status()
    return sum(row.get("success", 0) for row in (status.stats if status else []))
