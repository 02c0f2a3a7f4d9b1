"""gRPC against HTTP on one torchgate: ``python -m benchmarks.grpc_http [--workloads digits,resnet50]
[--concurrency 1,8] [--duration 5] [--rounds 3] [--output docs/...]``.

One ``torchgate serve --grpc-port`` (CPU workers), the GPU benchmark's models (the shipped digits MLP; the
ResNet-50 stand-in, 602 KB of FP32 input per request), and for each workload and concurrency, rounds that
alternate which goes first: HTTP with Triton's binary tensor data (``benchmarks.pyload``, one keep-alive
connection per thread) and gRPC ``ModelInfer`` with raw input contents (``benchmarks.grpc_load``, one channel
per thread), both Python clients in this process. It reports requests/s, p50 and the CPU the front process
spent per request (the gunicorn gateway processes, or the gRPC server), and the gRPC/HTTP throughput ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.gpu_models import gpu_samples, write_gpu_repository
from benchmarks.grpc_load import infer_request, run_grpc_load
from benchmarks.load import LoadResult
from benchmarks.payloads import oip_binary
from benchmarks.procs import Launched, StartError, launch, wait_ready
from benchmarks.pyload import run_python_load
from benchmarks.settings import REPO_ROOT
from harness.procs import free_port

TIMEOUT_S = 30.0
FRONTS = {"http": "gateway.wsgi:app", "grpc": "gateway.grpc_server"}  # how each front's processes are named


def front_processes(stack: Launched, transport: str) -> list[psutil.Process]:
    marker = FRONTS[transport]
    found = []
    for proc in stack.tree():
        try:
            if any(marker in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def one(
    transport: str,
    stack: Launched,
    http_url: str,
    grpc_address: str,
    load: dict[str, Any],
    c: int,
    seconds: float,
) -> tuple[LoadResult, float]:
    """Run one load; return its result and the front's CPU milliseconds per answered request."""
    fronts = front_processes(stack, transport)
    before = cpu_seconds(fronts)
    if transport == "http":
        result = run_python_load(http_url, load["http"], c, seconds, TIMEOUT_S)
    else:
        result = run_grpc_load(grpc_address, load["grpc"], c, seconds, TIMEOUT_S)
    spent = cpu_seconds(fronts) - before
    return result, (spent * 1000 / result.ok if result.ok else float("nan"))


def row(workload: str, c: int, runs: dict[str, list[tuple[LoadResult, float]]]) -> str:
    """One line of the report: medians over the rounds, and each round's requests/s."""

    def med(transport: str, pick: Any) -> float:
        return float(statistics.median(pick(r) for r in runs[transport]))

    rps = {t: med(t, lambda r: r[0].throughput) for t in FRONTS}
    each = {t: "/".join(f"{r[0].throughput:.0f}" for r in runs[t]) for t in FRONTS}
    ratio = rps["grpc"] / rps["http"] if rps["http"] else float("nan")
    p50 = {t: med(t, lambda r: r[0].p50_ms) for t in FRONTS}
    cpu = {t: med(t, lambda r: r[1]) for t in FRONTS}
    return (
        f"| {workload} | {c} | {rps['http']:,.0f} ({each['http']}) | {rps['grpc']:,.0f} ({each['grpc']}) | "
        f"{ratio:.2f} | {p50['http']:.2f} | {p50['grpc']:.2f} | {cpu['http']:.2f} | {cpu['grpc']:.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="digits,resnet50")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-workers", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    work = Path(tempfile.mkdtemp(prefix="tggrpc-"))
    models = write_gpu_repository(work / "repository", workloads, stand_in=True)
    port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "deploy.cli",
        "serve",
        "--run-dir",
        str(work / "run"),
        "--model-repository",
        str(work / "repository"),
        "--gpus",
        "none",
        "--cpu-workers",
        str(args.cpu_workers),
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
    ]
    http_url, grpc_address = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    stack = launch(
        "torchgate", cmd, work / "serve.log", http_url, env={"TORCHGATE_LOG_LEVEL": "warning"}, cwd=REPO_ROOT
    )
    rows = []
    try:
        wait_ready(stack, lambda: "torchgate: serving" in stack.log_path.read_text(errors="replace"), 180)
        for workload in workloads:
            model = models[workload]
            pool = gpu_samples(workload)
            load = {
                "http": [oip_binary(workload, sample) for sample in pool],
                "grpc": [
                    infer_request(model.name, {"input": ("FP32", sample["input"][np.newaxis])})
                    for sample in pool
                ],
            }
            for transport in FRONTS:  # warm both up
                one(transport, stack, http_url, grpc_address, load, 4, min(2.0, args.duration))
            for c in concurrencies:
                runs: dict[str, list[tuple[LoadResult, float]]] = {t: [] for t in FRONTS}
                for r in range(args.rounds):
                    order = list(FRONTS) if r % 2 == 0 else list(reversed(FRONTS))
                    for transport in order:
                        stack.wait_idle(30)
                        result, cpu_ms = one(transport, stack, http_url, grpc_address, load, c, args.duration)
                        runs[transport].append((result, cpu_ms))
                        print(
                            f"{workload} c={c} round {r + 1} {transport}: {result.throughput:,.0f} req/s, "
                            f"p50 {result.p50_ms:.2f} ms, errors {result.errors}, "
                            f"front {cpu_ms:.2f} ms CPU/req",
                            flush=True,
                        )
                rows.append((workload, c, runs))
    except StartError as exc:
        print(f"torchgate did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    table = [
        f"`python -m benchmarks.grpc_http --workloads {','.join(workloads)} --concurrency {args.concurrency} "
        f"--duration {args.duration:g} --rounds {args.rounds}`, {when}, {psutil.cpu_count()} cores; "
        f"medians of {args.rounds} rounds (each round's requests/s in brackets)",
        "",
        "| workload | c | HTTP req/s | gRPC req/s | gRPC/HTTP | p50 ms HTTP | gRPC "
        "| front CPU ms/req HTTP | gRPC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, c, runs in rows:
        table.append(row(workload, c, runs))
    text = "\n".join(table) + "\n"
    print(text)
    if args.output is not None:
        args.output.write_text(text)
    errors = sum(r[0].errors for _, _, runs in rows for t in runs for r in runs[t])
    if errors:
        print(f"{errors} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
