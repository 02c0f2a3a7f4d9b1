"""The worker loop before and after a change, side by side: digits through a real dispatcher and CPU worker.

    python -m benchmarks.worker_pipeline --before 13b909c [--seconds 4] [--rounds 2]

Checks the ``--before`` revision out in a temporary git worktree and runs its dispatcher and worker (one torch
thread) against this tree's, alternately, ``--rounds`` times each: one request at a time (p50/p99 round trip)
and 32 one-sample requests in flight (samples/s). No HTTP: what the worker loop costs, not the gateway.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inference_worker import protocol
from inference_worker.protocol import Link, TensorMeta
from inference_worker.status import query_status

ROOT = Path(__file__).resolve().parent.parent


class Backend:
    """A dispatcher and one CPU worker of the code in ``tree``."""

    def __init__(self, tree: Path, run: Path) -> None:
        run.mkdir(parents=True, exist_ok=True)
        self.frontend, backend = f"ipc://{run}/f.sock", f"ipc://{run}/b.sock"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        common: dict[str, Any] = {
            "cwd": tree,
            "env": env,
            "stderr": subprocess.DEVNULL,
            "start_new_session": True,
        }
        py = sys.executable
        self.procs = [
            subprocess.Popen(
                [py, "-m", "inference_worker.dispatcher", "--frontend", self.frontend, "--backend", backend],
                **common,
            ),
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "inference_worker.worker",
                    "--model-repository",
                    str(tree / "deploy" / "model_repository"),
                    "--dispatcher",
                    backend,
                    "--name",
                    "w0",
                    "--device",
                    "cpu",
                    "--threads",
                    "1",
                ],
                **common,
            ),
        ]

    def wait_ready(self, context: zmq.Context[Any], timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if query_status(self.frontend, 1.0, context).ready_workers():
                    return
            except TimeoutError:
                pass
            time.sleep(0.2)
        raise TimeoutError("worker not ready")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def request(x: np.ndarray) -> list[Any]:
    inputs = [(TensorMeta("input", "FP32", x.shape), x)]
    return protocol.Request(uuid.uuid4().hex, "digits", inputs, deadline=time.time() + 60).frames()


def answer(sock: zmq.Socket[Any]) -> None:
    if not sock.poll(60_000):
        raise TimeoutError("no answer")
    message = protocol.receive(sock.recv_multipart(copy=False), Link.DISPATCHER_TO_GATEWAY)
    assert isinstance(message, protocol.Reply), message


def latency_ms(sock: zmq.Socket[Any], seconds: float) -> tuple[float, float]:
    x = np.random.default_rng(1).integers(0, 17, size=(1, 64)).astype(np.float32)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sock.send_multipart(request(x))
        answer(sock)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def throughput(sock: zmq.Socket[Any], seconds: float, in_flight: int = 32) -> float:
    x = np.random.default_rng(2).integers(0, 17, size=(1, 64)).astype(np.float32)
    for _ in range(in_flight):
        sock.send_multipart(request(x))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        answer(sock)
        done += 1
        sock.send_multipart(request(x))
    elapsed = time.perf_counter() - start
    for _ in range(in_flight):
        answer(sock)
    return done / elapsed


def measure(tree: Path, run: Path, seconds: float, context: zmq.Context[Any]) -> tuple[float, float, float]:
    backend = Backend(tree, run)
    try:
        backend.wait_ready(context)
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(backend.frontend)
        try:
            latency_ms(sock, 1.0)  # warm
            p50, p99 = latency_ms(sock, seconds)
            rate = throughput(sock, seconds)
        finally:
            sock.close(linger=0)
        return p50, p99, rate
    finally:
        backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            rows: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": []}
            with zmq.Context() as context:
                for k in range(args.rounds):
                    for label, tree in (("before", before), ("after", ROOT)):
                        rows[label].append(
                            measure(tree, Path(tmp) / f"run-{label}-{k}", args.seconds, context)
                        )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    print(
        f"| code | c=1 p50 ms | c=1 p99 ms | 32 in flight, samples/s |"
        f"  (rounds: {args.rounds}, {args.seconds:g} s each)"
    )
    print("|---|---|---|---|")
    for label, results in rows.items():
        p50 = statistics.median(r[0] for r in results)
        p99 = statistics.median(r[1] for r in results)
        rate = statistics.median(r[2] for r in results)
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {rate:.0f} |")
    b, a = rows["before"], rows["after"]
    print(
        f"after/before: c=1 p50 x"
        f"{statistics.median(r[0] for r in a) / statistics.median(r[0] for r in b):.2f}, "
        f"throughput x{statistics.median(r[2] for r in a) / statistics.median(r[2] for r in b):.2f}"
    )


if __name__ == "__main__":
    main()
