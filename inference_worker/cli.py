"""The click commands of the worker-side processes: ``torchgate worker`` and ``torchgate dispatcher``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from inference_worker import lifeline, log_settings, logs


@click.command("worker")
@click.option(
    "--model-repository",
    "repository",
    type=click.Path(path_type=Path),
    required=True,
    envvar="TORCHGATE_MODEL_REPOSITORY",
    help="Folder of <model>/config.toml (or config.pbtxt) and <model>/<version>/.",
)
@click.option("--dispatcher", required=True, envvar="TORCHGATE_BACKEND", help="Dispatcher backend endpoint.")
@click.option("--name", default="worker", help="Slot name, as supervisord knows it.")
@click.option("--model", "models", multiple=True, help="Serve only this model (repeatable).")
@click.option(
    "--device",
    default=None,
    help="cpu, cuda, cuda:N. Default: the GPU CUDA_VISIBLE_DEVICES selects, else CPU.",
)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="torch CPU threads (a GPU worker needs few: the GPU computes; 0: torch's default).",
)
@click.option(
    "--capacity", type=int, default=None, help="Requests in flight; default 2 x the largest max_batch_size."
)
@click.option("--heartbeat-interval", type=float, default=0.5, show_default=True)
@click.option("--heartbeat-liveness", type=int, default=8, show_default=True)
@click.option(
    "--curve-secret-key", type=click.Path(path_type=Path), default=None, help="For a TCP dispatcher."
)
@click.option(
    "--curve-server-key", type=click.Path(path_type=Path), default=None, help="For a TCP dispatcher."
)
def worker_command(
    repository: Path,
    dispatcher: str,
    name: str,
    models: tuple[str, ...],
    device: str | None,
    threads: int,
    capacity: int | None,
    heartbeat_interval: float,
    heartbeat_liveness: int,
    curve_secret_key: Path | None,
    curve_server_key: Path | None,
) -> None:
    """Serve models from a repository to the dispatcher."""
    from inference_worker.security import is_network

    if is_network(dispatcher) and not (curve_secret_key and curve_server_key):  # before loading any model
        raise click.UsageError("a TCP dispatcher needs --curve-secret-key and --curve-server-key")
    from inference_worker.worker import WorkerConfig, run_worker  # torch is imported here, not for --help

    lifeline.die_with_supervisor()
    logs.configure()
    log_settings.watch(os.environ.get(log_settings.ENV))  # Triton's logging extension
    config = WorkerConfig(
        repository=repository,
        dispatcher=dispatcher,
        name=name,
        models=models,
        device=device,
        threads=threads or None,
        capacity=capacity,
        heartbeat_interval=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness,
        curve_secret_key=curve_secret_key,
        curve_server_key=curve_server_key,
    )
    sys.exit(run_worker(config))


@click.command("dispatcher")
@click.option(
    "--frontend", required=True, envvar="TORCHGATE_DISPATCHER", help="Endpoint gateways connect to."
)
@click.option("--backend", required=True, envvar="TORCHGATE_BACKEND", help="Endpoint workers connect to.")
@click.option("--heartbeat-interval", type=float, default=0.5, show_default=True)
@click.option("--heartbeat-liveness", type=int, default=8, show_default=True)
@click.option(
    "--startup-grace",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds after start in which requests wait for workers to register instead of a 503.",
)
@click.option(
    "--stop-grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a stop signal waits for the requests in flight to be answered (a second signal: at once).",
)
@click.option(
    "--stop-linger",
    type=float,
    default=2.5,
    show_default=True,
    help="Seconds a stop signal keeps routing at least (requests that stopping gateways still take).",
)
@click.option(
    "--curve-secret-key",
    type=click.Path(path_type=Path),
    default=None,
    help="The dispatcher's CURVE secret key file (required for TCP endpoints).",
)
@click.option(
    "--curve-authorized",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of public keys of peers allowed over TCP.",
)
@click.option(
    "--stats-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Keep the workers' statistics in this file too: a restarted dispatcher counts on from them.",
)
def dispatcher_command(
    frontend: str,
    backend: str,
    heartbeat_interval: float,
    heartbeat_liveness: int,
    startup_grace: float,
    stop_grace: float,
    stop_linger: float,
    curve_secret_key: Path | None,
    curve_authorized: Path | None,
    stats_file: Path | None,
) -> None:
    """Route requests between gateways and workers."""
    from inference_worker.dispatcher import DispatcherConfig, run_dispatcher

    lifeline.die_with_supervisor()
    logs.configure()
    log_settings.watch(os.environ.get(log_settings.ENV))  # Triton's logging extension
    sys.exit(
        run_dispatcher(
            DispatcherConfig(
                frontend,
                backend,
                heartbeat_interval,
                heartbeat_liveness,
                startup_grace=startup_grace,
                stop_grace=stop_grace,
                stop_linger=stop_linger,
                curve_secret_key=curve_secret_key,
                curve_authorized=curve_authorized,
                stats_file=stats_file,
            )
        )
    )
