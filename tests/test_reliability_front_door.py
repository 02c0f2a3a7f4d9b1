"""The gateway's front door against hostile clients: one real stack (gunicorn, dispatcher, a digits worker).

Each test reproduces an attack from an outside probe over a raw socket or HTTP: numbers that overflow, forged log
lines, unbounded metric labels, gunicorn's own error pages, malformed or oversized chunked bodies, slow and idle
clients, JSON that amplifies in memory. The gateway runs 4 request threads and a 4 MiB body limit so that
exhausting them is cheap; timeouts are shortened the same way (settings a user could choose).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from harness import DIGITS_BODY, Stack, copy_digits, wait_for

pytestmark = pytest.mark.processes

INFER = "/v2/models/digits/infer"
THREADS = 4
MAX_BODY = 4 << 20
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("front-door")
    copy_digits(root / "repo")
    env = {
        "TORCHGATE_MAX_BODY_BYTES": str(MAX_BODY),
        "TORCHGATE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "TORCHGATE_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "TORCHGATE_GATEWAY_CONNECTIONS": "300",
    }
    with Stack.at(root, root / "repo") as stack:
        yield stack.start(gateway_processes=1, gateway_threads=THREADS, gateway_env=env)


def connect(stack: Stack, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=timeout)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """Read one response (status, headers, body) and whether the server then closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    closed = False
    try:
        sock.settimeout(5.0)
        rest = sock.recv(65536)
        closed = rest == b""
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except TimeoutError:
        closed = False
    return status, headers, body[:length], closed


def raw(stack: Stack, data: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    with connect(stack) as sock:
        sock.sendall(data)
        return read_response(sock)


def assert_json_error(body: bytes) -> str:
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], body
    return str(doc["error"])


def infer_ok(stack: Stack, timeout: float = 10.0) -> None:
    response = requests.post(stack.url + INFER, json=DIGITS_BODY, timeout=timeout)
    assert response.status_code == 200, response.text


# -- hostile values that used to get a 500 -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["timeout", "priority"])
def test_a_huge_integer_parameter_is_a_precise_400(stack: Stack, name: str) -> None:
    body = {**DIGITS_BODY, "parameters": {name: 10**400}}  # past orjson: Python's json makes it an int
    response = requests.post(stack.url + INFER, json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert name in response.json()["error"]
    body = {**DIGITS_BODY, "parameters": {name: 2**64 - 1}}  # the largest uint64 is valid, as in Triton
    assert requests.post(stack.url + INFER, json=body, timeout=30).status_code == 200


# -- log forging ---------------------------------------------------------------------------------------------


def test_control_characters_in_a_path_cannot_forge_log_lines(stack: Stack) -> None:
    marker = f"FORGED{time.monotonic_ns()}"
    response = requests.get(f"{stack.url}/v2/x%0a{marker}%00%0d%1b[31m", timeout=30)
    assert response.status_code == 404

    def logged() -> str | None:
        text = stack.log("gateway")
        return text if marker in text else None

    log = wait_for(logged, timeout=30, what="the access line")
    assert "\x00" not in log and "\x1b" not in log
    assert not any(line.startswith(marker) for line in log.splitlines()), "a forged log line"
    assert f"/v2/x\\x0a{marker}\\x00\\x0d\\x1b[31m" in log


# -- metric labels -------------------------------------------------------------------------------------------


def test_unknown_methods_fold_into_one_metric_label(stack: Stack) -> None:
    methods = [f"XM{i}" for i in range(40)]
    for method in methods:
        status, _, body, _ = raw(
            stack, f"{method} /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert status == 405, body
    text = requests.get(stack.url + "/metrics", timeout=30).text
    series = re.findall(r'torchgate_http_requests_total\{[^}]*method="([^"]+)"', text)
    assert "OTHER" in series
    assert not set(methods) & set(series), "a client-chosen method became a label value"
    assert set(series) <= {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "PATCH",
        "OPTIONS",
        "CONNECT",
        "TRACE",
        "OTHER",
    }
