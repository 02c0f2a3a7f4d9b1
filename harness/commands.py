"""Command lines of torchgate's processes, as an operator types them."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.procs import BIN, ROOT

# Heartbeats every 0.2 s, a peer dead after 5 missed: a killed worker leaves rotation within about a second.
FAST_HEARTBEAT = ("--heartbeat-interval", "0.2", "--heartbeat-liveness", "5")


def dispatcher(frontend: str, backend: str, *extra: str) -> list[str]:
    """``python -m inference_worker.dispatcher`` between ``frontend`` and ``backend``."""
    return [
        sys.executable,
        "-m",
        "inference_worker.dispatcher",
        "--frontend",
        frontend,
        "--backend",
        backend,
        *extra,
    ]


def worker(repository: Path, backend: str, name: str, *extra: str) -> list[str]:
    """``python -m inference_worker.worker`` on the CPU with one thread, serving ``repository`` as
    ``name``."""
    return [
        sys.executable,
        "-m",
        "inference_worker.worker",
        "--model-repository",
        str(repository),
        "--dispatcher",
        backend,
        "--name",
        name,
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def gateway() -> list[str]:
    """The gateway under gunicorn; it reads everything else from ``TORCHGATE_*`` variables."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gateway" / "gunicorn_conf.py"),
        "gateway.wsgi:app",
    ]


def gateway_env(
    port: int, frontend: str, repository: Path, processes: int, threads: int, **extra: str
) -> dict[str, str]:
    """The environment of a gateway on 127.0.0.1:``port`` in front of the dispatcher at ``frontend``."""
    return {
        "TORCHGATE_BIND": f"127.0.0.1:{port}",
        "TORCHGATE_DISPATCHER": frontend,
        "TORCHGATE_MODEL_REPOSITORY": str(repository),
        "TORCHGATE_GATEWAY_PROCESSES": str(processes),
        "TORCHGATE_GATEWAY_THREADS": str(threads),
        **extra,
    }


def torchgate(*args: str) -> list[str]:
    """The ``torchgate`` command installed beside this interpreter."""
    return [str(BIN / "torchgate"), *args]


def supervisorctl(run_dir: Path, *args: str) -> list[str]:
    """``supervisorctl`` against the supervisord of ``torchgate serve --run-dir run_dir``."""
    return [str(BIN / "supervisorctl"), "-c", str(run_dir / "supervisord.conf"), *args]
