"""Deadlines end to end: `parameters.timeout` or the server default travels gateway -> dispatcher -> worker.

A request whose deadline passes while it waits (in the dispatcher's queue or a worker's batch queue) is never
computed, and the client gets its 504 at the deadline, not later. "Never computed" is checked with the workers'
own counters: a sentinel request sent after the expired ones is computed after them (queues are FIFO), so once
its samples are counted, any computed expired request would have been counted too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests
import zmq

from tests.backend import write_slow_model
from tests.conftest import Processes, wait_for
from tests.stack import Outcome, Stack, call, model_counters, slow_body

BATCH_SECONDS = 0.5  # the slow model's time per batch (of up to 4 samples)
DEFAULT_TIMEOUT = 1.5  # the server's default deadline, for requests that name none
LATE_BOUND = 5.0  # a 504 may come this much after its deadline on a busy machine, never more


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("deadlines")
    write_slow_model(root / "repo", seconds=BATCH_SECONDS, max_batch_size=4, max_queue_size=64)
    processes = Processes(root)
    try:
        yield Stack(processes, root / "run", root / "repo").start(
            {"w0": []}, gateway_threads=32, gateway_env={"TORCHGATE_DEFAULT_TIMEOUT": str(DEFAULT_TIMEOUT)}
        )
    finally:
        processes.kill_all()


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    with zmq.Context() as ctx:
        yield ctx


def post(stack: Stack, body: dict[str, object]) -> Outcome:
    return call(lambda: requests.post(f"{stack.url}/v2/models/slow/infer", json=body, timeout=60))


def counters(stack: Stack, context: zmq.Context) -> dict[str, int]:
    return model_counters(stack.status(context), "slow")


def settled(stack: Stack, context: zmq.Context) -> dict[str, int]:
    """The counters once nothing is queued or in flight and the worker has reported it."""

    def idle() -> dict[str, int] | None:
        status = stack.status(context)
        busy = any(w["in_flight"] for w in status["workers"]) or status["dispatcher"]["pending"]
        return None if busy else model_counters(status, "slow")

    first = wait_for(idle, timeout=60, what="an idle worker")
    wait_for(lambda: counters(stack, context) == first and idle(), timeout=10, what="stable counters")
    return counters(stack, context)


def run_expiring(
    stack: Stack, context: zmq.Context, backlog: int, expiring: list[dict[str, object]], deadline: float
) -> list[Outcome]:
    """Keep the worker busy with ``backlog`` one-sample requests, send the ``expiring`` ones (three samples
    each) behind them, then a one-sample sentinel; return the expiring ones' outcomes.

    Every expiring request must get a 504 between its deadline and deadline + LATE_BOUND, and none may be
    computed.
    """
    before = settled(stack, context)
    with ThreadPoolExecutor(backlog + len(expiring)) as pool:
        busy: list[Future[Outcome]] = [
            pool.submit(post, stack, slow_body(timeout_us=60_000_000)) for _ in range(backlog)
        ]
        wait_for(
            lambda: any(w["in_flight"] for w in stack.status(context)["workers"]),
            timeout=30,
            what="the worker to be busy",
        )
        late = [pool.submit(post, stack, body) for body in expiring]
        results = [f.result(timeout=60) for f in late]
        sentinel = post(stack, slow_body(timeout_us=60_000_000))
        busy_outcomes = [f.result(timeout=60) for f in busy]
        assert all(o.status == 200 for o in busy_outcomes), [
            o.describe() for o in busy_outcomes if o.status != 200
        ]
    assert sentinel.status == 200, sentinel.describe()
    for outcome in results:
        assert outcome.status == 504, outcome.describe()
        assert '"error"' in outcome.body
        assert deadline - 0.05 <= outcome.seconds <= deadline + LATE_BOUND, outcome.describe()
    after = settled(stack, context)
    assert after["inference_count"] == before["inference_count"] + backlog + 1, (before, after)
    return results


def test_parameters_timeout_expires_in_the_worker_queue_uncomputed(
    stack: Stack, context: zmq.Context
) -> None:
    # Two one-sample requests keep the worker computing; the expiring ones get its spare credit and wait in
    # the worker's batch queue behind the running batch, which outlasts their 0.2 s.
    run_expiring(
        stack, context, backlog=2, expiring=[slow_body(rows=3, timeout_us=200_000)] * 2, deadline=0.2
    )


def test_parameters_timeout_expires_in_the_dispatcher_queue_uncomputed(
    stack: Stack, context: zmq.Context
) -> None:
    # Twelve requests: eight use every credit of the worker, four wait in the dispatcher; the expiring ones
    # queue behind them there and pass their 0.4 s before a credit frees.
    expired_before = stack.status(context)["dispatcher"]["expired"]
    run_expiring(
        stack, context, backlog=12, expiring=[slow_body(rows=3, timeout_us=400_000)] * 3, deadline=0.4
    )
    assert stack.status(context)["dispatcher"]["expired"] >= expired_before + 3


def test_the_server_default_deadline_applies_without_parameters(stack: Stack, context: zmq.Context) -> None:
    # 16 requests = 4 batches of 0.5 s ahead: a request that names no timeout passes the 1.5 s default.
    run_expiring(stack, context, backlog=16, expiring=[slow_body(rows=3)], deadline=DEFAULT_TIMEOUT)


def test_an_already_expired_request_is_answered_at_once(stack: Stack, context: zmq.Context) -> None:
    before = settled(stack, context)
    started = time.monotonic()
    outcome = post(stack, slow_body(rows=3, timeout_us=1))
    assert outcome.status == 504 and time.monotonic() - started < LATE_BOUND, outcome.describe()
    sentinel = post(stack, slow_body(timeout_us=60_000_000))
    assert sentinel.status == 200
    assert settled(stack, context)["inference_count"] == before["inference_count"] + 1


def test_a_timeout_that_is_not_whole_microseconds_is_400(stack: Stack) -> None:
    bad = post(stack, {**slow_body(), "parameters": {"timeout": -5}})
    assert bad.status == 400 and "timeout" in bad.body
    bad = post(stack, {**slow_body(), "parameters": {"timeout": "soon"}})
    assert bad.status == 400 and "timeout" in bad.body
