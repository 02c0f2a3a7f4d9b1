"""Backend-core figures: round trips through the dispatcher and served vs direct digits throughput.

    python -m benchmarks.wire [--seconds 5] [--workers 2]

Starts a real dispatcher and real CPU workers (no HTTP), and measures, side by side in one run:
1. round-trip time of a 1 KiB and a 16 MiB FP32 tensor through dispatcher and worker (an echo model),
   against a bare pyzmq echo (one hop, zero-copy) and against the same trip with the tensor inside msgpack;
2. digits samples/s served with many requests in flight, against the model called directly in a loop.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch
import zmq

from inference_worker import protocol
from inference_worker.protocol import Link, TensorMeta
from inference_worker.status import query_status

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "deploy" / "model_repository"

ECHO_CONFIG = """
name = "echo"
backend = "python"
factory = "echo:build"
max_batch_size = 0
[[input]]
name = "x"
datatype = "FP32"
dims = [-1]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1]
"""
ECHO_MODULE = """
import torch
class Echo(torch.nn.Module):
    def forward(self, x):
        return x
def build():
    return Echo()
"""


def echo_repository(root: Path) -> Path:
    from safetensors.torch import save_file

    folder = root / "echo"
    (folder / "1").mkdir(parents=True)
    (folder / "config.toml").write_text(ECHO_CONFIG)
    (folder / "echo.py").write_text(ECHO_MODULE)
    save_file({}, str(folder / "1" / "model.safetensors"))
    return root


class Stack:
    """A dispatcher and workers as real processes; stopped on exit."""

    def __init__(self, run_dir: Path, repositories: list[Path], workers: int) -> None:
        self.frontend, backend = f"ipc://{run_dir}/frontend.sock", f"ipc://{run_dir}/backend.sock"
        py = sys.executable
        self.procs = [
            subprocess.Popen(
                [py, "-m", "inference_worker.dispatcher", "--frontend", self.frontend, "--backend", backend],
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        ]
        for i in range(workers):
            for repo in repositories:
                self.procs.append(
                    subprocess.Popen(
                        [
                            py,
                            "-m",
                            "inference_worker.worker",
                            "--model-repository",
                            str(repo),
                            "--dispatcher",
                            backend,
                            "--name",
                            f"{repo.name}-{i}",
                            "--device",
                            "cpu",
                            "--threads",
                            "1",
                        ],
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        self.expected = workers * len(repositories)

    def wait_ready(self, context: zmq.Context, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if len(query_status(self.frontend, 1.0, context).workers) >= self.expected:
                    return
            except TimeoutError:
                pass
            time.sleep(0.2)
        raise TimeoutError("workers not ready")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def call(sock: zmq.Socket, model: str, name: str, array: np.ndarray) -> protocol.Reply:
    request_id = uuid.uuid4().hex
    inputs = [(TensorMeta(name, "FP32", array.shape), array)]
    sock.send_multipart(
        protocol.Request(request_id, model, inputs, deadline=time.time() + 60).frames(), copy=False
    )
    while True:
        if not sock.poll(60_000):
            raise TimeoutError(model)
        message = protocol.receive(sock.recv_multipart(copy=False), Link.DISPATCHER_TO_GATEWAY)
        if message.id == request_id:
            assert isinstance(message, protocol.Reply), message
            return message


def time_calls(fn: Any, seconds: float, min_calls: int = 5) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bare_echo(context: zmq.Context, endpoint: str, stop: threading.Event) -> None:
    sock = context.socket(zmq.ROUTER)
    sock.bind(endpoint)
    while not stop.is_set():
        if sock.poll(100):
            sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
    sock.close(linger=0)


def round_trips(
    context: zmq.Context, stack: Stack, run_dir: Path, seconds: float
) -> list[tuple[str, str, float]]:
    rows = []
    sock = context.socket(zmq.DEALER)
    sock.connect(stack.frontend)
    stop = threading.Event()
    bare = f"ipc://{run_dir}/bare.sock"
    server = threading.Thread(target=bare_echo, args=(context, bare, stop))
    server.start()
    bare_sock = context.socket(zmq.DEALER)
    bare_sock.connect(bare)
    for label, nbytes in (("1 KiB", 1 << 10), ("16 MiB", 16 << 20)):
        array = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
        reply = call(sock, "echo", "x", array)
        assert np.array_equal(np.frombuffer(reply.outputs[0][1], np.float32), array)
        through = statistics.median(time_calls(lambda a=array: call(sock, "echo", "x", a), seconds))

        def bare_trip(a: np.ndarray = array) -> None:
            bare_sock.send_multipart([b"h", a], copy=False)
            bare_sock.recv_multipart(copy=False)

        direct = statistics.median(time_calls(bare_trip, seconds))
        packed = array.tobytes()
        inline = statistics.median(
            time_calls(lambda p=packed: msgpack.unpackb(msgpack.packb({"data": p}), raw=False), seconds)
        )
        framed = statistics.median(
            time_calls(
                lambda a=array: protocol.decode(
                    protocol.Request("x", "m", [(TensorMeta("x", "FP32", a.shape), a)]).frames()
                ),
                seconds,
            )
        )
        rows += [
            (label, "through dispatcher + worker (4 hops)", through),
            (label, "bare pyzmq echo (2 hops)", direct),
            (label, "encode+decode, tensor in its own frame", framed),
            (label, "encode+decode, tensor inside msgpack", inline),
        ]
    stop.set()
    server.join()
    sock.close(linger=0)
    bare_sock.close(linger=0)
    return rows


def served_throughput(context: zmq.Context, stack: Stack, seconds: float, in_flight: int = 64) -> float:
    """Samples/s of digits with ``in_flight`` one-sample requests outstanding at all times."""
    sock = context.socket(zmq.DEALER)
    sock.connect(stack.frontend)
    x = np.random.default_rng(1).integers(0, 17, size=(1, 64)).astype(np.float32)
    inputs = [(TensorMeta("input", "FP32", (1, 64)), x)]
    frames = lambda: protocol.Request(uuid.uuid4().hex, "digits", inputs, deadline=time.time() + 60).frames()  # noqa: E731
    for _ in range(in_flight):
        sock.send_multipart(frames())
    done, end = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        if not sock.poll(60_000):
            raise TimeoutError("digits")
        message = protocol.receive(sock.recv_multipart(copy=False), Link.DISPATCHER_TO_GATEWAY)
        assert isinstance(message, protocol.Reply), message
        done += 1
        sock.send_multipart(frames())
    elapsed = time.perf_counter() - start
    for _ in range(in_flight):
        sock.poll(60_000) and sock.recv_multipart()
    sock.close(linger=0)
    return done / elapsed


def direct_throughput(seconds: float, batch: int) -> float:
    torch.set_num_threads(1)
    model = torch.export.load(str(DIGITS / "digits" / "1" / "model.pt2")).module()
    x = torch.randint(0, 17, (batch, 64)).float()
    with torch.inference_mode():
        times = time_calls(lambda: model(x), seconds)
    return batch * len(times) / sum(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="CPU workers (each with one torch thread)")
    args = parser.parse_args()
    context = zmq.Context()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        stack = Stack(run_dir, [echo_repository(run_dir / "echo-repo"), DIGITS], args.workers)
        try:
            stack.wait_ready(context)
            print(
                f"## Round trips (median of {args.seconds:.0f} s each)\n\n| tensor | "
                "path | median |\n|---|---|---|"
            )
            for label, path, seconds in round_trips(context, stack, run_dir, args.seconds):
                print(f"| {label} | {path} | {seconds * 1e3:.3f} ms |")
            rows = []
            for _ in range(2):  # interleaved: direct, served, direct, served
                rows.append(("direct, batch 64, 1 thread", direct_throughput(args.seconds, 64)))
                rows.append(("direct, batch 1, 1 thread", direct_throughput(args.seconds, 1)))
                rows.append(
                    (
                        f"served, {args.workers} worker(s) x 1 thread, 64 one-sample requests in flight",
                        served_throughput(context, stack, args.seconds),
                    )
                )
            print(
                "\n## Digits throughput (two interleaved rounds)\n\n| system | "
                "samples/s | ratio to direct batch 64 |\n|---|---|---|"
            )
            best = {name: max(v for n, v in rows if n == name) for name, _ in rows}
            for name, value in best.items():
                print(f"| {name} | {value:,.0f} | {value / best['direct, batch 64, 1 thread']:.2f} |")
        finally:
            stack.stop()
    context.destroy(linger=0)


if __name__ == "__main__":
    main()
