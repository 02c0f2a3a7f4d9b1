"""TorchServe 0.12: a .mar built by torch-model-archiver around the exported model and ``ts_handler.py``.

Settings: ``model_workers`` Python workers, ``batchSize``/``maxBatchDelay`` as torchgate's batching, job queue
as torchgate's queue, token auth and the model-control API off (nothing but the benchmark can reach it),
system metrics, metrics API and the access log off, async logging; the Java frontend's Netty threads left at
TorchServe's default (one per core).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from benchmarks.models import WORKLOAD_SPECS, Sample
from benchmarks.payloads import HttpRequest, raw_binary, seed_json
from benchmarks.procs import Launched, http_status, launch
from benchmarks.settings import BenchSettings
from benchmarks.systems.base import PYTHON, StartContext, System
from harness.procs import free_port

HANDLER = Path(__file__).resolve().parent / "ts_handler.py"
MAX_BODY = 64 * 1024 * 1024  # torchgate's default body limit (TorchServe's own is 6.5 MB)
RESPONSE_TIMEOUT_S = 120

LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="warn"/>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def _bin(name: str) -> str:
    return str(Path(PYTHON).parent / name)


class TorchServeSystem(System):
    """TorchServe with our handler, JSON and raw binary bodies."""

    name = "torchserve"
    label = "TorchServe 0.12"
    answer_kind = {"json": "seed", "binary": "raw"}

    def unavailable(self) -> str | None:
        if shutil.which("java") is None:
            return "java not found (TorchServe needs Java 11+)"
        if not Path(_bin("torchserve")).exists() or not Path(_bin("torch-model-archiver")).exists():
            return "torchserve / torch-model-archiver not installed (pip install -e '.[bench]')"
        return None

    def formats(self, workload: str) -> tuple[str, ...]:
        return ("json", "binary")

    def archive(self, ctx: StartContext) -> Path:
        """Build ``<work>/store/<model>.mar`` with the handler, the .pt2 and the model's input signature."""
        s, spec = ctx.settings, WORKLOAD_SPECS[ctx.workload]
        build, store = ctx.work_dir / "build", ctx.work_dir / "store"
        shutil.rmtree(store, ignore_errors=True)
        build.mkdir(parents=True, exist_ok=True)
        store.mkdir(parents=True)
        signature = build / "signature.json"
        signature.write_text(
            json.dumps(
                {
                    "inputs": [
                        {"name": t.name, "datatype": t.datatype, "dims": list(t.dims)} for t in spec.inputs
                    ]
                }
            )
        )
        config = build / "model-config.yaml"
        config.write_text(
            f"minWorkers: {s.model_workers}\nmaxWorkers: {s.model_workers}\n"
            f"batchSize: {s.batch_size(ctx.workload)}\n"
            f"maxBatchDelay: {max(1, round(s.max_batch_delay_ms))}\n"
            f"responseTimeout: {RESPONSE_TIMEOUT_S}\n"
        )
        subprocess.run(
            [
                _bin("torch-model-archiver"),
                "--model-name",
                spec.model_name,
                "--version",
                "1.0",
                "--handler",
                str(HANDLER),
                "--serialized-file",
                str(ctx.model_path),
                "--extra-files",
                str(signature),
                "--config-file",
                str(config),
                "--export-path",
                str(store),
                "--force",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        return store

    def launch(self, ctx: StartContext) -> Launched:
        s, spec = ctx.settings, WORKLOAD_SPECS[ctx.workload]
        store = self.archive(ctx)
        tmp = ctx.work_dir / "tmp"  # pid file and worker sockets: separate from any other TorchServe here
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (ctx.work_dir / "log4j2.xml").write_text(LOG4J2)
        properties = ctx.work_dir / "config.properties"
        properties.write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{ctx.port}",
                    f"management_address=http://127.0.0.1:{free_port()}",
                    f"metrics_address=http://127.0.0.1:{free_port()}",
                    f"model_store={store}",
                    f"load_models={spec.model_name}.mar",
                    f"default_workers_per_model={s.model_workers}",
                    f"job_queue_size={s.queue_size}",
                    f"max_request_size={MAX_BODY}",
                    f"max_response_size={MAX_BODY}",
                    f"default_response_timeout={RESPONSE_TIMEOUT_S}",
                    "disable_token_authorization=true",
                    "enable_model_api=false",
                    "disable_system_metrics=true",
                    "enable_metrics_api=false",
                    "async_logging=true",
                    "install_py_dep_per_model=false",
                    "",
                ]
            )
        )
        env = {
            "TEMP": str(tmp),
            "TMPDIR": str(tmp),
            "BENCH_TORCH_THREADS": str(s.torch_threads),
            "OMP_NUM_THREADS": str(s.torch_threads),
            "LOG_LOCATION": str(ctx.work_dir / "logs"),
            "METRICS_LOCATION": str(ctx.work_dir / "logs"),
        }
        cmd = [
            _bin("torchserve"),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--ts-config",
            str(properties),
            "--model-store",
            str(store),
            "--log-config",
            str(ctx.work_dir / "log4j2.xml"),
        ]
        return launch(self.name, cmd, ctx.work_dir / "torchserve.log", ctx.url, env=env, cwd=ctx.work_dir)

    def ready(self, ctx: StartContext, probe: HttpRequest) -> bool:
        return http_status(ctx.url + probe.path, probe.body, probe.headers, timeout=30) == 200

    def request(self, workload: str, fmt: str, sample: Sample) -> HttpRequest:
        path = f"/predictions/{WORKLOAD_SPECS[workload].model_name}"
        return seed_json(workload, sample, path) if fmt == "json" else raw_binary(workload, sample, path)

    def describe(self, settings: BenchSettings, workload: str) -> str:
        return (
            f"{settings.model_workers} workers x {settings.torch_threads} torch threads, "
            f"batchSize {settings.batch_size(workload)}, maxBatchDelay "
            f"{max(1, round(settings.max_batch_delay_ms))} ms (TorchServe reads 0 "
            "as 100 ms), "
            f"job_queue_size {settings.queue_size}, token auth, model API, metrics API, system metrics and "
            'access log off, async logging; JSON `{"input": ...}` or raw tensor bytes'
        )
