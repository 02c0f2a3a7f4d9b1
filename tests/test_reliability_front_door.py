"""The gateway's front door against hostile clients: one real stack (gunicorn, dispatcher, a digits worker).

Each test reproduces an attack from an outside probe over a raw socket or HTTP: numbers that overflow, forged
log lines, unbounded metric labels, gunicorn's own error pages, malformed or oversized chunked bodies, slow
and idle clients, JSON that amplifies in memory. The gateway runs 4 request threads and a 4 MiB body limit so
that exhausting them is cheap; timeouts are shortened the same way (settings a user could choose).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from harness import DIGITS_BODY, Stack, copy_digits, wait_for

pytestmark = pytest.mark.processes

INFER = "/v2/models/digits/infer"
THREADS = 4
MAX_BODY = 4 << 20
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
SEND_TIMEOUT = 2.0
BODY_BUDGET = 16 * MAX_BODY
MAX_JSON_VALUES = 100_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("front-door")
    copy_digits(root / "repo")
    env = {
        "TORCHGATE_MAX_BODY_BYTES": str(MAX_BODY),
        "TORCHGATE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "TORCHGATE_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "TORCHGATE_SEND_TIMEOUT": str(SEND_TIMEOUT),
        "TORCHGATE_GATEWAY_CONNECTIONS": "300",
        "TORCHGATE_GATEWAY_BODY_BUDGET": str(BODY_BUDGET),
        "TORCHGATE_MAX_JSON_VALUES": str(MAX_JSON_VALUES),
    }
    with Stack.at(root, root / "repo") as stack:
        yield stack.start(gateway_processes=1, gateway_threads=THREADS, gateway_env=env)


@pytest.fixture(autouse=True)
def same_processes(stack: Stack) -> Iterator[None]:
    """No attack may crash or restart a process (gunicorn would quietly replace a gateway process)."""
    pids = stack.pids()
    yield
    assert stack.pids() == pids, "a process died or was restarted"


def connect(stack: Stack, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=timeout)
    return sock


def read_response(
    sock: socket.socket, check_close: bool = True, pending: bytearray | None = None
) -> tuple[int, dict[str, str], bytes, bool]:
    """Read one response (status, headers, body) and whether the server then closed the connection.

    ``pending`` keeps bytes read past this response (pipelined responses) for the next call.
    """
    data = pending if pending is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {bytes(data)!r}")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    body = rest[:length]
    data[:] = rest[length:]
    closed = False
    if check_close:
        try:
            sock.settimeout(5.0)
            closed = sock.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        except TimeoutError:
            closed = False
    return status, headers, body, closed


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


def test_numbers_past_ints_digit_limit_are_precise_errors_and_kill_no_process(stack: Stack) -> None:
    """Python's int() raises on 4300 digits and more: a Content-Length that long killed the gateway process
    (in the front door's loop), and such an Inference-Header-Content-Length or /predict version was a 500."""
    head = (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1" + b"0" * 5000 + b"\r\n\r\n"
    )
    status, _, body, _ = raw(stack, head)
    assert status == 413 and "exceeds the limit" in assert_json_error(body)
    for value in ("1" + "0" * 4400, "\xb2"):  # "²": a digit to str.isdigit, not to int()
        response = requests.post(
            stack.url + INFER,
            data=b'{"inputs": []}',
            headers={"Inference-Header-Content-Length": value, "Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        assert "Inference-Header-Content-Length" in response.json()["error"]
    body_doc: dict[str, Any] = {"input": [[0.0] * 64], "model": "digits", "version": "1" + "0" * 5000}
    response = requests.post(stack.url + "/predict", json=body_doc, timeout=30)
    assert response.status_code == 404 and "versions are positive integers" in response.text
    infer_ok(stack)


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


# -- chunked bodies ------------------------------------------------------------------------------------------


def chunked_head(path: str = INFER) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "chunks, status",
    [
        (b"-1\r\n", 400),  # gunicorn's InvalidChunkSize, raised inside the app: was a 500
        (b"FFFFFFFFFFFFFFFFFF\r\n", 400),  # 18 hex digits: was no answer at all
        (b"5000000\r\n", 413),  # one chunk of 80 MiB announced: refused before a byte of it
        (b"4\r\n{}  \r\nzz\r\n", 400),
    ],
)
def test_a_malformed_or_oversized_chunk_is_answered_and_closed(
    stack: Stack, chunks: bytes, status: int
) -> None:
    got, headers, body, closed = raw(stack, chunked_head() + chunks)
    assert got == status, body
    assert headers.get("content-type") == "application/json"
    assert_json_error(body)
    assert closed, "the connection stayed open after a framing error"


@pytest.mark.parametrize("filler", [b" ", b"0"])
def test_a_chunked_body_past_the_limit_gets_413_as_soon_as_it_passes(stack: Stack, filler: bytes) -> None:
    """A valid document then whitespace (was 200, cut at the limit), or a long number (was 400): both 413.
    The body is far longer than what the server reads, then discards after answering (8 MiB), and the
    sockets' buffers hold: the answer comes long before the client could have sent it all."""
    sock = connect(stack)
    sent = [0]
    total = 16 * MAX_BODY

    def send() -> None:
        piece = filler * (64 << 10)
        try:
            sock.sendall(chunked_head())
            if filler == b" ":
                doc = json.dumps(DIGITS_BODY).encode()
                sock.sendall(b"%x\r\n%s\r\n" % (len(doc), doc))
            for _ in range(total // len(piece)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent[0] += len(piece)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: expected once it answered

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        sock.recv(1, socket.MSG_PEEK)  # the answer's first byte is here
        sent_when_answered = sent[0]
        status, _, body, closed = read_response(sock)
    finally:
        sender.join(timeout=30)
        sock.close()
    assert status == 413, body
    assert "exceeds the limit" in assert_json_error(body)
    assert closed
    assert sent_when_answered < total, "the answer came only once the whole body was sent"


def test_an_unterminated_chunked_body_gets_408_and_holds_no_thread(stack: Stack) -> None:
    stalled = [connect(stack) for _ in range(2 * THREADS)]
    try:
        for sock in stalled:
            sock.sendall(chunked_head() + b"2\r\n{}\r\n")  # and nothing more, ever
        for _ in range(3):  # every request thread would be waiting on a stalled body
            assert requests.get(stack.url + "/v2/health/live", timeout=5).status_code == 200
            infer_ok(stack, timeout=5)
        for sock in stalled:
            status, _, body, closed = read_response(sock)
            assert status == 408, body
            assert_json_error(body)
            assert closed
    finally:
        for sock in stalled:
            sock.close()


def test_a_head_that_stops_part_way_gets_408(stack: Stack) -> None:
    """A request line and a header, then nothing: a request begun, answered 408 when its head times out (an
    idle connection, one that sent nothing, is closed without an answer)."""
    stalled = connect(stack)
    try:
        stalled.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\n".encode())
        status, _, body, closed = read_response(stalled)
    finally:
        stalled.close()
    assert status == 408, body
    assert "the request head did not arrive in time" in assert_json_error(body)
    assert closed


# -- slow and idle clients -----------------------------------------------------------------------------------


class SlowClients:
    """Connections that each send one byte of a request now and then, reconnecting when the server closes
    them."""

    def __init__(self, stack: Stack, count: int, request: bytes, interval: float = 0.5) -> None:
        self.stack, self.count, self.request, self.interval = stack, count, request, interval
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()

    def _open(self) -> tuple[socket.socket, int]:
        sock = socket.create_connection(("127.0.0.1", self.stack.port), timeout=10)
        sock.setblocking(False)
        return sock, 0

    def _run(self) -> None:
        conns = [self._open() for _ in range(self.count)]
        try:
            while not self._stop.wait(self.interval):
                for i, (sock, sent) in enumerate(conns):
                    try:
                        sock.send(self.request[sent % len(self.request) : sent % len(self.request) + 1])
                        conns[i] = (sock, sent + 1)
                        if sock.recv(65536, socket.MSG_PEEK) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    except OSError:
                        sock.close()
                        self.closed_by_server += 1
                        conns[i] = self._open()
        finally:
            for sock, _ in conns:
                sock.close()


def test_slow_clients_leave_liveness_and_inference_answering(stack: Stack) -> None:
    """100 clients trickle a request head, 100 a body of 256 KiB, a byte every half second each
    (slowloris)."""
    body_head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 18}\r\n\r\n".encode()
    with (
        SlowClients(stack, 100, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000) as heads,
        SlowClients(stack, 100, body_head + b" " * (1 << 18)) as bodies,
    ):
        for _ in range(20):
            assert requests.get(stack.url + "/v2/health/live", timeout=5).status_code == 200
            infer_ok(stack, timeout=5)
        wait_for(lambda: heads.closed_by_server and bodies.closed_by_server, timeout=60, what="timeouts")
        for _ in range(5):
            infer_ok(stack, timeout=5)


def test_idle_connections_are_closed_first_under_pressure(stack: Stack) -> None:
    """More silent connections than the process takes (300): the oldest give way to new requests."""
    idle = []
    try:
        for _ in range(320):
            idle.append(socket.create_connection(("127.0.0.1", stack.port), timeout=10))
        for _ in range(3):
            assert requests.get(stack.url + "/v2/health/live", timeout=5).status_code == 200
            infer_ok(stack, timeout=5)
    finally:
        for sock in idle:
            sock.close()


def send_queues(port: int, peers: set[int]) -> dict[int, int]:
    """The bytes the server's end of each connection to ``port`` from the client ports ``peers`` has yet to
    see acknowledged (/proc/net/tcp's tx_queue), by client port."""
    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queue = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[4]
        if local == port and remote in peers:
            queues[remote] = int(queue.split(":")[0], 16)
    return queues


def gateway_peers(stack: Stack) -> set[int]:
    """The client ports of the connections the gateway's processes hold."""
    ports = set()
    for name, pid in stack.pids().items():
        if name.startswith("gateway"):
            with contextlib.suppress(psutil.Error):
                ports |= {c.raddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.raddr}
    return ports


def test_clients_that_read_none_of_their_answers_hold_no_thread_for_good(stack: Stack) -> None:
    """More clients than threads pipeline requests for 76 KB answers and read none: each held a request thread
    in its blocking send for as long as it stayed connected, and liveness and inference waited behind them
    for good. An answer that makes no progress for ``TORCHGATE_SEND_TIMEOUT`` now frees its thread and the
    connection is closed (nginx's ``send_timeout``)."""
    pipelined = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 400  # 30 MB of answers: past any buffer
    clients = []
    try:
        for _ in range(THREADS + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            sock.settimeout(30)
            sock.connect(("127.0.0.1", stack.port))
            sock.sendall(pipelined)
            clients.append(sock)
        # every thread is stuck: the answers' bytes queued unacknowledged stay put (the buffers are full)
        ports = {sock.getsockname()[1] for sock in clients}
        last: dict[int, int] = {}

        def stuck() -> bool:
            nonlocal last
            queues, last = last, send_queues(stack.port, ports)
            return sum(1 for queued in last.values() if queued) >= THREADS and queues == last

        wait_for(stuck, timeout=60, interval=0.5, what="the answers to fill every buffer")
        started = time.monotonic()
        assert requests.get(stack.url + "/v2/health/live", timeout=30).status_code == 200
        infer_ok(stack, timeout=30)
        assert time.monotonic() - started < 6 * SEND_TIMEOUT + 5
        # and the gateway closed each, part way through its answers (reading them would unblock its thread)
        wait_for(lambda: not gateway_peers(stack) & ports, timeout=60, what="the gateway to close them")
    finally:
        for sock in clients:
            sock.close()
    for _ in range(3):
        infer_ok(stack, timeout=10)


def test_expect_100_continue_and_pipelined_requests(stack: Stack) -> None:
    doc = json.dumps(DIGITS_BODY).encode()
    with connect(stack) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nExpect: "
            f"100-continue\r\nContent-Length: {len(doc)}\r\n\r\n".encode()
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(doc)
        status, _, body, _ = read_response(sock, check_close=False)
        assert status == 200, body
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        pending = bytearray()
        for _ in range(3):
            status, _, body, _ = read_response(sock, check_close=False, pending=pending)
            assert status == 200 and json.loads(body) == {"live": True}


def test_request_bodies_held_at_once_are_bounded(stack: Stack) -> None:
    """Bodies sent all but their last byte: past the process's body budget, the next gets 503 at once."""
    held = [connect(stack) for _ in range(BODY_BUDGET // MAX_BODY)]
    try:
        head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\n".encode()
        for sock in held:
            sock.sendall(head + b" " * (MAX_BODY - 1))
        wait_for(lambda: raw(stack, head)[0] == 503, timeout=30, what="a 503 past the body budget")
        status, headers, body, closed = raw(stack, head)
        assert status == 503 and headers.get("retry-after") and closed
        assert "budget" in assert_json_error(body)
        assert requests.get(stack.url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()
    wait_for(
        lambda: requests.post(stack.url + INFER, json=DIGITS_BODY, timeout=5).status_code == 200, timeout=30
    )


# -- memory per request --------------------------------------------------------------------------------------


def test_json_that_would_amplify_in_memory_is_refused_before_parsing(stack: Stack) -> None:
    """A valid request with 1.3 million empty arrays in an unused field (was 200, ~70 bytes of memory
    each)."""
    junk = b"[" + b"[]," * 1_300_000 + b"[]]"
    body = json.dumps(DIGITS_BODY).encode()[:-1] + b', "junk": ' + junk + b"}"
    assert len(body) < MAX_BODY
    gateway = psutil.Process(stack.pids()["gateway-0"])
    before = gateway.memory_info().rss
    results: list[requests.Response] = []

    def post() -> None:
        results.append(
            requests.post(
                stack.url + INFER, data=body, headers={"Content-Type": "application/json"}, timeout=60
            )
        )

    clients = [threading.Thread(target=post) for _ in range(4)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=90)
    assert [r.status_code for r in results] == [413] * 4, [r.text[:200] for r in results]
    assert "values" in results[0].json()["error"]
    grown = gateway.memory_info().rss - before
    assert grown < 64 << 20, f"the gateway grew by {grown >> 20} MiB"
    infer_ok(stack)


def test_requests_answered_one_after_another_on_a_connection_give_back_their_budget(stack: Stack) -> None:
    """The next request on a kept-alive connection is read by the thread that answered the previous one: each
    gives its body budget back. (They once did not: after the budget's worth of large requests on kept-alive
    connections, every large request was refused with 503 for good.)
    """
    padding = b" " * (600 << 10)  # JSON whitespace: a valid body of 600 KiB
    body = json.dumps(DIGITS_BODY).encode()[:-1] + padding + b"}"
    request = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    count = 2 * BODY_BUDGET // len(body) // 4 + 4  # twice the budget's worth, over four connections
    statuses: list[int] = []

    def client() -> None:
        sock = connect(stack)
        try:
            pending = bytearray()
            for _ in range(count):
                sock.sendall(request)
                statuses.append(read_response(sock, check_close=False, pending=pending)[0])
        finally:
            sock.close()

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(timeout=240)
    assert statuses == [200] * (4 * count), sorted(set(statuses))
