"""The GPU benchmark: ``python -m benchmarks.gpu`` (on a GPU host) or ``python -m benchmarks.gpu --mode cpu``.

Side by side in one run, on ResNet-50 FP32 (torchvision when installed, else a stand-in of the same input
size) and on ``digits``: the raw model on its device (batch 1 to 64), torchgate (binary and JSON), the seed's
way (the model in every gunicorn process) and LitServe. For every run it records requests/s, p50/p99,
torchgate's average batch size and its workers' queue and compute times, CPU cores per process class (gateway,
dispatcher, worker, ...) and GPU busy (NVML or nvidia-smi, sampled every 0.5 s); it writes
``docs/benchmarks-gpu.md`` (``--output``) and the raw figures as JSON next to the work files.

It checks first what the host has (torch, CUDA, the modules each system needs, a load generator) and stops
with a clear message when a GPU run cannot happen; a system that cannot run is skipped and the report says
why. ``--mode cpu`` runs the same thing small and short on a CPU-only machine (no figure there is a GPU
figure): CI runs it to check the benchmark still works. The recipe for the offline GPU host is in
docs/benchmarks-gpu.md (``benchmarks/gpu_host.sh``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import gpumon
from benchmarks.gpu_models import GPU_WORKLOADS, GpuModel, expected_output, gpu_samples, write_gpu_repository
from benchmarks.gpu_raw import measure as measure_raw
from benchmarks.gpu_systems import GPU_SYSTEMS, GpuPlan, GpuSystem, TorchgateGpu
from benchmarks.load import LoadError, LoadResult, run_wrk, write_script
from benchmarks.payloads import HttpRequest
from benchmarks.procs import Launched, StartError, http_call, wait_ready
from benchmarks.pyload import run_python_load
from benchmarks.settings import DOCS_DIR, WORK_DIR
from deploy.settings import available_cores, default_gateway_processes
from harness.procs import free_port

REQUEST_TIMEOUT_S = 60.0
MIN_PYTHON = (3, 11)


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class HostError(SystemExit):
    """The host cannot run the benchmark; the message says what is missing and how to get it."""


@dataclass(slots=True)
class Run:
    """One load run of one system and format at one concurrency."""

    workload: str
    system: str
    fmt: str
    concurrency: int
    load: dict[str, Any]
    cores: dict[str, float]
    processes: dict[str, int]
    gpu_busy: float | None
    batch: dict[str, float] | None = None  # torchgate: average batch size and worker times per request
    spans: dict[str, float] | None = None  # torchgate: each span's median over the traced requests (us)


@dataclass(slots=True)
class Report:
    """Everything one benchmark run measured."""

    command: str
    mode: str
    host: dict[str, Any]
    plan: dict[str, Any]
    models: dict[str, str] = field(default_factory=dict)  # workload -> what the model is
    describe: dict[str, dict[str, str]] = field(default_factory=dict)  # workload -> system -> settings
    raw: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # workload -> points
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # workload -> system -> why
    load_tool: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "runs": [asdict(r) for r in self.runs]}


# -- the host -----------------------------------------------------------------------------------------------


def check_host(mode: str, load: str) -> dict[str, Any]:
    """Return what the host has; raise :class:`HostError` when the requested run cannot happen."""
    problems = []
    if sys.version_info < MIN_PYTHON:
        problems.append(f"Python {platform.python_version()}: torchgate needs 3.11 or later")
    try:
        import torch
    except ImportError:
        raise HostError("torch is not importable: install torch (the GPU host has torch 2.11)") from None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    if mode == "gpu":
        if not torch.cuda.is_available():
            problems.append(
                f"torch {torch.__version__} sees no CUDA device "
                "(torch.cuda.is_available() is False): run on a "
                "GPU host, or pass --mode cpu for the small CPU check"
            )
        else:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
        info["gpu_monitor"] = gpumon.GpuSampler.source()
        if info["gpu_monitor"] is None:
            problems.append("GPU utilisation cannot be read: neither pynvml nor nvidia-smi works here")
    info["load"] = choose_load(load)
    if info["load"] is None:
        problems.append(
            "wrk not found (--load wrk): put wrk on PATH (docs/benchmarks-gpu.md extracts it from .gpu/deb), "
            "or pass --load python"
        )
    if problems:
        raise HostError("the benchmark cannot run on this host:\n  - " + "\n  - ".join(problems))
    return info


def choose_load(load: str) -> str | None:
    if load == "python":
        return "python"
    if shutil.which("wrk"):
        return "wrk"
    return None if load == "wrk" else "python"


# -- plans --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    concurrencies: tuple[int, ...]
    duration_s: float
    warmup_s: float
    raw_batches: tuple[int, ...]
    raw_duration_s: float


GPU_SIZES = Sizes((1, 64), 10.0, 3.0, (1, 2, 4, 8, 16, 32, 64), 3.0)
CPU_SIZES = Sizes((1, 4), 2.0, 1.0, (1, 8), 1.0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode", choices=("gpu", "cpu", "auto"), default="auto", help="auto: gpu if CUDA is there"
    )
    parser.add_argument("--workloads", default=",".join(GPU_WORKLOADS))
    parser.add_argument("--systems", default=",".join(GPU_SYSTEMS))
    parser.add_argument("--formats", default="binary,json")
    parser.add_argument("--concurrency", default=None, help="comma-separated (default 1,64 on a GPU)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per load run (default 10 on a GPU)"
    )
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--stand-in", action="store_true", help="the stand-in even where torchvision is installed"
    )
    parser.add_argument(
        "--gateway-processes", type=int, default=None, help="default: torchgate's (one per core, at most 8)"
    )
    parser.add_argument(
        "--gateway-threads", type=int, default=None, help="default 16 on a GPU, 32 on the CPU"
    )
    parser.add_argument("--workers-per-gpu", type=int, default=1)
    parser.add_argument(
        "--worker-threads", type=int, default=None, help="torch threads per worker (default: torchgate's)"
    )
    parser.add_argument("--seed-processes", type=int, default=None, help="default 8 on a GPU, 2 on the CPU")
    parser.add_argument("--seed-threads", type=int, default=None, help="default 8")
    parser.add_argument(
        "--litserve-path", type=Path, default=None, help="folder holding LitServe and its deps"
    )
    parser.add_argument(
        "--trace-rate",
        type=int,
        default=50,
        help="torchgate traces one request in N (Triton's trace extension): where the time went; 0: none",
    )
    parser.add_argument("--output", type=Path, default=None, help="default docs/benchmarks-gpu.md (GPU mode)")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR / "gpu")
    parser.add_argument(
        "--results", type=Path, default=None, help="the raw figures as JSON (default WORK_DIR/results.json)"
    )
    return parser.parse_args(argv)


def build_plan(args: argparse.Namespace, gpu: bool) -> GpuPlan:
    return GpuPlan(
        device="cuda" if gpu else "cpu",
        gateway_processes=args.gateway_processes or default_gateway_processes(available_cores()),
        gateway_threads=args.gateway_threads or (16 if gpu else 32),
        workers_per_gpu=args.workers_per_gpu,
        cpu_workers=1,
        worker_threads=args.worker_threads or (None if gpu else 1),
        seed_processes=args.seed_processes or (8 if gpu else 2),
        seed_threads=args.seed_threads or 8,
        litserve_workers=2 if gpu else 1,
        litserve_api_servers=4 if gpu else 1,
        litserve_batch_timeout_s=0.002,
        ready_timeout_s=300.0 if gpu else 180.0,
        litserve_path=args.litserve_path.resolve() if args.litserve_path else None,
        trace_rate=max(0, args.trace_rate),
    )


# -- one workload -------------------------------------------------------------------------------------------


class Bench:
    """Start the systems on one model, load each in turn, collect the figures."""

    def __init__(
        self,
        report: Report,
        plan: GpuPlan,
        sizes: Sizes,
        systems: list[GpuSystem],
        formats: list[str],
        work_dir: Path,
    ) -> None:
        self.report, self.plan, self.sizes, self.systems = report, plan, sizes, systems
        self.formats, self.work_dir = formats, work_dir
        self.launched: dict[str, Launched] = {}  # everything started for the current workload

    def load(
        self, url: str, requests: list[HttpRequest], folder: Path, concurrency: int, duration: float
    ) -> LoadResult:
        if self.report.load_tool == "wrk":
            return run_wrk(url, write_script(requests, folder), concurrency, duration, REQUEST_TIMEOUT_S)
        return run_python_load(url, requests, concurrency, duration, REQUEST_TIMEOUT_S)

    def start(self, model: GpuModel) -> dict[str, Launched]:
        skipped = self.report.skipped.setdefault(model.workload, {})
        launched: dict[str, Launched] = {}
        for system in self.systems:
            why = system.unavailable()
            if why:
                log(f"{model.workload}: {system.name} skipped: {why}")
                skipped[system.name] = why
                continue
            folder = self.work_dir / "systems" / model.workload / system.name
            folder.mkdir(parents=True, exist_ok=True)
            launched[system.name] = self.launched[system.name] = system.launch(model, free_port(), folder)
            log(f"{model.workload}: starting {system.name} at {launched[system.name].url}")
        expected = expected_output(model, gpu_samples(model.workload)[0])
        tolerance = 2e-2 if self.plan.device == "cuda" else 1e-4  # TF32 convolutions on the GPU
        running = {}
        for system in self.systems:
            if system.name not in launched:
                continue
            proc = launched[system.name]
            try:
                wait_ready(proc, functools.partial(system.ready, proc.url, model), self.plan.ready_timeout_s)
                for fmt in self.formats_of(system):
                    req = system.request(model, fmt, gpu_samples(model.workload)[0])
                    status, headers, body = http_call(proc.url + req.path, req.body, req.headers)
                    if status != 200:
                        raise StartError(
                            f"probe {fmt} answered {status}: {body[:300]!r}; log {proc.log_path}"
                        )
                    got = system.decode(fmt, body, headers)
                    if got.shape != expected.shape or not np.allclose(
                        got, expected, atol=tolerance, rtol=tolerance
                    ):
                        raise StartError(
                            f"{fmt} answer differs from the model's own: {got[:3]} vs {expected[:3]}"
                        )
            except (StartError, OSError) as exc:
                log(f"{model.workload}: {system.name} failed to start: {exc}")
                skipped[system.name] = f"failed to start: {str(exc).splitlines()[0]}"
                proc.stop(grace_s=5)
                continue
            self.report.describe.setdefault(model.workload, {})[system.name] = system.describe(model)
            log(f"{model.workload}: {system.name} ready")
            running[system.name] = proc
        return running

    def formats_of(self, system: GpuSystem) -> list[str]:
        return [f for f in system.formats if f in self.formats] or (
            [system.formats[0]] if "json" in self.formats else []
        )

    def run_workload(self, model: GpuModel) -> None:
        try:
            points = measure_raw(
                model.path,
                model.workload,
                "cuda" if self.plan.device == "cuda" else "cpu",
                list(self.sizes.raw_batches),
                self.sizes.raw_duration_s,
                1,
            )
            self.report.raw[model.workload] = [asdict(p) for p in points]
            for p in points:
                log(
                    f"{model.workload}: raw batch {p.batch}: {p.samples_per_s:,.0f} "
                    f"samples/s, p50 {p.p50_ms:.2f} ms"
                )
        except Exception as exc:  # the raw loop is one figure among several: report it, go on
            log(f"{model.workload}: raw loop failed: {exc}")
            self.report.skipped.setdefault(model.workload, {})["raw"] = f"raw loop failed: {str(exc)[:200]}"
        try:
            running = self.start(model)
            pool = gpu_samples(model.workload)
            keys = [(s, f) for s in self.systems if s.name in running for f in self.formats_of(s)]
            scripts = {(s.name, f): [s.request(model, f, sample) for sample in pool] for s, f in keys}
            for s, f in keys:
                folder = self.work_dir / "scripts" / model.workload / f"{s.name}_{f}"
                try:
                    self.load(running[s.name].url, scripts[(s.name, f)], folder, 8, self.sizes.warmup_s)
                except LoadError as exc:
                    log(f"{model.workload}: warm-up {s.name} {f} failed: {exc}")
                running[s.name].wait_idle(60)
            for ci, c in enumerate(self.sizes.concurrencies):
                order = keys[ci % len(keys) :] + keys[: ci % len(keys)] if keys else []
                for s, f in order:
                    self.one_run(model, s, f, c, running[s.name], scripts[(s.name, f)])
        finally:
            for name, proc in self.launched.items():
                log(f"{model.workload}: stopping {name}")
                proc.stop()
            self.launched.clear()
            for system in self.systems:
                system.cleanup()

    def one_run(
        self,
        model: GpuModel,
        system: GpuSystem,
        fmt: str,
        c: int,
        proc: Launched,
        requests: list[HttpRequest],
    ) -> None:
        folder = self.work_dir / "scripts" / model.workload / f"{system.name}_{fmt}"
        counts_before = TorchgateGpu.batch_counts(proc.url, model) if system.name == "torchgate" else None
        before, t0 = gpumon.cpu_by_class(proc.tree(), system.name), time.monotonic()
        start_ns = time.monotonic_ns()
        sampler = gpumon.GpuSampler() if self.plan.device == "cuda" else None
        try:
            if sampler is not None:
                with sampler:
                    result = self.load(proc.url, requests, folder, c, self.sizes.duration_s)
            else:
                result = self.load(proc.url, requests, folder, c, self.sizes.duration_s)
        except LoadError as exc:
            log(f"{model.workload} {system.name} {fmt} c={c}: load failed: {exc}")
            return
        elapsed, end_ns = time.monotonic() - t0, time.monotonic_ns()
        after = gpumon.cpu_by_class(proc.tree(), system.name)
        proc.wait_idle(60)
        spans = system.spans(start_ns, end_ns) if isinstance(system, TorchgateGpu) else None
        batch = None
        if counts_before is not None:
            counts_after = TorchgateGpu.batch_counts(proc.url, model)
            if counts_after is not None:
                batch = batch_figures(counts_before, counts_after)
        run = Run(
            model.workload,
            system.name,
            fmt,
            c,
            result.to_dict(),
            gpumon.cores_by_class(before, after, elapsed),
            gpumon.count_by_class(after),
            sampler.mean if sampler else None,
            batch,
            spans,
        )
        self.report.runs.append(run)
        busy = f", GPU {run.gpu_busy:.0f}% busy" if run.gpu_busy is not None else ""
        avg = f", batch {batch['batch']:.1f}" if batch else ""
        log(
            f"{model.workload} {system.name} {fmt} c={c}: "
            f"{result.throughput:,.1f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, errors {result.errors}{avg}{busy}, cores "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(run.cores.items()))
        )


def batch_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    """Return the average batch and per-request worker times (ms) between two stats readings."""
    d = {k: after[k] - before[k] for k in after}
    if d["executions"] <= 0 or d["requests"] <= 0:
        return None
    return {
        "batch": d["inferences"] / d["executions"],
        "queue_ms": d["queue_ns"] / d["requests"] / 1e6,
        "input_ms": d["input_ns"] / d["requests"] / 1e6,
        "infer_ms": d["infer_ns"] / d["requests"] / 1e6,
        "output_ms": d["output_ns"] / d["requests"] / 1e6,
    }


# -- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from benchmarks.gpu_report import write_report

    # A bounded run (timeout) ends with SIGTERM: unwind, so that every system started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    mode = args.mode
    if mode == "auto":
        import torch

        mode = "gpu" if torch.cuda.is_available() else "cpu"
    host = check_host(mode, args.load)
    gpu = mode == "gpu"
    sizes = GPU_SIZES if gpu else CPU_SIZES
    if args.concurrency:
        sizes = replace(sizes, concurrencies=tuple(int(c) for c in args.concurrency.split(",")))
    if args.duration:
        sizes = replace(sizes, duration_s=args.duration)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in GPU_WORKLOADS] + [
        s for s in args.systems.split(",") if s.strip() and s.strip() not in GPU_SYSTEMS
    ]
    if unknown:
        raise SystemExit(f"unknown workloads or systems: {', '.join(unknown)}")
    plan = build_plan(args, gpu)
    systems = [GPU_SYSTEMS[s.strip()](plan) for s in args.systems.split(",") if s.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    output = args.output or (
        DOCS_DIR / "benchmarks-gpu.md" if gpu else args.work_dir / "benchmarks-gpu-cpu.md"
    )
    command = "python -m benchmarks.gpu" + (" " + shlex.join(argv) if argv else "")
    report = Report(command, mode, host, asdict(plan) | {"sizes": asdict(sizes)}, load_tool=host["load"])
    report.plan["litserve_path"] = str(plan.litserve_path) if plan.litserve_path else None
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = args.results or args.work_dir / "results.json"
    log(f"{command}: mode {mode}, {host}")
    models = write_gpu_repository(args.work_dir / "repository", tuple(workloads), args.stand_in or not gpu)
    bench = Bench(report, plan, sizes, systems, formats, args.work_dir)
    try:
        for workload in workloads:
            model = models[workload]
            report.models[workload] = model.description
            log(f"== {workload}: {model.description}")
            bench.run_workload(model)
            results.write_text(json.dumps(report.to_dict(), indent=1))
            write_report(report, output)
            log(f"wrote {output} and {results}")
    except SystemExit:  # cut short (timeout's SIGTERM): keep what was measured
        if report.runs or report.raw:
            results.write_text(json.dumps(report.to_dict(), indent=1))
            write_report(report, output)
            log(f"cut short: wrote what was measured to {output} and {results}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
