"""The empty Flask endpoint (the gateway limit) and the seed's app, both under torchgate's gunicorn
settings."""

from __future__ import annotations

import dataclasses

from benchmarks.models import WORKLOAD_SPECS, Sample
from benchmarks.payloads import HttpRequest, oip_binary, oip_json, seed_json
from benchmarks.procs import Launched, http_status, launch
from benchmarks.settings import REPO_ROOT, BenchSettings
from benchmarks.systems.base import PYTHON, StartContext, System

# The gateway's gunicorn settings (gateway/gunicorn_conf.py), minus what only matters for restarts.
GUNICORN_FLAGS = [
    "--worker-class",
    "gthread",
    "--keep-alive",
    "5",
    "--backlog",
    "2048",
    "--timeout",
    "60",
    "--log-level",
    "warning",
]


def gunicorn_command(app: str, ctx: StartContext) -> list[str]:
    s = ctx.settings
    return [
        PYTHON,
        "-m",
        "gunicorn",
        *GUNICORN_FLAGS,
        "--workers",
        str(s.http_processes),
        "--threads",
        str(s.http_threads),
        "--bind",
        f"127.0.0.1:{ctx.port}",
        app,
    ]


def seed_settings(s: BenchSettings) -> BenchSettings:
    """The settings with the seed app's own gunicorn size, where one is set."""
    return dataclasses.replace(
        s,
        http_processes=s.seed_http_processes or s.http_processes,
        http_threads=s.seed_http_threads or s.http_threads,
    )


def gunicorn_words(s: BenchSettings) -> str:
    return f"gunicorn gthread {s.http_processes} process x {s.http_threads} threads, keep-alive 5 s"


class EmptyFlask(System):
    """Flask under gunicorn that reads the body and answers ``{}``: nothing can serve HTTP faster here."""

    name = "empty_flask"
    label = "empty Flask"

    def formats(self, workload: str) -> tuple[str, ...]:
        return ("json", "binary")

    def launch(self, ctx: StartContext) -> Launched:
        return launch(
            self.name,
            gunicorn_command("benchmarks.systems.empty_app:create_app()", ctx),
            ctx.work_dir / "gunicorn.log",
            ctx.url,
            cwd=REPO_ROOT,
        )

    def ready(self, ctx: StartContext, probe: HttpRequest) -> bool:
        return http_status(ctx.url + "/health", timeout=2) == 200

    def request(self, workload: str, fmt: str, sample: Sample) -> HttpRequest:
        """The torchgate request bodies (OIP JSON or binary), so the HTTP work is the same."""
        return (oip_json if fmt == "json" else oip_binary)(workload, sample, "/infer")

    def describe(self, settings: BenchSettings, workload: str) -> str:
        return f"{gunicorn_words(settings)}; reads the torchgate request body, answers `{{}}`"


class SeedApp(System):
    """The seed tutorial's app: Flask under gunicorn, the exported model in memory, JSON in and out."""

    name = "seed"
    label = "seed Flask app"
    answer_kind = {"json": "seed"}

    def formats(self, workload: str) -> tuple[str, ...]:
        return ("json",)

    def launch(self, ctx: StartContext) -> Launched:
        spec = WORKLOAD_SPECS[ctx.workload]
        env = {
            "BENCH_MODEL": str(ctx.model_path),
            "BENCH_INPUTS": ",".join(f"{t.name}:{t.datatype}" for t in spec.inputs),
            "BENCH_TORCH_THREADS": str(ctx.settings.seed_torch_threads),
        }
        return launch(
            self.name,
            gunicorn_command(
                "benchmarks.systems.seed_app:create_app()",
                dataclasses.replace(ctx, settings=seed_settings(ctx.settings)),
            ),
            ctx.work_dir / "gunicorn.log",
            ctx.url,
            env=env,
            cwd=REPO_ROOT,
        )

    def ready(self, ctx: StartContext, probe: HttpRequest) -> bool:
        return http_status(ctx.url + "/health", timeout=2) == 200

    def request(self, workload: str, fmt: str, sample: Sample) -> HttpRequest:
        return seed_json(workload, sample)

    def describe(self, settings: BenchSettings, workload: str) -> str:
        return (
            f"{gunicorn_words(seed_settings(settings))}; model loaded once per process, "
            f"torch threads {settings.seed_torch_threads}, `torch.inference_mode()`, no batching"
        )
