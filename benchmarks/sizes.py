"""What a tensor's size costs each process: ``python -m benchmarks.sizes [--seconds 3] [--sizes
1K,600K,16M] [--client-shm]``.

Starts ``torchgate serve`` (1 gateway process, the dispatcher, 1 CPU worker) on an echo model (returns its
input) and, for each tensor size, sends binary infer requests one after the other on one kept-alive connection
for ``--seconds``, checking every answer's bytes. It prints, per size:

- the HTTP round trip (p50) and each process's CPU per request: the gateway's (read the body, parse, send to
  the dispatcher, write the answer), the dispatcher's and the worker's;
- delivery to the worker without HTTP: a ZeroMQ client on the same dispatcher, a REQUEST to the worker and its
  REPLY back (p50), against two bare pyzmq hops;
- staging: the worker's own ``compute_input`` per request (turning the received frames into the batch's input
  tensors; on a GPU, pinned memory and the copy to the device).

With ``--client-shm`` (the server runs with ``--allow-client-shm``) each size also runs as a Triton client on
this host would with system shared memory: the input and the output in regions the client registered, only a
small JSON body over HTTP; every answer's bytes are checked in the output region.

Figures are for one request at a time, so each process's CPU is its cost, not a queue's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks import gpumon
from benchmarks.procs import Launched, http_status, launch, wait_ready
from benchmarks.settings import REPO_ROOT
from benchmarks.wire import bare_echo, call, echo_repository
from harness.procs import free_port

SIZES = {"1K": 1 << 10, "600K": 600 * 1024, "16M": 16 << 20}


def fixed_echo(repository: Path, label: str) -> str:
    """Add ``echo_<label>``: the echo model with its input and output fixed to that size (so the gateway
    knows the answer's size ahead and offers room for it in the request's segment)."""
    name = f"echo_{label}"
    folder = repository / name
    shutil.copytree(repository / "echo", folder)
    config = (folder / "config.toml").read_text().replace('name = "echo"', f'name = "{name}"')
    (folder / "config.toml").write_text(config.replace("dims = [-1]", f"dims = [{SIZES[label] // 4}]"))
    return name


def start(root: Path, port: int, client_shm: bool = False, trace: bool = False) -> tuple[Launched, Path]:
    repository = echo_repository(root / "repo")
    for label in SIZES:
        fixed_echo(repository, label)
    run_dir = root / "run"
    cmd = [
        sys.executable,
        "-m",
        "deploy.cli",
        "serve",
        "--run-dir",
        str(run_dir),
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--gateway-processes",
        "1",
        "--gpus",
        "none",
        "--cpu-workers",
        "1",
        "--worker-threads",
        "1",
        *(["--allow-client-shm"] if client_shm else []),
        *(
            ["--trace-config", f"triton,file={root / 'trace.json'}", "--trace-config", "rate=1"]
            if trace
            else []
        ),
    ]
    proc = launch("torchgate", cmd, root / "torchgate.log", f"http://127.0.0.1:{port}", cwd=REPO_ROOT)
    wait_ready(proc, lambda: http_status(proc.url + "/v2/health/ready", timeout=2) == 200, 180)
    return proc, run_dir


def binary_request(array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [int(array.size)],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + array.tobytes(), headers


def worker_stats(url: str, model: str) -> dict[str, float]:
    conn = http.client.HTTPConnection(url.split("//")[1], timeout=10)
    conn.request("GET", f"/v2/models/{model}/stats")
    doc = json.loads(conn.getresponse().read())
    conn.close()
    s = doc["model_stats"][0]["inference_stats"]
    return {"count": s["success"]["count"], "input_ns": s["compute_input"]["ns"]}


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {answer[:200]!r}")
    return answer


def http_costs(proc: Launched, model: str, array: np.ndarray, seconds: float) -> dict[str, Any]:
    body, headers = binary_request(array)
    expected = array.tobytes()

    def check(answer: bytes, length: int) -> None:
        if answer[length:] != expected:
            raise RuntimeError(f"wrong answer: {answer[:200]!r}")

    return measured(proc, model, body, headers, check, seconds)


def traced_costs(
    proc: Launched, model: str, array: np.ndarray, seconds: float, trace_file: Path
) -> dict[str, Any]:
    """As :func:`http_costs`, with every request traced (Triton's trace extension, TIMESTAMPS, rate 1); check
    that the trace file holds one trace per request."""
    before = _traces(trace_file)
    _trace_level(proc.url, ["TIMESTAMPS"])
    try:
        costs = http_costs(proc, model, array, seconds)
    finally:
        _trace_level(proc.url, ["OFF"])
    deadline = time.monotonic() + 30
    while _traces(trace_file) - before < costs["requests"] and time.monotonic() < deadline:
        time.sleep(0.1)  # a trace is written once its answer is sent, when the gateway process is idle
    if _traces(trace_file) - before != costs["requests"]:
        raise RuntimeError(f"{_traces(trace_file) - before} traces for {costs['requests']} requests")
    return costs


def _trace_level(url: str, level: list[str]) -> None:
    body = json.dumps({"trace_level": level}).encode()
    request = urllib.request.Request(f"{url}/v2/trace/setting", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def _traces(trace_file: Path) -> int:
    return (
        sum(1 for e in json.loads(trace_file.read_text()) if "timestamps" in e) if trace_file.exists() else 0
    )


def client_shm_costs(proc: Launched, model: str, array: np.ndarray, seconds: float) -> dict[str, Any]:
    """As :func:`http_costs`, with the input and the output in the client's registered shared memory."""
    regions = {side: shared_memory.SharedMemory(create=True, size=array.nbytes) for side in ("in", "out")}
    conn = http.client.HTTPConnection(proc.url.split("//")[1], timeout=60)
    json_headers = {"Content-Type": "application/json"}
    try:
        np.ndarray(array.shape, array.dtype, regions["in"].buf)[:] = array
        for side, memory in regions.items():
            doc = {"key": f"/{memory.name.lstrip('/')}", "offset": 0, "byte_size": array.nbytes}
            post(
                conn, f"/v2/systemsharedmemory/region/{side}/register", json.dumps(doc).encode(), json_headers
            )
        where = {"shared_memory_byte_size": array.nbytes}
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [int(array.size)],
                        "datatype": "FP32",
                        "parameters": {"shared_memory_region": "in", **where},
                    }
                ],
                "outputs": [{"name": "y", "parameters": {"shared_memory_region": "out", **where}}],
            }
        ).encode()
        expected, out = array.tobytes(), regions["out"].buf
        assert out is not None

        def check(answer: bytes, length: int) -> None:
            if out[: len(expected)] != expected:
                raise RuntimeError(f"wrong bytes in the output region; answer {answer[:200]!r}")
            out[:8] = b"\0" * 8  # the next answer must write it again

        return measured(proc, model, body, json_headers, check, seconds)
    finally:
        try:
            post(conn, "/v2/systemsharedmemory/unregister", b"", json_headers)
        finally:
            conn.close()
            for memory in regions.values():
                memory.close()
                memory.unlink()


def measured(
    proc: Launched,
    model: str,
    body: bytes,
    headers: dict[str, str],
    check: Callable[[bytes, int], None],
    seconds: float,
) -> dict[str, Any]:
    """Send ``body`` one request at a time on one connection for ``seconds``; ``check`` each answer (and the
    length of its JSON header); return the round trip p50, the rate, each process's CPU per request and the
    worker's staging per request."""
    conn = http.client.HTTPConnection(proc.url.split("//")[1], timeout=60)
    times: list[float] = []
    stats0 = worker_stats(proc.url, model)
    before, t0 = gpumon.cpu_by_class(proc.tree()), time.monotonic()
    while time.monotonic() - t0 < seconds or len(times) < 5:
        start = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        times.append(time.perf_counter() - start)
        if response.status != 200:
            raise RuntimeError(f"wrong answer: {response.status} {answer[:200]!r}")
        check(answer, int(response.getheader("Inference-Header-Content-Length") or 0))
    elapsed = time.monotonic() - t0
    after = gpumon.cpu_by_class(proc.tree())
    conn.close()
    stats1 = worker_stats(proc.url, model)
    n = len(times)
    cpu: dict[str, float] = {}
    for pid, (name, secs) in after.items():
        cpu[name] = cpu.get(name, 0.0) + (secs - before.get(pid, (name, secs))[1]) / n * 1e3
    staged = max(1.0, stats1["count"] - stats0["count"])
    return {
        "http_p50_ms": statistics.median(times) * 1e3,
        "requests_per_s": n / elapsed,
        "requests": n,
        "cpu_ms": cpu,
        "staging_ms": (stats1["input_ns"] - stats0["input_ns"]) / staged / 1e6,
    }


def delivery(run_dir: Path, array: np.ndarray, seconds: float) -> dict[str, float]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(f"ipc://{run_dir / 'sockets' / 'frontend.sock'}")
    stop = threading.Event()
    bare = f"ipc://{run_dir / 'bare.sock'}"
    server = threading.Thread(target=bare_echo, args=(context, bare, stop))
    server.start()
    bare_sock = context.socket(zmq.DEALER)
    bare_sock.connect(bare)
    try:
        reply = call(sock, "echo", "x", array)
        if bytes(reply.outputs[0][1]) != array.tobytes():
            raise RuntimeError("the dispatcher's echo differs from the request")
        through: list[float] = []
        direct: list[float] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end or len(through) < 5:
            t0 = time.perf_counter()
            call(sock, "echo", "x", array)
            through.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bare_sock.send_multipart([b"h", array], copy=False)
            bare_sock.recv_multipart(copy=False)
            direct.append(time.perf_counter() - t0)
    finally:
        stop.set()
        server.join()
        sock.close(linger=0)
        bare_sock.close(linger=0)
        context.destroy(linger=0)
    return {"through_ms": statistics.median(through) * 1e3, "bare_ms": statistics.median(direct) * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument(
        "--client-shm",
        action="store_true",
        help="also send each size with its input and output in the client's shared memory",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="serve with a trace file (--trace-config) and send each size again with every request traced",
    )
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tgsizes-"))
    proc, run_dir = start(root, free_port(), args.client_shm, args.trace)
    rows: list[tuple[str, str, dict[str, Any], dict[str, float] | None]] = []
    try:
        for label in args.sizes.split(","):
            array = np.random.default_rng(0).random(SIZES[label] // 4, dtype=np.float32)
            costs = http_costs(proc, f"echo_{label}", array, args.seconds)
            wire = delivery(run_dir, array, args.seconds)
            rows.append((label, "binary body", costs, wire))
            print(f"{label}: {costs} {wire}", file=sys.stderr, flush=True)
            if args.client_shm:
                costs = client_shm_costs(proc, f"echo_{label}", array, args.seconds)
                rows.append((label, "client shared memory", costs, None))
                print(f"{label} in shared memory: {costs}", file=sys.stderr, flush=True)
            if args.trace:
                costs = traced_costs(proc, f"echo_{label}", array, args.seconds, root / "trace.json")
                rows.append((label, "binary body, every request traced", costs, None))
                print(f"{label} traced: {costs}", file=sys.stderr, flush=True)
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)
    flag = (" --client-shm" if args.client_shm else "") + (" --trace" if args.trace else "")
    print(
        f"\n`python -m benchmarks.sizes --seconds {args.seconds:g}{flag}` (one "
        "request at a time, echo model, binary in and out)\n"
    )
    print(
        "| tensor | tensors travel as | HTTP round trip p50 | gateway CPU / request | dispatcher "
        "CPU / request | worker CPU / request "
        "| worker staging / request | through dispatcher + worker, no HTTP (p50) | bare pyzmq, 2 hops (p50) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, path, c, w in rows:
        cpu = c["cpu_ms"]
        wire = f"{w['through_ms']:.2f} ms | {w['bare_ms']:.2f} ms" if w else "| "
        print(
            f"| {label}iB | {path} | {c['http_p50_ms']:.2f} ms | {cpu.get('gateway', 0):.2f} ms | "
            f"{cpu.get('dispatcher', 0):.2f} ms | {cpu.get('worker', 0):.2f} ms | {c['staging_ms']:.3f} ms | "
            f"{wire} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
