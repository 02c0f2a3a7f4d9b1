"""The dispatcher's CPU per request, before and after a change, side by side: no HTTP, no model.

    python -m benchmarks.dispatcher --before 375fe85 [--seconds 6] [--rounds 3] [--in-flight 32]

Checks the ``--before`` revision out in a temporary git worktree and runs its dispatcher and this tree's,
alternately, ``--rounds`` times each. This process plays the gateways (8 sockets, REQUEST of one 784-float
input as the gateway builds it) and two workers (READY, heartbeats, a REPLY of 10 floats for every REQUEST,
answered at once) over ipc, keeping ``--in-flight`` requests in flight, and reads the dispatcher's CPU time
(user + system, its ZeroMQ I/O thread included) from /proc. Prints requests/s and the dispatcher's CPU
milliseconds per answered request for each round, then the medians and their ratio.
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
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil
import zmq

from benchmarks.procs import checkout
from inference_worker import protocol
from inference_worker.protocol import TensorMeta

ROOT = Path(__file__).resolve().parent.parent
GATEWAYS = 8
WORKERS = 2
CAPACITY = 32  # per worker, as a CPU worker with max_batch_size 16 announces


class FakePeers:
    """Gateway sockets and worker sockets that speak the wire to one dispatcher, answering at once."""

    def __init__(self, context: zmq.Context[Any], frontend: str, backend: str) -> None:
        self.gateways = []
        for g in range(GATEWAYS):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, f"gw-{g}".encode())
            sock.connect(frontend)
            self.gateways.append(sock)
        self.workers = []
        for w in range(WORKERS):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, f"wk-{w}".encode())
            sock.connect(backend)
            self.workers.append(sock)
        self.poller = zmq.Poller()
        for sock in self.gateways + self.workers:
            self.poller.register(sock, zmq.POLLIN)
        self.x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
        self.y = np.zeros((1, 10), dtype=np.float32)
        self.next_id = 0
        self.errors = 0
        self.next_heartbeat = 0.0

    def announce(self) -> None:
        for w, sock in enumerate(self.workers):
            ready = protocol.Ready(
                worker=f"w{w}",
                incarnation=f"i{w}-{time.time()}",
                capacity=CAPACITY,
                models=[{"name": "mlp", "version": "1", "max_batch_size": 16, "max_queue_size": 1024}],
                pid=os.getpid(),
                device="cpu",
            )
            sock.send_multipart(ready.frames())

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + 0.5
            for sock in self.workers:
                sock.send_multipart(protocol.Heartbeat(incarnation="x", stats=[]).frames())

    def send_request(self) -> None:
        self.next_id += 1
        sock = self.gateways[self.next_id % GATEWAYS]
        frames = protocol.Request(
            id=f"{self.next_id:x}",
            model="mlp",
            inputs=[(TensorMeta("input", "FP32", self.x.shape), self.x)],
            deadline=time.time() + 30,
            request_id="",
        ).frames()
        sock.send_multipart(frames, copy=False)

    def step(self, timeout_ms: int) -> int:
        """Answer what arrived; return the requests answered to a gateway in this step."""
        done = 0
        for sock, _ in self.poller.poll(timeout_ms):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                header = msgpack.unpackb(frames[0].buffer)
                kind = header.get("kind")
                if sock in self.gateways:
                    if kind == "REPLY":
                        done += 1
                    elif kind == "ERROR":
                        self.errors += 1
                        done += 1
                elif kind == "REQUEST":
                    reply = protocol.WorkerReply(
                        header["seq"],
                        [(TensorMeta("output", "FP32", self.y.shape), self.y)],
                        {"queue_ns": 1, "compute_infer_ns": 1, "batch_size": 1},
                    )
                    sock.send_multipart(reply.frames(), copy=False)
        self.heartbeat()
        return done

    def close(self) -> None:
        for sock in self.gateways + self.workers:
            sock.close(linger=0)


def dispatcher_cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def measure(
    tree: Path, run: Path, seconds: float, in_flight: int, rate: float, context: zmq.Context[Any]
) -> tuple[float, float]:
    """Return (requests/s, dispatcher CPU ms per request) for the dispatcher of ``tree``."""
    run.mkdir(parents=True, exist_ok=True)
    frontend, backend = f"ipc://{run}/f.sock", f"ipc://{run}/b.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_worker.dispatcher", "--frontend", frontend, "--backend", backend],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    peers = FakePeers(context, frontend, backend)
    try:
        peers.announce()
        peers.send_request()  # the first answer says the workers are registered
        end = time.monotonic() + 60
        while peers.step(100) == 0:
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("the dispatcher did not answer")
        outstanding = 1
        interval = 1.0 / rate if rate else 0.0
        next_send = time.monotonic()
        ps = psutil.Process(proc.pid)
        cpu0 = t0 = 0.0
        answered = 0
        warm_end = time.monotonic() + 1.0
        while True:
            now = time.monotonic()
            if t0 == 0.0 and now >= warm_end:
                cpu0, t0, answered = dispatcher_cpu(ps), now, 0
            elif t0 and now - t0 >= seconds:
                break
            while outstanding < in_flight and now >= next_send:
                peers.send_request()
                outstanding += 1
                next_send = max(next_send + interval, now - 0.1) if interval else now
            wait = next_send - now if outstanding < in_flight else 0.1
            done = peers.step(max(0, int(wait * 1000)))
            outstanding -= done
            answered += done
        cpu1, t1 = dispatcher_cpu(ps), time.monotonic()
        if peers.errors:
            raise RuntimeError(f"{peers.errors} requests failed")
        return answered / (t1 - t0), (cpu1 - cpu0) / max(1, answered) * 1000
    finally:
        peers.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument(
        "--rate",
        type=float,
        default=700.0,
        help="requests/s the gateways send at most; 0: as fast as answered",
    )
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        with checkout(args.before, ROOT, Path(tmp) / "before") as before, zmq.Context() as context:
            for k in range(args.rounds):
                for label, tree in (("before", before), ("after", ROOT)):
                    rate, ms = measure(
                        tree,
                        Path(tmp) / f"run-{label}-{k}",
                        args.seconds,
                        args.in_flight,
                        args.rate,
                        context,
                    )
                    rows[label].append((rate, ms))
                    print(
                        f"round {k + 1} {label}: {rate:,.0f} req/s, dispatcher {ms:.3f} ms CPU/request",
                        flush=True,
                    )
    print(
        f"| dispatcher | requests/s | CPU ms/request |  ({args.rounds} rounds of {args.seconds:g} s, "
        f"{args.in_flight} in flight, at most {args.rate:g}/s)"
    )
    print("|---|---|---|")
    for label, results in rows.items():
        rate = statistics.median(r[0] for r in results)
        ms = statistics.median(r[1] for r in results)
        print(f"| {label} ({args.before if label == 'before' else 'this tree'}) | {rate:,.0f} | {ms:.3f} |")
    b = statistics.median(r[1] for r in rows["before"])
    a = statistics.median(r[1] for r in rows["after"])
    print(f"after/before CPU per request: x{a / b:.2f}")


if __name__ == "__main__":
    main()
