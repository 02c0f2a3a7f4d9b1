"""TorchServe's port layout under `torchgate serve --management-port --metrics-port`: a TorchServe client's
management calls (8081) and metrics scrapes (8082) work unchanged, and each of those ports answers only its
API, as TorchServe's do."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
import requests

from harness import Stack, free_port, short_dir

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Stack, str, str]]:
    with short_dir() as base:
        management, metrics = free_port(), free_port()
        stack = Stack.at(base)
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--management-port", str(management), "--metrics-port", str(metrics)]
        with stack.serve(*options) as d:
            d.wait_serving(timeout=120)
            yield d, f"http://127.0.0.1:{management}", f"http://127.0.0.1:{metrics}"


@pytest.mark.processes
def test_a_torchserve_client_finds_management_and_metrics_on_their_ports(
    served: tuple[Stack, str, str],
) -> None:
    stack, management, metrics = served
    assert f"and management port {management.rsplit(':', 1)[1]}" in stack.log()
    listed = requests.get(f"{management}/models", timeout=TIMEOUT)
    assert listed.status_code == 200 and listed.json()["models"] == [
        {"modelName": "digits", "modelUrl": "digits"}
    ]
    described = requests.get(f"{management}/models/digits", timeout=TIMEOUT).json()
    assert described[0]["modelName"] == "digits" and described[0]["workers"]

    sample = {"input": [0.0] * 64}
    assert requests.post(f"{stack.url}/predict", json=sample, timeout=TIMEOUT).status_code == 200
    scraped = requests.get(f"{metrics}/metrics", timeout=TIMEOUT)
    assert scraped.status_code == 200
    assert re.search(r'^ts_inference_requests_total\{[^}]*model_name="digits"', scraped.text, re.MULTILINE)

    # each extra port answers only its API; the inference port still answers everything
    for url, method, path in (
        (management, "POST", "/predictions/digits"),
        (management, "GET", "/v2/health/ready"),
        (management, "GET", "/metrics"),
        (metrics, "GET", "/models"),
        (metrics, "GET", "/ping"),
    ):
        refused = requests.request(method, f"{url}{path}", json=sample, timeout=TIMEOUT)
        assert refused.status_code == 404, (url, path)
        assert "no such endpoint on this port" in refused.json()["error"]
    for path in ("/models", "/metrics", "/ping"):
        assert requests.get(f"{stack.url}{path}", timeout=TIMEOUT).status_code == 200


@pytest.mark.processes
def test_a_taken_management_port_is_named_before_anything_starts() -> None:
    with short_dir() as base, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack.at(base)
        done = stack.torchgate("serve", "--port", str(free_port()), "--management-port", str(port))
        assert done.returncode != 0
        assert f"127.0.0.1:{port} is already in use" in done.stderr and "--management-port" in done.stderr
