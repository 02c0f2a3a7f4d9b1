"""Overload at ten times capacity: the excess gets a 503 with Retry-After at once, every queue stays bounded,
accepted requests wait only for the requests ahead of them and memory stays flat.

Each stage that can refuse is tried: the dispatcher's queue (a gateway with threads to spare), and the
gateway's own wait for a request thread (a gateway of 2 threads with its default queue of 4 x threads).

The model serves at most 40 requests/s (0.1 s per batch of 4); 40 closed-loop clients that ignore Retry-After
offer far more. "At once" and "bounded" are checked by order and counts, not by the clock: a refusal comes
back while requests accepted before it still wait, and an accepted request sees only about as many others
answered while it waits as there can be ahead of it. The latencies themselves are `python -m
benchmarks.overload`'s figures (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from harness import Stack
from harness.overload import CAPACITY_RPS, MAX_BATCH, QUEUE, Report, overload, percentile, start

pytestmark = pytest.mark.processes

CLIENTS = 40
SECONDS = 6.0
# Answers that may overtake an accepted request, as a multiple of how many can be ahead of it and in its
# batch: the clients' own threads (40 of them, on a busy machine) see their answers late, never early.
SLACK = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start(tmp_path_factory.mktemp("overload"), gateway_processes=2, gateway_threads=32) as stack:
        yield stack


@pytest.fixture(scope="module")
def report(stack: Stack) -> Report:
    overload(stack, 8, 1.5)  # warm up, so first-use allocations do not count as growth
    return overload(stack, CLIENTS, SECONDS)


def assert_refused_at_once(report: Report) -> None:
    """Every answer is a 200 or a 503 with Retry-After, most 503s overtaking requests accepted before them."""
    ok, busy = report.by_status(200), report.by_status(503)
    assert len(ok) + len(busy) == len(report.outcomes), [
        o.describe() for o in report.outcomes if o.status not in (200, 503)
    ][:5]
    assert ok, "nothing was accepted"
    assert len(busy) > len(ok), "the excess was not refused"
    assert all(o.headers.get("Retry-After") and '"error"' in o.body for o in busy)
    overtook = report.overtook_accepted()
    assert sum(overtook) > len(overtook) / 2, "a refusal waited as long as an accepted request"


def test_the_excess_gets_503_with_retry_after_at_once(report: Report) -> None:
    offered, accepted = len(report.outcomes), len(report.by_status(200))
    assert offered >= 5 * accepted, f"not an overload: {offered} requests offered, {accepted} accepted"
    assert_refused_at_once(report)


def test_queues_stay_bounded_and_accepted_requests_wait_only_for_those_ahead(report: Report) -> None:
    assert report.max_queued <= QUEUE
    assert report.max_in_flight <= 2 * MAX_BATCH
    # Ahead of an accepted request: at most QUEUE queued and 2 * MAX_BATCH in flight; beside it, its batch.
    ahead = QUEUE + 2 * MAX_BATCH + MAX_BATCH
    waited = percentile([float(n) for n in report.answered_while_waiting()], 0.99)
    assert waited <= SLACK * ahead, f"p99: {waited:.0f} answered while an accepted request waited (~{ahead})"
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
    with start(root, gateway_processes=1, gateway_threads=NARROW_THREADS) as stack:
        yield overload(stack, CLIENTS, SECONDS), stack


def test_busy_gateway_threads_refuse_the_excess_at_once(narrow_report: tuple[Report, Stack]) -> None:
    report, stack = narrow_report
    assert_refused_at_once(report)
    # The dispatcher never saw more than the gateway's threads: the gateway is the stage that refused.
    assert report.max_queued + report.max_in_flight <= NARROW_THREADS
    # Ahead of an accepted request: at most the threads and the queue (batches of one, at worst).
    ahead = NARROW_THREADS + NARROW_QUEUE
    waited = percentile([float(n) for n in report.answered_while_waiting()], 0.99)
    assert waited <= SLACK * ahead, f"p99: {waited:.0f} answered while an accepted request waited (~{ahead})"
    metrics = requests.get(f"{stack.url}/metrics", headers=stack.headers, timeout=10).text
    refused = [line for line in metrics.splitlines() if line.startswith("torchgate_http_refused_total ")]
    assert refused and float(refused[0].split()[1]) >= len(report.by_status(503)), refused


def test_memory_stays_flat_with_gateway_threads_busy(narrow_report: tuple[Report, Stack]) -> None:
    report, _ = narrow_report
    for name, before in report.rss_before.items():
        growth = report.rss_after[name] - before
        assert growth < 40 * 2**20, f"{name} grew by {growth / 2**20:.0f} MiB under overload"
