"""Talk to a dispatcher over ZeroMQ as the gateway does: STATUS, REQUESTs with a timeout, threads of load."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from inference_worker import protocol
from inference_worker.protocol import Link, StatusReply, TensorMeta
from inference_worker.status import query_status

if TYPE_CHECKING:
    import torch


def dispatcher_status(frontend: str, timeout: float = 2.0) -> StatusReply | None:
    """Ask the dispatcher at ``frontend`` for its STATUS; None if it does not answer in time."""
    try:
        return query_status(frontend, timeout)
    except TimeoutError:
        return None


def ready_workers(frontend: str) -> set[str]:
    """Return the names of the workers the dispatcher counts as ready (none if it does not answer)."""
    status = dispatcher_status(frontend)
    return set() if status is None else status.ready_workers()


Answer = protocol.Reply | protocol.Error  # what a REQUEST gets back


class Client:
    """A gateway-like DEALER socket that sends REQUESTs and waits, with a timeout, for their answers."""

    def __init__(self, context: zmq.Context[Any], frontend: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(frontend)
        self.answers: dict[str, Answer] = {}  # answers that arrived while waiting for another

    def close(self) -> None:
        """Close the socket at once."""
        self.socket.close(linger=0)

    def send(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        timeout: float = 30.0,
        deadline: float | None = None,
        version: str | None = None,
    ) -> str:
        """Send one REQUEST of FP32 ``inputs``; return its id."""
        request_id = uuid.uuid4().hex
        tensors = [
            (TensorMeta(name, "FP32", tuple(a.shape)), np.ascontiguousarray(a)) for name, a in inputs.items()
        ]
        request = protocol.Request(
            request_id, model, tensors, version, deadline or time.time() + timeout, request_id=request_id
        )
        self.socket.send_multipart(request.frames())
        return request_id

    def receive(self, request_id: str, timeout: float = 60.0) -> Answer:
        """Wait for the answer to ``request_id``; TimeoutError after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if request_id in self.answers:
                return self.answers.pop(request_id)
            if self.socket.poll(int(left * 1000) + 1):
                message = protocol.receive(self.socket.recv_multipart(), Link.DISPATCHER_TO_GATEWAY)
                if isinstance(message, protocol.Reply | protocol.Error):
                    self.answers[message.id] = message
        raise TimeoutError(f"no answer to {request_id} in {timeout}s")

    def infer(self, model: str, inputs: dict[str, np.ndarray], timeout: float = 30.0, **kw: Any) -> Answer:
        """Send one REQUEST and wait for its answer."""
        return self.receive(self.send(model, inputs, timeout, **kw), timeout + 30)


def outputs(message: Answer) -> dict[str, np.ndarray]:
    """Return the FP32 output tensors of a REPLY by name."""
    assert isinstance(message, protocol.Reply), message
    return {meta.name: np.frombuffer(buf, np.float32).reshape(meta.shape) for meta, buf in message.outputs}


def send_digits(
    context: zmq.Context[Any],
    frontend: str,
    requests: int,
    threads: int = 8,
    samples: int = 3,
    seed: int = 0,
    during: threading.Event | None = None,
) -> list[tuple[np.ndarray, Answer]]:
    """Send ``requests`` digits requests of 1..``samples`` rows from ``threads`` threads; return (input,
    answer).

    ``during`` is set once the first answer came, so a test can act while the rest are in flight.
    """
    rng = np.random.default_rng(seed)
    inputs = [
        rng.integers(0, 17, size=(int(rng.integers(1, samples + 1)), 64)).astype(np.float32)
        for _ in range(requests)
    ]

    def run(chunk: list[np.ndarray]) -> list[tuple[np.ndarray, Answer]]:
        client = Client(context, frontend)
        try:
            results = []
            for x in chunk:
                results.append((x, client.infer("digits", {"input": x}, timeout=60)))
                if during is not None:
                    during.set()
            return results
        finally:
            client.close()

    with ThreadPoolExecutor(threads) as pool:
        chunks = [inputs[i::threads] for i in range(threads)]
        return [pair for part in pool.map(run, chunks) for pair in part]


def assert_all_match(pairs: list[tuple[np.ndarray, Answer]], model: torch.nn.Module) -> None:
    """Every answer is a REPLY whose output is what ``model`` computes for its input."""
    import torch

    for x, message in pairs:
        got = outputs(message)["output"]
        with torch.inference_mode():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
