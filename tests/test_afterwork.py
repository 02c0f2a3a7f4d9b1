"""A request's bookkeeping (metrics, access line) deferred off its critical path: gateway.afterwork.

The front door marks each request's environ; the app then defers the bookkeeping, and a request thread runs it
once it waits anyway (the dispatcher's reply, the next request) or before ``/metrics`` reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import zmq
from flask import Flask

from gateway import GatewayConfig, afterwork, create_app
from gateway.client import DispatcherClient
from gateway.codec import Tensor
from gateway.errors import DeadlineExceeded
from gateway.metrics import request_metrics

FRONT_DOOR = {afterwork.ENVIRON_KEY: True}  # what the front door's environ carries


@pytest.fixture(autouse=True)
def nothing_pending() -> Iterator[None]:
    afterwork.run_pending()
    yield
    afterwork.run_pending()


def test_jobs_run_oldest_first_and_a_failing_one_stops_none(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []

    def fail() -> None:
        raise RuntimeError("boom")

    afterwork.defer(lambda: ran.append(1))
    afterwork.defer(fail)
    afterwork.defer(lambda: ran.append(2))
    assert afterwork.pending() == 3
    with caplog.at_level(logging.ERROR, logger="torchgate.gateway"):
        afterwork.run_pending()
    assert ran == [1, 2] and afterwork.pending() == 0
    assert "bookkeeping failed" in caplog.text


def test_deferred_only_when_the_server_runs_pending_work() -> None:
    ran: list[str] = []
    afterwork.defer_or_run({}, lambda: ran.append("now"))
    assert ran == ["now"] and afterwork.pending() == 0
    afterwork.defer_or_run(dict(FRONT_DOOR), lambda: ran.append("later"))
    assert ran == ["now"] and afterwork.pending() == 1
    afterwork.run_pending()
    assert ran == ["now", "later"]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(GatewayConfig(dispatcher=f"ipc://{tmp_path}/nobody-listens.sock", status_timeout=0.2))
    yield app
    app.extensions["torchgate"].client.close()


def _count(route: str) -> float:
    total = 0.0
    for family in request_metrics().collect():
        for sample in family.samples:
            if sample.name == "torchgate_http_requests_total" and sample.labels.get("route") == route:
                total += sample.value
    return total


def test_a_front_door_request_is_counted_and_logged_once_pending_work_runs(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    before = _count("/v2")
    with caplog.at_level(logging.INFO, logger="torchgate.access"):
        answer = client.get("/v2", headers={"X-Request-ID": "later-1"}, environ_overrides=FRONT_DOOR)
        assert answer.status_code == 200 and answer.headers["X-Request-ID"] == "later-1"
        assert afterwork.pending() == 1 and _count("/v2") == before
        assert "later-1" not in caplog.text
        afterwork.run_pending()
    assert _count("/v2") == before + 1
    (line,) = [r for r in caplog.records if "later-1" in r.getMessage()]
    assert line.getMessage().startswith("GET /v2 200 ") and getattr(line, "request_id", None) == "later-1"


def test_metrics_counts_what_was_pending_before_it_reports(app: Flask) -> None:
    client = app.test_client()
    before = _count("/v2")
    assert client.get("/v2", environ_overrides=FRONT_DOOR).status_code == 200
    assert afterwork.pending() == 1
    text = client.get("/metrics", environ_overrides=FRONT_DOOR).get_data(as_text=True)
    assert f'torchgate_http_requests_total{{method="GET",route="/v2",status="200"}} {before + 1}' in text


def test_elsewhere_a_request_is_counted_before_its_answer(app: Flask) -> None:
    before = _count("/v2")
    assert app.test_client().get("/v2").status_code == 200
    assert afterwork.pending() == 0 and _count("/v2") == before + 1


def test_the_client_runs_its_idle_hook_once_the_request_is_sent(tmp_path: Path) -> None:
    """The hook runs while the reply is awaited: the request has left by then."""
    endpoint = f"ipc://{tmp_path}/dispatcher.sock"
    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    seen: list[bool] = []

    def idle() -> None:  # the request is already on its way: the ROUTER gets it while the hook waits
        seen.append(router.poll(10_000) == zmq.POLLIN)

    client = DispatcherClient(endpoint, poll_interval=0.1, unresponsive_after=5.0, idle=idle)
    try:
        with pytest.raises(DeadlineExceeded):
            client.infer("m", None, [Tensor("x", "FP32", (1,), b"\0" * 4)], [], time.time() + 0.3)
        assert seen == [True]
    finally:
        client.close()
        router.close(linger=0)


def test_run_pending_from_many_threads_runs_each_job_once() -> None:
    ran: list[int] = []
    for i in range(2000):
        afterwork.defer(partial(ran.append, i))
    threads = [threading.Thread(target=afterwork.run_pending) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(ran) == list(range(2000))
