"""Overload at ten times capacity: the excess gets a 503 with Retry-After at once, every queue stays bounded,
accepted requests keep a bounded latency and memory stays flat.

Each stage that can refuse is tried: the dispatcher's queue (a gateway with threads to spare), and the gateway's
own wait for a request thread (a gateway of 2 threads with its default queue of 4 x threads).

The model serves at most 40 requests/s (0.1 s per batch of 4); 40 closed-loop clients that ignore Retry-After
offer far more. The measurement is `benchmarks/overload.py`'s, whose full output is in docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from benchmarks.overload import CAPACITY_RPS, MAX_BATCH, QUEUE, Report, overload, percentile, start
from tests.conftest import Processes
from tests.stack import Stack

CLIENTS = 40
SECONDS = 6.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("overload")
    processes = Processes(root)
    try:
        yield start(root, processes, gateway_processes=2, gateway_threads=32)
    finally:
        processes.kill_all()


@pytest.fixture(scope="module")
def report(stack: Stack) -> Report:
    overload(stack, 8, 1.5)  # warm up, so first-use allocations do not count as growth
    return overload(stack, CLIENTS, SECONDS)


def test_the_excess_gets_503_with_retry_after_at_once(report: Report) -> None:
    ok, busy = report.by_status(200), report.by_status(503)
    assert len(ok) + len(busy) == len(report.outcomes), [
        o.describe() for o in report.outcomes if o.status not in (200, 503)
    ][:5]
    offered = len(report.outcomes) / report.seconds
    assert offered >= 10 * CAPACITY_RPS, f"offered only {offered:.0f} requests/s"
    assert ok, "nothing was accepted"
    assert len(busy) > len(ok), "the excess was not refused"
    assert all(o.headers.get("Retry-After") and '"error"' in o.body for o in busy)
    assert percentile([o.seconds for o in busy], 0.5) < 0.25, "a refusal is not immediate"


def test_queues_stay_bounded_and_accepted_latency_with_them(report: Report) -> None:
    assert report.max_queued <= QUEUE
    assert report.max_in_flight <= 2 * MAX_BATCH
    # Ahead of an accepted request: at most QUEUE queued + 2 * MAX_BATCH in flight, at CAPACITY_RPS.
    bound = (QUEUE + 2 * MAX_BATCH) / CAPACITY_RPS
    p99 = percentile([o.seconds for o in report.by_status(200)], 0.99)
    assert p99 < bound + 2.0, f"accepted p99 {p99:.2f}s, expected about {bound:.2f}s"
    assert len(report.by_status(200)) / report.seconds <= CAPACITY_RPS * 1.1


def test_memory_stays_flat_under_overload(report: Report) -> None:
    for name, before in report.rss_before.items():
        growth = report.rss_after[name] - before
        assert growth < 40 * 2**20, f"{name} grew by {growth / 2**20:.0f} MiB under overload"


NARROW_THREADS = 2
NARROW_QUEUE = 4 * NARROW_THREADS  # gateway.admission.default_queue


@pytest.fixture(scope="module")
def narrow_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Report, Stack]]:
    """40 clients against a gateway of one process x 2 threads, everything else at its default."""
    root = tmp_path_factory.mktemp("overload-narrow")
    processes = Processes(root)
    try:
        stack = start(root, processes, gateway_processes=1, gateway_threads=NARROW_THREADS)
        yield overload(stack, CLIENTS, SECONDS), stack
    finally:
        processes.kill_all()


def test_busy_gateway_threads_refuse_the_excess_at_once(narrow_report: tuple[Report, Stack]) -> None:
    report, stack = narrow_report
    ok, busy = report.by_status(200), report.by_status(503)
    assert len(ok) + len(busy) == len(report.outcomes), [
        o.describe() for o in report.outcomes if o.status not in (200, 503)
    ][:5]
    assert ok, "nothing was accepted"
    assert len(busy) > len(ok), "the excess was not refused"
    assert all(o.headers.get("Retry-After") and '"error"' in o.body for o in busy)
    assert percentile([o.seconds for o in busy], 0.5) < 0.25, "a refusal is not immediate"
    # The dispatcher never saw more than the gateway's threads: the gateway is the stage that refused.
    assert report.max_queued + report.max_in_flight <= NARROW_THREADS
    # Ahead of an accepted request: at most the threads and the queue, 0.1 s each (batches of one, at worst).
    bound = (NARROW_THREADS + NARROW_QUEUE) * 0.1
    p99 = percentile([o.seconds for o in ok], 0.99)
    assert p99 < bound + 2.0, f"accepted p99 {p99:.2f}s, expected about {bound:.2f}s"
    metrics = requests.get(f"{stack.url}/metrics", headers=stack.headers, timeout=10).text
    refused = [line for line in metrics.splitlines() if line.startswith("torchgate_http_refused_total ")]
    assert refused and float(refused[0].split()[1]) >= len(busy), refused


def test_memory_stays_flat_with_gateway_threads_busy(narrow_report: tuple[Report, Stack]) -> None:
    report, _ = narrow_report
    for name, before in report.rss_before.items():
        growth = report.rss_after[name] - before
        assert growth < 40 * 2**20, f"{name} grew by {growth / 2**20:.0f} MiB under overload"
