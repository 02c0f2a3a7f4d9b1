"""The worker loop before and after a change, side by side: a model through a real dispatcher and CPU worker.

    python -m benchmarks.worker_pipeline --before 13b909c [--workload digits|mlp] [--seconds 4] [--rounds 2]

Checks the ``--before`` revision out in a temporary git worktree and runs its dispatcher and worker (one torch
thread) against this tree's, alternately, ``--rounds`` times each: one request at a time (p50/p99 round trip,
and the worker's CPU milliseconds per request) and 32 one-sample requests in flight (samples/s, and the CPU
milliseconds the worker and the dispatcher spent per answered request). No HTTP: what the worker loop costs,
not the gateway. ``digits`` is the shipped repository's model; ``mlp`` is the benchmarks' MLP 784-1024-1024-10
(``benchmarks.models``), exported once.
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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from benchmarks.procs import checkout
from inference_worker import protocol
from inference_worker.protocol import Link, TensorMeta
from inference_worker.status import query_status

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Model:
    """What the worker serves: its repository (None: the tree's shipped one), name and input width."""

    name: str
    width: int
    repository: Path | None = None


def pick_model(workload: str) -> Model:
    if workload == "digits":
        return Model("digits", 64)
    from benchmarks.models import WORKLOAD_SPECS, write_repository
    from benchmarks.settings import WORK_DIR, BenchSettings

    settings = replace(BenchSettings(), max_batch_delay_ms=0.0)  # as benchmarks.cpu runs it
    root = write_repository(settings, (workload,), root=WORK_DIR / "worker_pipeline_repository")
    spec = WORKLOAD_SPECS[workload]
    return Model(spec.model_name, spec.inputs[0].dims[0], root)


class Backend:
    """A dispatcher and one CPU worker of the code in ``tree``."""

    def __init__(self, tree: Path, run: Path, model: Model) -> None:
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
                    str(model.repository or tree / "deploy" / "model_repository"),
                    "--dispatcher",
                    backend,
                    "--name",
                    "w0",
                    "--device",
                    "cpu",
                    "--threads",
                    "1",
                    "--model",
                    model.name,
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


def request(x: np.ndarray, model: str) -> list[Any]:
    inputs = [(TensorMeta("input", "FP32", x.shape), x)]
    return protocol.Request(uuid.uuid4().hex, model, inputs, deadline=time.time() + 60).frames()


def answer(sock: zmq.Socket[Any]) -> None:
    if not sock.poll(60_000):
        raise TimeoutError("no answer")
    message = protocol.receive(sock.recv_multipart(copy=False), Link.DISPATCHER_TO_GATEWAY)
    assert isinstance(message, protocol.Reply), message


def latency_ms(
    sock: zmq.Socket[Any], seconds: float, model: Model, procs: list[subprocess.Popen[bytes]]
) -> tuple[float, float, list[float]]:
    """Return the p50 and p99 round trip one request at a time, and each process's CPU ms per request."""
    x = np.random.default_rng(1).integers(0, 17, size=(1, model.width)).astype(np.float32)
    times, end, before = [], time.perf_counter() + seconds, cpu_seconds(procs)
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sock.send_multipart(request(x, model.name))
        answer(sock)
        times.append((time.perf_counter() - t0) * 1000)
    after = cpu_seconds(procs)
    times.sort()
    per_request = [(a - b) * 1000 / max(1, len(times)) for a, b in zip(after, before, strict=True)]
    return statistics.median(times), times[int(len(times) * 0.99)], per_request


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> list[float]:
    """User + system CPU seconds of each process so far."""
    return [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs]


def throughput(
    sock: zmq.Socket[Any],
    seconds: float,
    model: Model,
    procs: list[subprocess.Popen[bytes]],
    in_flight: int = 32,
) -> tuple[float, list[float]]:
    """Return samples/s with ``in_flight`` requests outstanding, and each process's CPU ms per answer."""
    x = np.random.default_rng(2).integers(0, 17, size=(1, model.width)).astype(np.float32)
    for _ in range(in_flight):
        sock.send_multipart(request(x, model.name))
    done, start, before = 0, time.perf_counter(), cpu_seconds(procs)
    while time.perf_counter() - start < seconds:
        answer(sock)
        done += 1
        sock.send_multipart(request(x, model.name))
    elapsed, after = time.perf_counter() - start, cpu_seconds(procs)
    for _ in range(in_flight):
        answer(sock)
    return done / elapsed, [(a - b) * 1000 / max(1, done) for a, b in zip(after, before, strict=True)]


# p50 ms, p99 ms, worker CPU ms per request at c=1, samples/s, dispatcher and worker CPU ms at 32 in flight
Row = tuple[float, float, float, float, float, float]


def measure(tree: Path, run: Path, seconds: float, context: zmq.Context[Any], model: Model) -> Row:
    backend = Backend(tree, run, model)
    try:
        backend.wait_ready(context)
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(backend.frontend)
        try:
            latency_ms(sock, 1.0, model, backend.procs)  # warm
            p50, p99, (_, worker_c1_ms) = latency_ms(sock, seconds, model, backend.procs)
            rate, (dispatcher_ms, worker_ms) = throughput(sock, seconds, model, backend.procs)
        finally:
            sock.close(linger=0)
        return p50, p99, worker_c1_ms, rate, dispatcher_ms, worker_ms
    finally:
        backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--workload", default="digits", choices=("digits", "mlp"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = pick_model(args.workload)
    rows: dict[str, list[Row]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        with checkout(args.before, ROOT, Path(tmp) / "before") as before, zmq.Context() as context:
            for k in range(args.rounds):
                for label, tree in (("before", before), ("after", ROOT)):
                    rows[label].append(
                        measure(tree, Path(tmp) / f"run-{label}-{k}", args.seconds, context, model)
                    )
    print(
        f"| code | c=1 p50 ms | c=1 p99 ms | c=1 worker CPU ms/request | 32 in flight, samples/s | "
        f"worker CPU ms/request | dispatcher CPU ms/request |  "
        f"({model.name}, rounds: {args.rounds}, {args.seconds:g} s each)"
    )
    print("|---|---|---|---|---|---|---|")
    for label, results in rows.items():  # every round, then the medians
        for k, r in enumerate(results):
            print(f"| {label} round {k + 1} | " + " | ".join(_cells(r)) + " |")
    med = {
        label: [statistics.median(r[i] for r in results) for i in range(6)] for label, results in rows.items()
    }
    for label, row in med.items():
        print(f"| {label} (median) | " + " | ".join(_cells(row)) + " |")
    b, a = med["before"], med["after"]
    print(
        f"after/before: c=1 p50 x{a[0] / b[0]:.2f}, c=1 worker CPU per request x{a[2] / b[2]:.2f}, "
        f"throughput x{a[3] / b[3]:.2f}, worker CPU per request at 32 in flight x{a[5] / b[5]:.2f}"
    )


def _cells(row: Sequence[float]) -> list[str]:
    p50, p99, worker_c1_ms, rate, dispatcher_ms, worker_ms = row
    return [
        f"{p50:.2f}",
        f"{p99:.2f}",
        f"{worker_c1_ms:.3f}",
        f"{rate:.0f}",
        f"{worker_ms:.3f}",
        f"{dispatcher_ms:.3f}",
    ]


if __name__ == "__main__":
    main()
