"""A stopping gateway: it answers what it took, and refuses the next connections instead of resetting them.

`supervisorctl restart all` (or Kubernetes' SIGTERM) stops a gateway while clients keep connecting. Until
its processes exited, the kernel kept completing connections to the listening socket nobody read any more;
when they exited, those clients were reset after their request had gone out, which a client cannot tell from
a request lost after it ran. Five restarts under load gave each client thread such a reset
(docs/reliability.md).
"""

from __future__ import annotations

import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness import Processes, Stack, slow_body, slow_repository, wait_for

pytestmark = pytest.mark.processes

SLOW_SECONDS = 5.0  # the request in flight keeps its gateway process stopping this long


def refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused (one that is accepted is closed at once)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def test_a_stopping_gateway_refuses_new_connections_and_answers_the_request_in_flight(
    processes: Processes, tmp_path: Path
) -> None:
    repository = slow_repository(tmp_path / "repo", seconds=SLOW_SECONDS)
    stack = Stack(processes, tmp_path / "run", repository)
    stack.start(gateway_processes=2)
    gateway = stack.started["gateway"]
    url = f"{stack.url}/v2/models/slow/infer"
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(requests.post, url, json=slow_body(value=3.0), timeout=120)
        wait_for(
            lambda: stack.status().workers[0].get("computing") or in_flight.done(),
            timeout=60,
            interval=0.02,
            what="the request computing",
        )
        assert not in_flight.done(), in_flight.result().text
        gateway.send_signal(signal.SIGTERM)  # gunicorn's master: both processes stop
        wait_for(
            lambda: refused(stack.port) or in_flight.done(),
            timeout=120,
            interval=0.02,
            what="new connections refused, or the request in flight answered",
        )
        assert not in_flight.done(), "new connections were taken until the gateway had answered and exited"
        response = in_flight.result(timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [6.0] * 4
    assert gateway.wait(timeout=60) == 0
    assert "Traceback" not in stack.log("gateway")
