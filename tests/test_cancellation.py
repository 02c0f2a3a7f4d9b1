"""A request whose client went away is withdrawn, as real processes under `torchgate serve`: an HTTP client
that closes its connection, a tritonclient gRPC call cancelled. Each place a request can wait is checked: a
worker's batch queue reached through the dispatcher, the dispatcher's own queue, and a worker's direct lane.
A withdrawn request is never computed (the worker's counters say so), every other request is answered, and
the cancellation shows where an operator looks: the access line (499), Triton's failure metric (CANCELED),
the dispatcher's and the worker's counters.

One `torchgate serve` for the module: one CPU worker, one gateway process of four threads, the gRPC port, and
`sleeper` (sleeps as many seconds as its input, then doubles it) with ``max_batch_size = 1``: the worker takes
two requests at once from the dispatcher (its capacity), computes one and queues the other; a third waits in
the dispatcher; with four requests in the gateway's threads, a fifth waits for a thread.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from harness import Stack, free_port, short_dir, wait_for, write_sleeper_model
from harness.prometheus import scrape, total

pytestmark = pytest.mark.processes

TIMEOUT = 30.0
LONG = 4.0  # seconds the first request computes: the others are sent and withdrawn meanwhile
MODEL = "sleeper"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Stack, int]]:
    with short_dir() as base:
        repository = base / "repo"
        config = write_sleeper_model(repository, MODEL) / "config.toml"
        config.write_text(config.read_text().replace("max_batch_size = 4", "max_batch_size = 1"))
        grpc_port = free_port()
        stack = Stack.at(base, repository)
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--gateway-processes", "1", "--gateway-threads", "4", "--grpc-port", str(grpc_port)]
        with stack.serve(*options, "--model-repository", str(repository)) as started:
            started.wait_serving(timeout=120)
            yield started, grpc_port


def body(seconds: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [seconds]}]}


def post(stack: Stack, seconds: float, request_id: str) -> requests.Response:
    return requests.post(
        f"{stack.url}/v2/models/{MODEL}/infer",
        json=body(seconds),
        headers={"X-Request-ID": request_id},
        timeout=TIMEOUT + LONG,
    )


def send_unread(stack: Stack, seconds: float, request_id: str) -> socket.socket:
    """Send a whole request on a connection of its own, without reading the answer; the caller closes it."""
    data = json.dumps(body(seconds)).encode()
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=TIMEOUT)
    sock.sendall(head.encode() + data)
    return sock


def waiting_in_lanes(stack: Stack) -> int:
    """What waits at the workers' ends of their direct lanes, as `ss` shows the kernel's queues: bytes unread
    on a connection, or a new connection not yet accepted (a worker takes both between batches). A gateway
    connects only after it asked whether its client is still there, and then sends at once."""
    lanes = str(stack.run_dir / "sockets" / "direct-")
    ss = ["ss", "-x", "-a", "-n", "-H"]  # unix sockets, listeners too, numbers, no heading
    shown = subprocess.run(ss, capture_output=True, text=True, timeout=10, check=True)
    total = 0
    for line in shown.stdout.splitlines():
        # kind, state, Recv-Q (a listener's: connections waiting to be accepted), Send-Q, local address
        cols = line.split()
        if len(cols) > 4 and cols[4].startswith(lanes):
            total += int(cols[2])
    return total


def worker_counters(stack: Stack) -> dict[str, int]:
    """The sleeper's counters as the worker's heartbeats carry them: samples computed, requests withdrawn."""
    computed = cancelled = 0
    for entry in stack.status().stats:
        if entry.get("model") == MODEL:
            computed += int(entry.get("inference_count", 0))
            cancelled += int((entry.get("failure") or {}).get("cancelled", 0))
    return {"computed": computed, "cancelled": cancelled}


def canceled_metric(stack: Stack) -> float:
    _, samples = scrape(stack.url)
    return total(samples, "nv_inference_request_failure", model=MODEL, reason="CANCELED")


def computing(stack: Stack) -> bool:
    return any((w.get("computing") or {}).get("model") == MODEL for w in stack.status().workers)


def access_lines(stack: Stack, request_id: str) -> list[str]:
    lines = []
    for log in stack.settings.log_dir.glob("*.log"):
        lines += [line for line in log.read_text().splitlines() if f"request_id={request_id}" in line]
    return lines


def test_http_clients_gone_are_withdrawn_from_the_worker_and_the_dispatcher_queues_or_never_sent(
    served: tuple[Stack, int],
) -> None:
    stack, _ = served
    worker, dispatcher = worker_counters(stack), stack.status().dispatcher
    canceled = canceled_metric(stack)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, stack, LONG, "c1-first")  # alone in its gateway process: the direct lane
        wait_for(lambda: computing(stack), timeout=TIMEOUT, what="the worker to compute the first request")
        # Through the dispatcher (the gateway process has a request in flight): two reach the worker (its
        # capacity), which queues them behind the one computing; the third waits in the dispatcher.
        gone: list[socket.socket] = []
        try:
            gone.append(send_unread(stack, 0.5, "c1-queued-on-worker-a"))
            gone.append(send_unread(stack, 0.5, "c1-queued-on-worker-b"))
            wait_for(
                lambda: stack.status().dispatcher["pending"] == dispatcher["pending"] + 2,
                timeout=TIMEOUT,
                what="two requests on the worker",
            )
            gone.append(send_unread(stack, 0.5, "c1-queued-in-dispatcher"))
            wait_for(
                lambda: stack.status().models[MODEL]["1"]["queued"] == 1,
                timeout=TIMEOUT,
                what="a request queued in the dispatcher",
            )
            # Each of the four threads has a request: the next waits for one, and its client leaves first.
            send_unread(stack, 0.5, "c1-waiting-for-a-thread").close()
        finally:  # then the three others: their threads come free, the waiting request gets one
            for sock in gone:
                sock.close()
        wait_for(
            lambda: stack.status().dispatcher["cancelled"] == dispatcher["cancelled"] + 1,
            timeout=TIMEOUT,
            what="the dispatcher to withdraw the request it queued",
        )
        answer = first.result(timeout=TIMEOUT + LONG)
        wait_for(
            lambda: access_lines(stack, "c1-waiting-for-a-thread"),
            timeout=TIMEOUT,
            what="the gateway to give up the request that waited for a thread",
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2 * LONG]
    # the one that waited for a thread was never sent: three reached the dispatcher, the first went direct
    assert stack.status().dispatcher["requests"] == dispatcher["requests"] + 3
    after = post(stack, 0.0, "c1-after")  # the worker serves on
    assert after.status_code == 200 and after.json()["outputs"][0]["data"] == [0.0]
    wait_for(
        lambda: worker_counters(stack)["computed"] == worker["computed"] + 2,
        timeout=TIMEOUT,
        what="the worker to report the two requests it computed",
    )
    counted = worker_counters(stack)
    assert counted == {"computed": worker["computed"] + 2, "cancelled": worker["cancelled"] + 2}
    status = stack.status()
    assert status.dispatcher["pending"] == dispatcher["pending"] and status.models[MODEL]["1"]["queued"] == 0
    assert canceled_metric(stack) == canceled + 4
    _, samples = scrape(stack.url)  # and the counters behind them
    failed = total(samples, "torchgate_worker_request_failure_total", model=MODEL, reason="cancelled")
    assert failed == counted["cancelled"]
    assert total(samples, "torchgate_dispatcher_cancelled_total") == status.dispatcher["cancelled"]
    for request_id in (
        "c1-queued-on-worker-a",
        "c1-queued-on-worker-b",
        "c1-queued-in-dispatcher",
        "c1-waiting-for-a-thread",
    ):
        (line,) = access_lines(stack, request_id)
        assert f"POST /v2/models/{MODEL}/infer 499 " in line, line


def test_a_direct_request_whose_client_went_away_is_withdrawn_from_the_lane(
    served: tuple[Stack, int],
) -> None:
    """The gRPC server computes one request; the gateway process, with nothing in flight, sends the next one
    down the worker's direct lane, where it waits unread behind the one computing; its CANCEL follows it."""
    stack, grpc_port = served
    worker, dispatcher = worker_counters(stack), stack.status().dispatcher
    canceled = canceled_metric(stack)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[LONG]], dtype=np.float32))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.infer, MODEL, [x], client_timeout=TIMEOUT + LONG)
        wait_for(lambda: computing(stack), timeout=TIMEOUT, what="the worker to compute the first request")
        sock = send_unread(stack, 0.5, "c2-direct")
        try:  # its client leaves once it is in the lane (left sooner, it would never have been sent at all)
            wait_for(lambda: waiting_in_lanes(stack) > 0, timeout=TIMEOUT, what="the request in the lane")
        finally:
            sock.close()
        wait_for(
            lambda: canceled_metric(stack) == canceled + 1 and access_lines(stack, "c2-direct"),
            timeout=TIMEOUT,
            what="the gateway to give the request up",
        )
        result = first.result(timeout=TIMEOUT + LONG)
    assert result.as_numpy("y").tolist() == [[2 * LONG]]
    wait_for(
        lambda: worker_counters(stack)["cancelled"] == worker["cancelled"] + 1,
        timeout=TIMEOUT,
        what="the worker to withdraw the direct request",
    )
    assert worker_counters(stack)["computed"] == worker["computed"] + 1
    assert stack.status().dispatcher["requests"] == dispatcher["requests"], "it went through the dispatcher"
    (line,) = access_lines(stack, "c2-direct")
    assert " 499 " in line
    client.close()


def test_a_cancelled_grpc_call_is_withdrawn(served: tuple[Stack, int]) -> None:
    """tritonclient's own cancellation (``async_infer(...).cancel()``), as Triton takes it since 23.10."""
    stack, grpc_port = served
    worker, dispatcher = worker_counters(stack), stack.status().dispatcher
    canceled = canceled_metric(stack)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    first_x = grpcclient.InferInput("x", [1, 1], "FP32")
    first_x.set_data_from_numpy(np.array([[LONG]], dtype=np.float32))
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[0.5]], dtype=np.float32))
    outcomes: list[Any] = []
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.infer, MODEL, [first_x], client_timeout=TIMEOUT + LONG)
        wait_for(lambda: computing(stack), timeout=TIMEOUT, what="the worker to compute the first request")
        # the gRPC server has a request in flight: this one goes through the dispatcher, to the worker
        call = client.async_infer(MODEL, [x], lambda result, error: outcomes.append(error or result))
        wait_for(lambda: stack.status().dispatcher["pending"] == dispatcher["pending"] + 1, timeout=TIMEOUT)
        call.cancel()
        wait_for(lambda: canceled_metric(stack) == canceled + 1, timeout=TIMEOUT, what="the call given up")
        result = first.result(timeout=TIMEOUT + LONG)
    assert result.as_numpy("y").tolist() == [[2 * LONG]]
    wait_for(lambda: outcomes, timeout=TIMEOUT, what="the cancelled call's callback")
    assert "CANCELLED" in str(outcomes[0]).upper()
    wait_for(
        lambda: worker_counters(stack)["cancelled"] == worker["cancelled"] + 1,
        timeout=TIMEOUT,
        what="the worker to withdraw the cancelled call",
    )
    assert worker_counters(stack)["computed"] == worker["computed"] + 1
    assert stack.status().dispatcher["pending"] == dispatcher["pending"]
    client.close()


def test_a_cancelled_stream_withdraws_its_requests_in_flight(served: tuple[Stack, int]) -> None:
    """``stop_stream(cancel_requests=True)``: the one computing runs to its end, the one queued is
    withdrawn."""
    stack, grpc_port = served
    worker, dispatcher = worker_counters(stack), stack.status().dispatcher
    canceled = canceled_metric(stack)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    inputs = []
    for seconds in (LONG, 0.5):
        x = grpcclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[seconds]], dtype=np.float32))
        inputs.append(x)
    outcomes: list[Any] = []
    client.start_stream(lambda result, error: outcomes.append(error or result))
    try:
        client.async_stream_infer(MODEL, [inputs[0]], request_id="c4-computing")
        wait_for(lambda: computing(stack), timeout=TIMEOUT, what="the worker to compute the first request")
        client.async_stream_infer(MODEL, [inputs[1]], request_id="c4-queued")
        wait_for(lambda: stack.status().dispatcher["pending"] == dispatcher["pending"] + 1, timeout=TIMEOUT)
    finally:
        client.stop_stream(cancel_requests=True)
    wait_for(lambda: canceled_metric(stack) == canceled + 2, timeout=TIMEOUT, what="both given up")
    wait_for(
        lambda: (
            worker_counters(stack)
            == {"computed": worker["computed"] + 1, "cancelled": worker["cancelled"] + 1}
        ),
        timeout=TIMEOUT + LONG,
        what="the worker to finish the first and withdraw the second",
    )
    assert stack.status().dispatcher["pending"] == dispatcher["pending"]
    assert not any(not isinstance(o, Exception) for o in outcomes), "an answer after the stream was cancelled"
    client.close()
