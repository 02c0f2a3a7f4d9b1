"""LitServe (current release) with the same workers, batch size and batch delay as torchgate; JSON only."""

from __future__ import annotations

from benchmarks.models import WORKLOAD_SPECS, Sample
from benchmarks.payloads import HttpRequest, seed_json
from benchmarks.procs import Launched, http_status, launch
from benchmarks.settings import REPO_ROOT, BenchSettings
from benchmarks.systems.base import PYTHON, StartContext, System


class LitServeSystem(System):
    """LitServe: uvicorn API server(s), worker processes fed through multiprocessing queues."""

    name = "litserve"
    label = "LitServe"
    answer_kind = {"json": "seed"}

    def unavailable(self) -> str | None:
        try:
            import litserve  # noqa: F401
        except ImportError:
            return "litserve not installed (pip install -e '.[bench]')"
        return None

    def formats(self, workload: str) -> tuple[str, ...]:
        return ("json",)  # LitServe decodes every request body as JSON (or a form)

    def launch(self, ctx: StartContext) -> Launched:
        s, spec = ctx.settings, WORKLOAD_SPECS[ctx.workload]
        cmd = [
            PYTHON,
            "-m",
            "benchmarks.systems.litserve_app",
            "--port",
            str(ctx.port),
            "--model",
            str(ctx.model_path),
            "--inputs",
            ",".join(f"{t.name}:{t.datatype}" for t in spec.inputs),
            "--workers",
            str(s.model_workers),
            "--api-servers",
            str(s.http_processes),
            "--torch-threads",
            str(s.torch_threads),
            "--max-batch-size",
            str(s.batch_size(ctx.workload)),
            "--batch-timeout",
            str(s.max_batch_delay_ms / 1000),
            "--fast-queue",
        ]
        env = {"OMP_NUM_THREADS": str(s.torch_threads), "LITSERVE_DISABLE_TELEMETRY": "1"}
        return launch(self.name, cmd, ctx.work_dir / "litserve.log", ctx.url, env=env, cwd=REPO_ROOT)

    def ready(self, ctx: StartContext, probe: HttpRequest) -> bool:
        return http_status(ctx.url + "/health", timeout=2) == 200

    def request(self, workload: str, fmt: str, sample: Sample) -> HttpRequest:
        return seed_json(workload, sample, "/predict")

    def describe(self, settings: BenchSettings, workload: str) -> str:
        return (
            f"{settings.http_processes} API server, {settings.model_workers} "
            f"workers x {settings.torch_threads} "
            f"torch threads, max_batch_size {settings.batch_size(workload)}, "
            f"batch_timeout {settings.max_batch_delay_ms / 1000} s, fast_queue (ZeroMQ, LitServe's advice "
            "above 100 req/s); JSON only"
        )
