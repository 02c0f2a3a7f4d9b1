"""Deadlines end to end: `parameters.timeout` or the server default travels gateway -> dispatcher -> worker.

A request whose deadline passes while it waits (in the dispatcher's queue or a worker's batch queue) is never
computed, and the client gets its 504 once the deadline passed, before any request queued behind it is served.
"Never computed" is checked with the workers' own counters: a sentinel request sent after the expired ones is
computed after them (queues are FIFO), so once its samples are counted, any computed expired request would
have been counted too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from harness import Outcome, Stack, call, slow_body, wait_for, wait_settled, write_slow_model
from inference_worker.protocol import StatusReply

BATCH_SECONDS = 1.0  # the slow model's time per batch (of up to 4 samples): long beside a busy box's delays
DEFAULT_TIMEOUT = 1.5  # the server's default deadline, for requests that name none

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("deadlines")
    write_slow_model(root / "repo", seconds=BATCH_SECONDS, max_batch_size=4, max_queue_size=64)
    with Stack.at(root, root / "repo") as stack:
        # Where a deadline passes on the dispatcher's way (its queue, then the worker's); the direct lane's
        # is in tests/test_direct_lane.py.
        env = {"TORCHGATE_DEFAULT_TIMEOUT": str(DEFAULT_TIMEOUT), "TORCHGATE_DIRECT": "0"}
        yield stack.start(gateway_threads=32, gateway_env=env)


def post(stack: Stack, body: dict[str, Any]) -> Answered:
    outcome = call(lambda: requests.post(f"{stack.url}/v2/models/slow/infer", json=body, timeout=60))
    return Answered(outcome, time.monotonic())


@dataclass(frozen=True)
class Answered:
    """An outcome and when (``time.monotonic()``) it came, to order answers."""

    outcome: Outcome
    at: float


def model_counters(status: StatusReply, model: str) -> dict[str, int]:
    """Sum a model's worker counters from a STATUS reply: inference_count, success, deadline failures."""
    total = {"inference_count": 0, "success": 0, "deadline": 0}
    for entry in status.stats:
        if entry.get("model") == model:
            total["inference_count"] += int(entry.get("inference_count", 0))
            total["success"] += int(entry.get("success", 0))
            total["deadline"] += int((entry.get("failure") or {}).get("deadline", 0))
    return total


def settled(stack: Stack) -> dict[str, int]:
    """The counters once nothing is queued or in flight and the worker has reported it."""

    def read() -> tuple[bool, dict[str, int]]:
        status = stack.status()
        busy = any(w["in_flight"] for w in status.workers) or bool(status.dispatcher["pending"])
        return busy, model_counters(status, "slow")

    return wait_settled(read, what="the worker's counters")  # reads 0.5 s apart; heartbeats every 0.2 s


def received(stack: Stack) -> int:
    """How many requests the dispatcher has received since it started."""
    return int(stack.status().dispatcher["requests"])


def run_expiring(
    stack: Stack, backlog: int, expiring: list[dict[str, object]], deadline: float
) -> list[Outcome]:
    """Keep the worker busy with ``backlog`` one-sample requests, send the ``expiring`` ones (three samples
    each) behind them, then a one-sample sentinel; return the expiring ones' outcomes.

    Every expiring request must get a 504, not before its deadline and before the sentinel is answered, and
    none may be computed.
    """
    before = settled(stack)
    with ThreadPoolExecutor(backlog + len(expiring)) as pool:
        first = received(stack)
        busy: list[Future[Answered]] = [
            pool.submit(post, stack, slow_body(timeout_us=60_000_000)) for _ in range(backlog)
        ]
        wait_for(
            lambda: (
                any(w["in_flight"] for w in stack.status().workers) and received(stack) >= first + backlog
            ),
            timeout=30,
            interval=0.01,
            what="the worker to be busy and the dispatcher to hold the backlog",
        )
        late = [pool.submit(post, stack, body) for body in expiring]
        wait_for(
            lambda: received(stack) >= first + backlog + len(expiring),
            timeout=30,
            interval=0.01,
            what="the dispatcher to receive the expiring requests",
        )
        sentinel = pool.submit(post, stack, slow_body(timeout_us=60_000_000))  # behind them in every queue
        results = [f.result(timeout=60) for f in late]
        last = sentinel.result(timeout=60)
        busy_outcomes = [f.result(timeout=60).outcome for f in busy]
        assert all(o.status == 200 for o in busy_outcomes), [
            o.describe() for o in busy_outcomes if o.status != 200
        ]
    assert last.outcome.status == 200, last.outcome.describe()
    for result in results:
        outcome = result.outcome
        assert outcome.status == 504, outcome.describe()
        assert '"error"' in outcome.body
        assert outcome.seconds >= deadline - 0.05, f"a 504 before the deadline: {outcome.describe()}"
        assert result.at < last.at, f"the 504 waited for the work queued behind it: {outcome.describe()}"
    after = settled(stack)
    assert after["inference_count"] == before["inference_count"] + backlog + 1, (before, after)
    return [r.outcome for r in results]


def test_parameters_timeout_expires_in_the_worker_queue_uncomputed(stack: Stack) -> None:
    # Two one-sample requests keep the worker computing; the expiring ones get its spare credit and wait in
    # the worker's batch queue behind the running batch, which outlasts their 0.2 s.
    run_expiring(stack, backlog=2, expiring=[slow_body(rows=3, timeout_us=200_000)] * 2, deadline=0.2)


def test_parameters_timeout_expires_in_the_dispatcher_queue_uncomputed(stack: Stack) -> None:
    # Twelve requests: eight use every credit of the worker, four wait in the dispatcher; the expiring ones
    # queue behind them there and pass their 0.4 s before a credit frees.
    expired_before = stack.status().dispatcher["expired"]
    run_expiring(stack, backlog=12, expiring=[slow_body(rows=3, timeout_us=400_000)] * 3, deadline=0.4)
    assert stack.status().dispatcher["expired"] >= expired_before + 3


def test_the_server_default_deadline_applies_without_parameters(stack: Stack) -> None:
    # 16 requests = 4 batches of 1 s ahead: a request that names no timeout passes the 1.5 s default.
    run_expiring(stack, backlog=16, expiring=[slow_body(rows=3)], deadline=DEFAULT_TIMEOUT)


def test_an_already_expired_request_is_answered_at_once(stack: Stack) -> None:
    before = settled(stack)
    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(post, stack, slow_body(timeout_us=60_000_000)) for _ in range(2)]
        wait_for(
            lambda: any(w["in_flight"] for w in stack.status().workers),
            timeout=30,
            what="the worker to be busy",
        )
        expired = post(stack, slow_body(rows=3, timeout_us=1))
        done = [f.result(timeout=60) for f in busy]
    assert expired.outcome.status == 504, expired.outcome.describe()
    assert all(d.outcome.status == 200 for d in done), [d.outcome.describe() for d in done]
    assert expired.at < max(d.at for d in done), "the expired request waited for the busy worker"
    assert settled(stack)["inference_count"] == before["inference_count"] + 2


def test_a_timeout_that_is_not_whole_microseconds_is_400(stack: Stack) -> None:
    bad = post(stack, {**slow_body(), "parameters": {"timeout": -5}}).outcome
    assert bad.status == 400 and "timeout" in bad.body
    bad = post(stack, {**slow_body(), "parameters": {"timeout": "soon"}}).outcome
    assert bad.status == 400 and "timeout" in bad.body
