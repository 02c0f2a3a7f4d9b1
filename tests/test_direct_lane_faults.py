"""The direct lane under kill -9, as a user runs torchgate: a request a worker took straight from a gateway
(the dispatcher never saw it) is still answered, right, when that worker is killed while computing it: the
gateway sees its connection drop and sends the request to the dispatcher, which gives it to the other
worker (as it does with a request of its own that a killed worker held)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness import Stack, short_dir, slow_body, wait_for, write_slow_model

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]

SLOTS = ("worker-cpu-0", "worker-cpu-1")


@pytest.fixture(scope="module")
def deployment() -> Iterator[Stack]:
    with short_dir() as base:
        repository = base / "repo"
        write_slow_model(repository, "slow", seconds=1.5, max_batch_size=1, max_queue_size=16)
        options = ("--model-repository", str(repository), "--gpus", "none", "--cpu-workers", "2")
        with Stack.at(base).serve(
            *options, "--gateway-processes", "1", "--gateway-threads", "2", "--worker-startsecs", "2"
        ) as d:
            d.wait_serving(timeout=120)
            yield d


def infer(d: Stack, value: float) -> list[float]:
    r = requests.post(f"{d.url}/v2/models/slow/infer", json=slow_body(1, value), timeout=60)
    assert r.status_code == 200, r.text
    data: list[float] = r.json()["outputs"][0]["data"]
    return data


def dispatched(d: Stack) -> int:
    count: int = d.status().dispatcher["requests"]
    return count


def lanes(d: Stack, slot: str) -> list[str]:
    folder = Path(d.settings.backend_endpoint[len("ipc://") :]).parent
    return sorted(p.name for p in folder.glob(f"direct-{slot}-*.sock"))


def computing(d: Stack) -> str | None:
    """The slot whose heartbeat says it computes a batch, if any."""
    return next((w["worker"] for w in d.status().workers if w.get("computing")), None)


def warm_up(d: Stack) -> None:
    """Send requests until one goes straight to a worker (the gateway learns of the workers' lanes from
    STATUS)."""
    deadline = time.monotonic() + 60
    while True:
        before = dispatched(d)
        assert infer(d, 1.0) == [2.0] * 4
        if dispatched(d) == before:
            return
        assert time.monotonic() < deadline, "no request ever went straight to a worker"


def test_kill_9_of_a_worker_computing_a_direct_request_loses_nothing(deployment: Stack) -> None:
    d = deployment
    d.wait_healthy(*SLOTS)
    warm_up(d)
    pids = d.pids()
    for slot in SLOTS:
        assert lanes(d, slot) == [f"direct-{slot}-{pids[slot]}.sock"]
    wait_for(lambda: computing(d) is None, timeout=30, what="the workers idle")  # no heartbeat from before
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        before = dispatched(d)
        answer = pool.submit(infer, d, 3.0)
        wait_for(lambda: computing(d) is not None, timeout=30, what="a worker computing")
        assert dispatched(d) == before, "the request crossed the dispatcher"
        killed = computing(d)
        assert killed is not None
        new_pid = d.kill_program(killed)
        assert answer.result(timeout=90) == [6.0] * 4  # sent to the dispatcher once the worker was gone
    assert dispatched(d) == before + 1
    d.wait_healthy(*SLOTS)
    # the killed process's socket file is gone once its slot runs again
    wait_for(lambda: lanes(d, killed) == [f"direct-{killed}-{new_pid}.sock"], timeout=30, what="one lane")
    assert infer(d, 4.0) == [8.0] * 4


def test_a_hung_worker_holding_a_direct_request_is_passed_over_once_out_of_rotation(
    deployment: Stack,
) -> None:
    """SIGSTOP (hung, not slow: its heartbeats stop): once the dispatcher takes the worker out of rotation the
    gateway sends the request to the dispatcher, and the other worker answers it."""
    d = deployment
    d.wait_healthy(*SLOTS)
    warm_up(d)
    wait_for(lambda: computing(d) is None, timeout=30, what="the workers idle")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        before = dispatched(d)
        answer = pool.submit(infer, d, 5.0)
        wait_for(lambda: computing(d) is not None, timeout=30, what="a worker computing")
        hung = computing(d)
        assert hung is not None and dispatched(d) == before
        pid = d.pids()[hung]
        os.kill(pid, signal.SIGSTOP)
        try:
            assert answer.result(timeout=90) == [10.0] * 4
            assert dispatched(d) == before + 1
        finally:
            os.kill(pid, signal.SIGCONT)
    d.wait_healthy(*SLOTS)  # back, registered again
    assert infer(d, 6.0) == [12.0] * 4
