"""torchgate, started the way a user starts it: ``torchgate serve --run-dir ... --model-repository ... --port
P``."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from benchmarks.models import WORKLOAD_SPECS, Sample
from benchmarks.payloads import HttpRequest, oip_binary, oip_json
from benchmarks.procs import Launched, http_status, launch
from benchmarks.settings import REPO_ROOT, BenchSettings
from benchmarks.systems.base import PYTHON, StartContext, System

TORCHGATE = Path(PYTHON).parent / "torchgate"


class Torchgate(System):
    """torchgate: gunicorn gateway, dispatcher and CPU workers under supervisord; OIP JSON and binary."""

    name = "torchgate"
    label = "torchgate"
    answer_kind = {"json": "oip", "binary": "oip"}

    def unavailable(self) -> str | None:
        if not TORCHGATE.exists():
            return f"{TORCHGATE} missing (pip install -e .)"
        for module in (
            "deploy.cli",
            "gateway.wsgi",
            "inference_worker.worker",
            "inference_worker.dispatcher",
        ):
            if importlib.util.find_spec(module) is None:
                return f"module {module} not found: torchgate is not complete in this checkout"
        return None

    def formats(self, workload: str) -> tuple[str, ...]:
        return ("json", "binary")

    def repository(self, ctx: StartContext) -> Path:
        """A repository holding only this workload's model (a symlink), so readiness waits on it alone."""
        name = WORKLOAD_SPECS[ctx.workload].model_name
        root = ctx.work_dir / "repository"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        (root / name).symlink_to(ctx.repository / name, target_is_directory=True)
        return root

    def command(self, ctx: StartContext, run_dir: Path) -> list[str]:
        s = ctx.settings
        command = [
            str(TORCHGATE),
            "serve",
            "--run-dir",
            str(run_dir),
            "--model-repository",
            str(self.repository(ctx)),
            "--model",
            WORKLOAD_SPECS[ctx.workload].model_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(ctx.port),
            "--gpus",
            "none",
            "--ready-timeout",
            str(int(s.ready_timeout_s)),
        ]
        if s.torchgate_defaults:  # sized as `torchgate serve` sizes itself on this machine
            return command
        return [
            *command,
            "--gateway-processes",
            str(s.gateway_processes or s.http_processes),
            "--gateway-threads",
            str(s.http_threads),
            "--cpu-workers",
            str(s.model_workers),
            "--worker-threads",
            str(s.torch_threads),
        ]

    def launch(self, ctx: StartContext) -> Launched:
        run_dir = ctx.work_dir / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        return launch(
            self.name,
            self.command(ctx, run_dir),
            ctx.work_dir / "torchgate.log",
            ctx.url,
            env={"TORCHGATE_LOG_LEVEL": "warning"},
            cwd=REPO_ROOT,
        )

    def ready(self, ctx: StartContext, probe: HttpRequest) -> bool:
        return http_status(ctx.url + "/v2/health/ready", timeout=2) == 200

    def request(self, workload: str, fmt: str, sample: Sample) -> HttpRequest:
        return oip_json(workload, sample) if fmt == "json" else oip_binary(workload, sample)

    def describe(self, settings: BenchSettings, workload: str) -> str:
        if settings.torchgate_defaults:
            return (
                "sized by `torchgate serve` itself on this machine (gateway processes and threads, CPU "
                f"workers, torch threads), max_batch_size {settings.batch_size(workload)}, "
                f"max_queue_delay_us {int(settings.max_batch_delay_ms * 1000)}; OIP JSON or Triton binary"
            )
        return (
            f"gateway {settings.gateway_processes or settings.http_processes} process x "
            f"{settings.http_threads} threads "
            "(gthread with torchgate's admission, gateway/admission.py), "
            f"{settings.model_workers} CPU workers x {settings.torch_threads} torch threads, "
            f"max_batch_size {settings.batch_size(workload)}, "
            f"max_queue_delay_us {int(settings.max_batch_delay_ms * 1000)}, "
            f"max_queue_size {settings.queue_size}; "
            "OIP JSON or Triton binary (binary outputs)"
        )
