"""The systems the GPU benchmark compares, each started as real processes on one model and killed as a tree.

- torchgate: ``python -m deploy.cli serve`` (what ``torchgate serve`` runs), GPU worker slots or CPU slots.
- the seed's way: the seed app (``benchmarks/systems/seed_app.py``) under gunicorn gthread, the model in every
  process, on the GPU.
- LitServe: ``benchmarks/systems/litserve_app.py``, dynamic batching, JSON; optionally from a folder of its
own
  (``--litserve-path``: LitServe's pinned dependencies must not shadow the host's).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.client_regions import ClientRegions
from benchmarks.gpu_models import GpuModel
from benchmarks.models import Sample
from benchmarks.payloads import HttpRequest, decode_output, oip_binary, oip_json, seed_json
from benchmarks.procs import Launched, http_call, http_status, launch
from benchmarks.settings import REPO_ROOT
from gateway import trace_summary

PYTHON = sys.executable


@dataclass(frozen=True, slots=True)
class GpuPlan:
    """How big each system is: the same for every workload of one run."""

    device: str  # "cuda" or "cpu"
    gateway_processes: int
    gateway_threads: int
    workers_per_gpu: int
    cpu_workers: int
    worker_threads: int | None  # None: torchgate's default
    seed_processes: int
    seed_threads: int
    litserve_workers: int
    litserve_api_servers: int
    litserve_batch_timeout_s: float
    ready_timeout_s: float
    litserve_path: Path | None = None
    trace_rate: int = 0  # torchgate traces one request in so many (Triton's trace extension); 0: none


def _pythonpath(extra: Path | None) -> dict[str, str]:
    parts = [str(REPO_ROOT)] + ([str(extra)] if extra else []) + [os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in parts if p)}


class GpuSystem:
    """One server under test for the GPU benchmark."""

    name = ""
    formats: tuple[str, ...] = ("json",)
    answer_kind = "seed"

    def __init__(self, plan: GpuPlan) -> None:
        self.plan = plan
        self.temporary: list[Path] = []  # folders to remove once the system is stopped

    def cleanup(self) -> None:
        for folder in self.temporary:
            shutil.rmtree(folder, ignore_errors=True)
        self.temporary.clear()

    def unavailable(self) -> str | None:
        return None

    def launch(self, model: GpuModel, port: int, work_dir: Path) -> Launched:
        raise NotImplementedError

    def ready(self, url: str, model: GpuModel) -> bool:
        return http_status(url + "/health", timeout=2) == 200

    def request(self, model: GpuModel, fmt: str, sample: Sample) -> HttpRequest:
        return seed_json(model.workload, sample, "/predict")

    def decode(self, fmt: str, body: bytes, headers: dict[str, str]) -> np.ndarray:
        """The first output of the answer to the request :meth:`request` built last."""
        return decode_output(self.answer_kind, body, headers)

    def describe(self, model: GpuModel) -> str:
        raise NotImplementedError


def _missing_modules(modules: tuple[str, ...], extra_path: Path | None = None) -> list[str]:
    """Return the modules this Python cannot import (checked in a child, with ``extra_path`` first)."""
    code = (
        "import importlib.util, sys\n"
        f"print(' '.join(m for m in {list(modules)!r} if importlib.util.find_spec(m) is None))"
    )
    env = {**os.environ, **_pythonpath(extra_path)}
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    return done.stdout.split() if done.returncode == 0 else list(modules)


class TorchgateGpu(GpuSystem):
    """torchgate as ``torchgate serve`` starts it; OIP JSON, Triton binary, and (``shm``, asked for with
    ``--formats``) tensors in the client's shared memory (benchmarks/client_regions.py)."""

    name = "torchgate"
    formats = ("binary", "json", "shm")
    answer_kind = "oip"
    MODULES = ("flask", "gunicorn", "zmq", "supervisor", "orjson", "msgpack", "werkzeug", "click")

    def __init__(self, plan: GpuPlan) -> None:
        super().__init__(plan)
        self.url = ""
        self.regions: ClientRegions | None = None
        self.last_output: tuple[str, int] = ("", 0)  # the region and size of the last shm request's output

    def cleanup(self) -> None:
        if self.regions is not None:
            self.regions.close()
            self.regions = None
        super().cleanup()

    def unavailable(self) -> str | None:
        missing = _missing_modules(self.MODULES)
        if missing:
            return (
                f"missing Python modules {', '.join(missing)} (install the "
                "wheelhouse: docs/benchmarks-gpu.md)"
            )
        return None

    def launch(self, model: GpuModel, port: int, work_dir: Path) -> Launched:
        p = self.plan
        repository = work_dir / "repository"
        shutil.rmtree(repository, ignore_errors=True)
        repository.mkdir(parents=True)
        (repository / model.name).symlink_to(model.path.parent.parent, target_is_directory=True)
        run_dir = work_dir / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        if len(str(run_dir / "sockets" / "supervisor.sock")) > 100:  # the limit of a unix socket's path
            run_dir = Path(tempfile.mkdtemp(prefix="tgbench-"))
            self.temporary.append(run_dir)
        cmd = [
            PYTHON,
            "-m",
            "deploy.cli",
            "serve",
            "--run-dir",
            str(run_dir),
            "--model-repository",
            str(repository),
            "--model",
            model.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--gateway-processes",
            str(p.gateway_processes),
            "--gateway-threads",
            str(p.gateway_threads),
            "--ready-timeout",
            str(int(p.ready_timeout_s)),
            "--allow-client-shm",  # the shm format's regions
        ]
        self.url = f"http://127.0.0.1:{port}"
        if p.device == "cuda":
            cmd += ["--gpus", "0", "--workers-per-gpu", str(p.workers_per_gpu), "--cpu-workers", "0"]
        else:
            cmd += ["--gpus", "none", "--cpu-workers", str(p.cpu_workers)]
        if p.worker_threads:
            cmd += ["--worker-threads", str(p.worker_threads)]
        self.trace_file = work_dir / "trace.json"
        self.trace_file.unlink(missing_ok=True)
        if p.trace_rate:  # where a request's time goes, from traces of one request in trace_rate
            cmd += ["--trace-config", f"triton,file={self.trace_file}", "--trace-config", "level=TIMESTAMPS"]
            cmd += ["--trace-config", f"rate={p.trace_rate}"]
        env = {"TORCHGATE_LOG_LEVEL": "warning", **_pythonpath(None)}
        return launch(
            self.name, cmd, work_dir / "torchgate.log", f"http://127.0.0.1:{port}", env=env, cwd=REPO_ROOT
        )

    def ready(self, url: str, model: GpuModel) -> bool:
        return http_status(url + "/v2/health/ready", timeout=2) == 200

    def request(self, model: GpuModel, fmt: str, sample: Sample) -> HttpRequest:
        if fmt == "shm":
            if self.regions is None or self.regions.url != self.url:
                if self.regions is not None:
                    self.regions.close()
                self.regions = ClientRegions(self.url)
            request, region, size = self.regions.request(model.workload, sample)
            self.last_output = (region, size)
            return request
        build = oip_binary if fmt == "binary" else oip_json
        return build(model.workload, sample)

    def decode(self, fmt: str, body: bytes, headers: dict[str, str]) -> np.ndarray:
        if fmt != "shm" or self.regions is None:
            return super().decode(fmt, body, headers)
        region, size = self.last_output
        return np.frombuffer(self.regions.read(region, size), dtype="<f4")

    def describe(self, model: GpuModel) -> str:
        p = self.plan
        slots = (
            f"{p.workers_per_gpu} GPU worker(s) on GPU 0"
            if p.device == "cuda"
            else f"{p.cpu_workers} CPU worker(s)"
        )
        threads = (
            f" x {p.worker_threads} torch threads" if p.worker_threads else " (torch threads: its default)"
        )
        return (
            f"`torchgate serve`: gateway {p.gateway_processes} x "
            f"{p.gateway_threads} threads, {slots}{threads}, "
            f"max_batch_size {model.max_batch_size}, max_queue_delay_us {model.delay_us}"
        )

    def spans(self, start_ns: int, end_ns: int) -> dict[str, float] | None:
        """Return the median of each span of the requests traced between two monotonic times (microseconds),
        and how many were traced (``traces``); None when none was (gateway/trace_summary.py)."""
        try:
            entries = json.loads(self.trace_file.read_text())
        except (OSError, ValueError):
            return None
        chosen = [
            t
            for t in trace_summary.traces(entries)
            if start_ns <= t["timestamps"].get("REQUEST_START", -1) <= end_ns
        ]
        groups = trace_summary.summarize(chosen)
        if len(groups) != 1:
            return None
        group = groups[0]
        medians = {name: statistics.median(values) / 1e3 for name, values in group.spans.items()}
        return {"traces": float(group.count), **medians}

    @staticmethod
    def batch_counts(url: str, model: GpuModel) -> dict[str, float] | None:
        """Return the model's cumulative counters from ``/v2/models/<m>/stats`` (None if unreadable)."""
        status, _, body = http_call_get(f"{url}/v2/models/{model.name}/stats")
        if status != 200:
            return None
        try:
            entry = json.loads(body)["model_stats"][0]
            stats = entry["inference_stats"]
            return {
                "inferences": float(entry["inference_count"]),
                "executions": float(entry["execution_count"]),
                "requests": float(stats["success"]["count"]),
                "queue_ns": float(stats["queue"]["ns"]),
                "input_ns": float(stats["compute_input"]["ns"]),
                "infer_ns": float(stats["compute_infer"]["ns"]),
                "output_ns": float(stats["compute_output"]["ns"]),
            }
        except (KeyError, IndexError, TypeError, ValueError):
            return None


def http_call_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), {}, exc.read()
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}, b""


class SeedGpu(GpuSystem):
    """The seed's way: gunicorn gthread processes, the model loaded in each (on the GPU), JSON."""

    name = "seed"
    MODULES = ("flask", "gunicorn")

    def unavailable(self) -> str | None:
        missing = _missing_modules(self.MODULES)
        return f"missing Python modules {', '.join(missing)}" if missing else None

    def launch(self, model: GpuModel, port: int, work_dir: Path) -> Launched:
        p = self.plan
        cmd = [
            PYTHON,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--workers",
            str(p.seed_processes),
            "--threads",
            str(p.seed_threads),
            "--keep-alive",
            "5",
            "--backlog",
            "2048",
            "--timeout",
            "120",
            "--log-level",
            "warning",
            "--bind",
            f"127.0.0.1:{port}",
            "benchmarks.systems.seed_app:create_app()",
        ]
        env = {
            "BENCH_MODEL": str(model.path),
            "BENCH_INPUTS": "input:FP32",
            "BENCH_DEVICE": "cuda:0" if p.device == "cuda" else "cpu",
            "BENCH_TORCH_THREADS": "1",
            **_pythonpath(None),
        }
        return launch(
            self.name, cmd, work_dir / "gunicorn.log", f"http://127.0.0.1:{port}", env=env, cwd=REPO_ROOT
        )

    def describe(self, model: GpuModel) -> str:
        p = self.plan
        return (
            f"gunicorn gthread {p.seed_processes} processes x {p.seed_threads} "
            "threads, the model loaded in each "
            f"on {'the GPU' if p.device == 'cuda' else 'the CPU'}, one request per model call, JSON"
        )


class LitServeGpu(GpuSystem):
    """LitServe with dynamic batching; JSON only."""

    name = "litserve"

    def unavailable(self) -> str | None:
        missing = _missing_modules(("litserve",), self.plan.litserve_path)
        return "litserve not importable (--litserve-path DIR, or pip install litserve)" if missing else None

    def launch(self, model: GpuModel, port: int, work_dir: Path) -> Launched:
        p = self.plan
        cmd = [
            PYTHON,
            "-m",
            "benchmarks.systems.litserve_app",
            "--port",
            str(port),
            "--model",
            str(model.path),
            "--inputs",
            "input:FP32",
            "--workers",
            str(p.litserve_workers),
            "--api-servers",
            str(p.litserve_api_servers),
            "--torch-threads",
            "1",
            "--max-batch-size",
            str(model.max_batch_size),
            "--batch-timeout",
            str(p.litserve_batch_timeout_s),
            "--accelerator",
            p.device,
            "--fast-queue",
        ]
        env = {"LITSERVE_DISABLE_TELEMETRY": "1", **_pythonpath(p.litserve_path)}
        return launch(
            self.name, cmd, work_dir / "litserve.log", f"http://127.0.0.1:{port}", env=env, cwd=REPO_ROOT
        )

    def describe(self, model: GpuModel) -> str:
        p = self.plan
        return (
            f"LitServe: {p.litserve_workers} workers on {'the GPU' if p.device == 'cuda' else 'the CPU'}, "
            f"{p.litserve_api_servers} API servers, max_batch_size {model.max_batch_size}, batch_timeout "
            f"{p.litserve_batch_timeout_s * 1000:g} ms, fast_queue; JSON"
        )


GPU_SYSTEMS: dict[str, type[GpuSystem]] = {
    "torchgate": TorchgateGpu,
    "seed": SeedGpu,
    "litserve": LitServeGpu,
}

__all__ = ["GPU_SYSTEMS", "GpuPlan", "GpuSystem", "http_call", "http_call_get"]
