"""The gRPC server's peak memory while one stream sends many large requests that wait for a dispatcher that
does not answer (each fails after ``TORCHGATE_UNRESPONSIVE_AFTER``): what the byte budget bounds, and what it
does not (what grpcio's transport takes in ahead).

    python -m benchmarks.grpc_stream_memory [--requests 40] [--mib 32] [--budget BYTES]

Starts ``gateway.grpc_server`` of the tree it runs from, alone, samples its resident memory every 50 ms, and
prints the peak once every request of the stream is answered.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from harness import DEFAULT_REPOSITORY, free_port


def peak_rss(requests: int, mib: int, budget: int | None) -> tuple[int, int, int]:
    """Return (resident bytes before, peak, requests answered)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "TORCHGATE_DISPATCHER": f"ipc://{folder}/nobody.sock",
            "TORCHGATE_MODEL_REPOSITORY": str(DEFAULT_REPOSITORY),
            "TORCHGATE_UNRESPONSIVE_AFTER": "3",
        }
        if budget is not None:
            env["TORCHGATE_GATEWAY_BODY_BUDGET"] = str(budget)
        command = [sys.executable, "-m", "gateway.grpc_server", "--port", str(port), "--threads", "4"]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak, stop = [0], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    with open(f"/proc/{proc.pid}/statm") as f:
                        peak[0] = max(peak[0], int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
                except OSError:
                    pass
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()
        try:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.is_server_live(client_timeout=1):
                        break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            before = peak[0]
            tensor = grpcclient.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
            answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
            client.start_stream(callback=lambda result, error: answers.put(error))
            pad = "x" * (mib << 20)  # a request of ``mib`` MiB: its parameter
            for i in range(requests):
                client.async_stream_infer("digits", [tensor], request_id=f"s-{i}", parameters={"pad": pad})
            for _ in range(requests):
                answers.get(timeout=600)  # each answered (with the dispatcher's error)
            answered = requests
            client.stop_stream()
            return before, peak[0], answered
        finally:
            stop.set()
            proc.kill()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--mib", type=int, default=32, help="size of each request")
    parser.add_argument(
        "--budget", type=int, default=None, help="TORCHGATE_GATEWAY_BODY_BUDGET (default: unset)"
    )
    args = parser.parse_args()
    before, peak, answered = peak_rss(args.requests, args.mib, args.budget)
    print(
        f"{args.requests} requests of {args.mib} MiB on one stream, budget {args.budget or 'default'}: "
        f"{answered} answered; gRPC server resident {before / 2**20:.0f} MiB before, "
        f"peak {peak / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
