"""The ``torchgate`` command: serve a host under supervisord, render its configuration, scale and restart it.

Importing this module imports no torch: ``worker`` and ``dispatcher`` load their modules only when run.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from deploy import settings as defaults
from deploy.settings import DeploySettings

log = logging.getLogger("torchgate.deploy")

DEFAULT_RUN_DIR = "run"
RUN_DIR_ENV = "TORCHGATE_RUN_DIR"  # one variable for every command (a container sets it once)
DEFAULT_READY_TIMEOUT = 180.0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """torchgate: a process-isolated PyTorch inference server (Open Inference Protocol over HTTP)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _forwarding_command(name: str, target: str, help_text: str) -> click.Command:
    """A subcommand that imports ``module:command`` only when it runs (``--help`` included)."""

    @click.command(
        name,
        help=help_text,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.pass_context
    def forward(ctx: click.Context) -> None:
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        command.main(args=ctx.args, prog_name=f"torchgate {name}")

    return forward


main.add_command(
    _forwarding_command(
        "worker",
        "inference_worker.cli:worker_command",
        "Run one worker process (see `torchgate worker --help`).",
    )
)
main.add_command(
    _forwarding_command(
        "dispatcher",
        "inference_worker.cli:dispatcher_command",
        "Run the dispatcher (see `torchgate dispatcher --help`).",
    )
)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.argument("names", nargs=-1, required=True)
def keys(folder: Path, names: tuple[str, ...]) -> None:
    """Create CURVE key pairs NAME.key / NAME.key_secret in FOLDER, for TCP between hosts."""
    from inference_worker.security import create_keys

    for name in names:
        public, secret = create_keys(folder, name)
        click.echo(f"{name}: public {public}, secret {secret} (owner-only)")


def host_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that describe a host, shared by ``serve`` and ``render``."""
    options = [
        click.option(
            "--run-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=DEFAULT_RUN_DIR,
            show_default=True,
            envvar=RUN_DIR_ENV,
            help=f"Configuration, logs and sockets go here (or ${RUN_DIR_ENV}).",
        ),
        click.option(
            "--model-repository",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            default=None,
            help="Model repository (default: the shipped one, serving `digits`).",
        ),
        click.option(
            # named after its flag, as every option: TORCHGATE_SERVE_MODEL="a b" (not _MODELS) serves a, b
            "--model",
            "model",
            multiple=True,
            help="Serve only these models (repeat; default: all).",
        ),
        click.option(
            "--host", default=defaults.DEFAULT_HOST, show_default=True, help="HTTP address to bind."
        ),
        click.option("--port", type=int, default=defaults.DEFAULT_PORT, show_default=True),
        click.option(
            "--grpc-port",
            type=click.IntRange(1, 65535),
            default=None,
            help="Also serve the Open Inference Protocol over gRPC here (Triton's is 8001), on --host; "
            "default: no gRPC.",
        ),
        click.option(
            "--management-port",
            type=click.IntRange(1, 65535),
            default=None,
            help="Also serve TorchServe's management API (/models), and only it, here (TorchServe's: 8081).",
        ),
        click.option(
            "--metrics-port",
            type=click.IntRange(1, 65535),
            default=None,
            help="Also serve /metrics, and only it, here (TorchServe's is 8082).",
        ),
        click.option(
            "--gateway-processes",
            type=click.IntRange(min=1),
            default=None,
            help="gunicorn processes (default: one per core, at most "
            f"{defaults.MAX_DEFAULT_GATEWAY_PROCESSES}).",
        ),
        click.option(
            "--gateway-threads",
            type=click.IntRange(min=1),
            default=defaults.DEFAULT_GATEWAY_THREADS,
            show_default=True,
            help="Threads per gateway process.",
        ),
        click.option(
            "--gateway-queue",
            type=click.IntRange(min=0),
            default=None,
            help="Requests per gateway process that may wait for a thread; the next get 503 at once "
            "(default: 4 x threads).",
        ),
        click.option(
            "--gpus",
            default=None,
            help="GPU indices like 0,1,3; 'all' (must find one); 'none' for the CPU. "
            "Default: whatever nvidia-smi lists, else the CPU.",
        ),
        click.option(
            "--workers-per-gpu",
            type=click.IntRange(min=1),
            default=defaults.DEFAULT_WORKERS_PER_GPU,
            show_default=True,
        ),
        click.option(
            "--cpu-workers",
            type=click.IntRange(min=0),
            default=None,
            help=f"CPU worker slots (default without GPUs: {defaults.DEFAULT_CPU_WORKERS}, 1 on two cores or "
            "fewer; 0 with GPUs).",
        ),
        click.option(
            "--spare-slots",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Extra slots per GPU (or CPU slots without GPUs), rendered stopped: "
            "`supervisorctl start <slot>` adds capacity live.",
        ),
        click.option(
            "--worker-threads",
            type=click.IntRange(min=1),
            default=None,
            help="torch threads per CPU worker (default: the cores left after one, "
            "shared among the CPU slots).",
        ),
        click.option(
            "--gpu-worker-threads",
            type=click.IntRange(min=1),
            default=defaults.DEFAULT_GPU_WORKER_THREADS,
            show_default=True,
            help="torch CPU threads (OMP_NUM_THREADS) per GPU worker: the GPU computes, few are needed.",
        ),
        click.option(
            "--worker-startsecs",
            type=click.IntRange(min=0),
            default=defaults.DEFAULT_WORKER_STARTSECS,
            show_default=True,
            help="Seconds a worker must stay up to count as started: above model load time.",
        ),
        click.option(
            "--worker-startretries",
            type=click.IntRange(min=0),
            default=defaults.DEFAULT_WORKER_STARTRETRIES,
            show_default=True,
            help="Failed starts before a slot goes FATAL.",
        ),
        click.option(
            "--drain-seconds",
            type=click.IntRange(min=0),
            default=defaults.DEFAULT_DRAIN_SECONDS,
            show_default=True,
            help="Time a stopping worker may take to finish in-flight work.",
        ),
        click.option(
            "--model-control",
            type=click.Choice(["none", "explicit"]),
            default="none",
            show_default=True,
            help="explicit: POST /v2/repository/models/M/load and /unload are allowed (behind auth when on).",
        ),
        click.option(
            "--allow-client-shm",
            is_flag=True,
            default=False,
            help="Let clients on this host register system shared-memory regions and pass tensors in them "
            "(Triton's extension and flag; off by default, as in Triton).",
        ),
        click.option(
            "--trace-config",
            "trace_config",
            multiple=True,
            metavar="[triton,]SETTING=VALUE",
            help="Trace requests as Triton does (its flag and values): triton,file=PATH turns tracing on; "
            "level=TIMESTAMPS, rate=N, count=N, triton,log-frequency=N. Changed live at /v2/trace/setting.",
        ),
        click.option(
            "--cache-config",
            "cache_config",
            multiple=True,
            metavar="local,size=BYTES",
            help="A response cache of BYTES (Triton's flag and local cache) for the models whose config.toml "
            "says [response_cache] enable = true; shared out among the gateway processes.",
        ),
        click.option(
            "--auth-token-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="File holding a bearer token every HTTP endpoint but /v2/health/live requires.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_settings(
    run_dir: Path,
    model_repository: Path | None,
    model: tuple[str, ...],
    host: str,
    port: int,
    gateway_processes: int | None,
    gateway_threads: int,
    gpus: str | None,
    workers_per_gpu: int,
    cpu_workers: int | None,
    spare_slots: int,
    worker_threads: int | None,
    worker_startsecs: int,
    worker_startretries: int,
    drain_seconds: int,
    auth_token_file: Path | None = None,
    gateway_queue: int | None = None,
    model_control: str = "none",
    allow_client_shm: bool = False,
    trace_config: tuple[str, ...] = (),
    cache_config: tuple[str, ...] = (),
    management_port: int | None = None,
    metrics_port: int | None = None,
    gpu_worker_threads: int = defaults.DEFAULT_GPU_WORKER_THREADS,
    grpc_port: int | None = None,
) -> DeploySettings:
    """Turn the command-line options into settings, discovering GPUs when no list is given.

    Every model config is checked (each refused one is listed), and models with an ``instance_group`` get
    slots of their own.
    """
    from deploy.check import check_configs
    from deploy.gpus import resolve_gpus
    from deploy.placement import place, shared_models
    from inference_worker.repository import ConfigError

    try:
        gpu_indices = resolve_gpus(gpus)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpus") from None
    repository = model_repository or defaults.SHIPPED_REPOSITORY
    try:
        configs = check_configs(repository, list(model) or None)
        placements = place(configs, tuple(gpu_indices))
    except ConfigError as exc:
        raise click.ClickException(f"the model repository cannot be served as it is:\n{exc}") from None
    shared = shared_models(sorted(configs), placements) if placements else None
    for value in trace_config:  # the trace file's folder: there now, or every trace would fail
        if value.startswith("triton,file=") and not Path(value.partition("=")[2]).absolute().parent.is_dir():
            raise click.BadParameter(f"{value}: no such folder", param_hint="--trace-config")
    if gateway_processes is None:
        gateway_processes = defaults.default_gateway_processes(defaults.available_cores())
    if cpu_workers is None:
        cpu_workers = 0 if gpu_indices else defaults.default_cpu_workers(defaults.available_cores())
    if worker_threads is None:  # the cores left after the GPU workers' few threads, shared among CPU slots
        gpu_threads = len(gpu_indices) * workers_per_gpu * gpu_worker_threads
        cores = max(1, defaults.available_cores() - gpu_threads)
        worker_threads = defaults.default_worker_threads(cores, max(1, cpu_workers))
    try:
        return DeploySettings(
            run_dir=run_dir,
            model_repository=model_repository or defaults.SHIPPED_REPOSITORY,
            models=model,
            host=host,
            port=port,
            grpc_port=grpc_port,
            gateway_processes=gateway_processes,
            gateway_threads=gateway_threads,
            gateway_queue=gateway_queue,
            gpus=gpu_indices,
            workers_per_gpu=workers_per_gpu,
            cpu_workers=cpu_workers,
            spare_slots=spare_slots,
            worker_threads=worker_threads,
            gpu_worker_threads=gpu_worker_threads,
            worker_startsecs=worker_startsecs,
            worker_startretries=worker_startretries,
            drain_seconds=drain_seconds,
            auth_token_file=auth_token_file,
            placements=placements,
            shared_models=shared,
            model_control=model_control,
            allow_client_shm=allow_client_shm,
            trace_config=trace_config,
            response_cache_bytes=cache_size(cache_config),
            management_port=management_port,
            metrics_port=metrics_port,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def cache_size(values: tuple[str, ...]) -> int:
    """Read ``--cache-config`` as Triton does (``local,size=BYTES``): return the cache's size in bytes."""
    size = 0
    for value in values:
        kind, _, setting = value.partition(",")
        name, equals, number = setting.partition("=")
        if kind != "local" or name != "size" or not equals:
            raise click.BadParameter(
                f"{value!r}: takes local,size=BYTES (Triton's local cache; redis is not supported)",
                param_hint="--cache-config",
            )
        if not number.isdigit() or int(number) < 1:
            raise click.BadParameter(f"{value!r}: size= takes a number of bytes", param_hint="--cache-config")
        size = int(number)
    return size


def _describe(s: DeploySettings) -> str:
    lines = [
        f"gateway: {s.url} ({s.gateway_processes} x {s.gateway_threads} threads)",
        *([f"grpc: {s.grpc_address} ({s.gateway_threads} threads)"] if s.grpc_address else []),
        f"dispatcher: {s.frontend_endpoint}",
    ]
    for slot in s.slots():
        where = "CPU" if slot.gpu is None else f"GPU {slot.gpu}"
        serves = ", ".join(slot.models or s.slot_models) or "every model"
        lines.append(
            f"{slot.name}: {where}, {slot.threads} threads, serves {serves}"
            f"{'' if slot.autostart else ' (spare, stopped)'}"
        )
    return "\n".join(lines)


def _require_gpus(indices: tuple[int, ...], hint: str) -> None:
    """Refuse GPU indices this host lacks, before a worker pinned to one fails its every start (``render``
    does not check: it may write a configuration for another host)."""
    from deploy.gpus import discover_gpus

    if not indices:
        return
    found = sorted(g.index for g in discover_gpus())
    missing = [i for i in indices if i not in found]
    if missing:
        listed = ", ".join(map(str, found)) if found else "none"
        raise click.BadParameter(
            f"this host has no GPU {', '.join(map(str, missing))} (nvidia-smi and NVML list {listed})",
            param_hint=hint,
        )


@main.command()
@host_options
def render(**options: Any) -> None:
    """Write supervisord.conf for this host into the run directory; start nothing."""
    from deploy.rundir import RunDirError, clear_metrics, write_run_dir
    from deploy.supervisor_rpc import Supervisor

    s = build_settings(**options)
    try:
        path = write_run_dir(s)
    except RunDirError as exc:
        raise click.ClickException(str(exc)) from None
    if not Supervisor(s.supervisor_socket, timeout=5.0).answers():  # a run to start: its counters from zero
        clear_metrics(s)
    click.echo(_describe(s))
    click.echo(
        f"wrote {path}\nstart it: supervisord -c {path}   (in the foreground; or: torchgate serve with the "
        "same options)"
    )


@main.command()
@host_options
@click.option(
    "--unready-grace-seconds",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="On SIGTERM, seconds to keep serving while readiness answers 503 (so that load balancers and "
    "Kubernetes endpoints stop sending first), before every process drains. Ctrl-C skips it.",
)
@click.option(
    "--ready-timeout",
    type=float,
    default=DEFAULT_READY_TIMEOUT,
    show_default=True,
    help="Seconds to wait for /v2/health/ready before saying so (the service keeps running).",
)
def serve(ready_timeout: float, unready_grace_seconds: float, **options: Any) -> None:
    """Render the configuration and run supervisord in the foreground; Ctrl-C stops everything cleanly.

    Every option can also come from the environment: TORCHGATE_SERVE_<OPTION> (TORCHGATE_SERVE_PORT=8000).
    """
    from deploy.rundir import RunDirError
    from deploy.serve import ServeError
    from deploy.serve import serve as run_serve
    from inference_worker.repository import ConfigError

    s = build_settings(**options)
    _require_gpus(s.gpus, "--gpus")
    click.echo(_describe(s))
    try:
        code = run_serve(
            s,
            ready_timeout,
            echo=functools.partial(click.echo, err=False),
            unready_grace=unready_grace_seconds,
        )
    except (ServeError, ConfigError, RunDirError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command()
@click.option(
    "--model-repository",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Model repository (default: the shipped one).",
)
@click.option("--model", "models", multiple=True, help="Check only these models (repeat; default: all).")
@click.option("--device", default="cpu", show_default=True, help="Where to load: cpu, cuda, cuda:N.")
@click.option("--no-load", is_flag=True, help="Check the configs only; load nothing.")
def check(model_repository: Path | None, models: tuple[str, ...], device: str, no_load: bool) -> None:
    """Check every model's config, then load and warm up each version in a subprocess; a line per version."""
    from deploy.check import check_repository
    from inference_worker.repository import ConfigError

    root = model_repository or defaults.SHIPPED_REPOSITORY
    try:
        results = check_repository(
            root, list(models) or None, device, load=not no_load, report=lambda r: click.echo(r.line())
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    failed = sum(1 for r in results if not r.ok)
    click.echo(f"{len(results) - failed} OK, {failed} failed ({root})")
    sys.exit(1 if failed else 0)


def _run_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_RUN_DIR,
        show_default=True,
        envvar=RUN_DIR_ENV,
        help=f"The run directory `torchgate serve` uses (or ${RUN_DIR_ENV}).",
    )(f)


def _connect(run_dir: Path) -> tuple[DeploySettings, Any]:
    from deploy.supervisor_rpc import RPC_TIMEOUT, Supervisor

    try:
        s = DeploySettings.load(run_dir)
        timeout = max(RPC_TIMEOUT, s.worker_stopwaitsecs + 30, s.worker_startsecs + 30)
        sup = Supervisor.from_conf(s.conf_path, timeout=timeout)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if not sup.is_up():
        raise click.ClickException(
            f"supervisord does not answer on {s.supervisor_socket}: is `torchgate serve` running?"
        )
    return s, sup


@main.command("add-worker")
@_run_dir_option
@click.option(
    "--gpu", type=click.IntRange(min=0), default=None, help="Pin the new slot to this GPU (default: CPU)."
)
@click.option("--no-start", is_flag=True, help="Add the slot stopped (start it later with supervisorctl).")
@click.option("--ready-timeout", type=float, default=120.0, show_default=True)
def add_worker(run_dir: Path, gpu: int | None, no_start: bool, ready_timeout: float) -> None:
    """Add a worker slot beyond the rendered ones, restarting nothing that runs."""
    from deploy.rundir import RunDirError
    from deploy.scaling import ScalingError
    from deploy.scaling import add_worker as run_add

    s, sup = _connect(run_dir)
    _require_gpus(() if gpu is None else (gpu,), "--gpu")
    try:
        slot = run_add(s, sup, gpu=gpu, start=not no_start, ready_timeout=ready_timeout)
    except (ScalingError, TimeoutError, RunDirError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{slot.name}: {'ready' if slot.autostart else 'added, stopped'}")


@main.command("remove-worker")
@_run_dir_option
@click.argument("name")
def remove_worker(run_dir: Path, name: str) -> None:
    """Drain and remove a slot that add-worker added."""
    from deploy.scaling import ScalingError
    from deploy.scaling import remove_worker as run_remove

    s, sup = _connect(run_dir)
    try:
        run_remove(s, sup, name)
    except ScalingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: removed")


@main.command("rolling-restart")
@_run_dir_option
@click.option(
    "--slot", "slots", multiple=True, help="Restart only these slots (repeat; default: every running one)."
)
@click.option(
    "--ready-timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds each slot may take to be ready again before the restart stops.",
)
def rolling_restart(run_dir: Path, slots: tuple[str, ...], ready_timeout: float) -> None:
    """Restart worker slots one at a time, each drained first and ready again before the next."""
    from deploy.rolling import RollingRestartError
    from deploy.rolling import rolling_restart as run_rolling

    s, sup = _connect(run_dir)
    try:
        done = run_rolling(s, sup, slots, ready_timeout=ready_timeout, report=click.echo)
    except (RollingRestartError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from None
    slots_word = "slot" if len(done) == 1 else "slots"
    click.echo(f"restarted {len(done)} {slots_word}: {' '.join(done) or '(none running)'}")


@main.command("trace-summary")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def trace_summary(files: tuple[Path, ...]) -> None:
    """Say where traced requests spent their time, per model and protocol (trace files written with
    --trace-config, FILE and FILE.<index>, or Triton's)."""
    from gateway import trace_summary as summary

    entries: list[Any] = []
    for path in files:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{path}: not a trace file ({exc})") from None
        if not isinstance(doc, list):
            raise click.ClickException(f"{path}: not a trace file (a JSON array of trace entries)")
        entries += doc
    click.echo(summary.report(summary.summarize(summary.traces(entries))), nl=False)


@main.command()
@_run_dir_option
def status(run_dir: Path) -> None:
    """Show every process as supervisord and the dispatcher see it, and each model's state and reason."""
    from deploy.dispatcher_status import model_states, query_status

    s, sup = _connect(run_dir)
    try:
        fields = query_status(s.frontend_endpoint)
        ready = {w.name: w for w in fields.worker_list()}
        entries = {str(w.get("worker")): w for w in fields.workers if isinstance(w, dict)}
    except TimeoutError:
        fields, ready, entries = None, {}, {}
        click.echo("dispatcher: no answer")
    now = time.time()
    for name, info in sorted(sup.processes().items()):
        worker = ready.get(name)
        seen = f"  dispatcher: {worker.state}" if worker else ""
        entry = entries.get(name) or {}
        if worker and isinstance(entry.get("rss_bytes"), int) and entry["rss_bytes"] > 0:
            seen += f", {entry['rss_bytes'] >> 20} MiB resident"
        computing = entry.get("computing")
        if isinstance(computing, dict) and isinstance(computing.get("since"), int | float):
            seen += (
                f", computing batch {computing.get('batch')} of {computing.get('model')} "
                f"for {now - computing['since']:.1f}s"
            )
        click.echo(f"{name:<22} {info['statename']:<9} {info['description']}{seen}")
    if fields is not None:
        for line in model_states(fields, s.model_repository, list(s.models)):
            click.echo(line)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@_run_dir_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def ctl(run_dir: Path, args: tuple[str, ...]) -> None:
    """Run supervisorctl on this run directory's supervisord (torchgate ctl status, ctl tail -f gateway)."""
    conf = run_dir / "supervisord.conf"
    if not conf.is_file():
        raise click.ClickException(
            f"{conf}: missing; start the host first (torchgate serve --run-dir {run_dir})"
        )
    command = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args]
    os.execv(command[0], command)


@main.command()
@_run_dir_option
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Then sleep this long (a Kubernetes preStop hook: endpoints stop sending before SIGTERM).",
)
def drain(run_dir: Path, wait: float) -> None:
    """Turn readiness to 503 while the host keeps serving; a later SIGTERM counts the grace from now."""
    import time

    from deploy.serve import mark_draining

    try:
        s = DeploySettings.load(run_dir)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    began = mark_draining(s)
    click.echo(f"torchgate: {s.url}/v2/health/ready answers 503 from now on; stop the host to drain it")
    time.sleep(max(0.0, began + wait - time.time()))


@main.command()
@_run_dir_option
@click.option("--live", is_flag=True, help="Probe liveness instead of readiness.")
@click.option("--timeout", type=float, default=5.0, show_default=True)
def probe(run_dir: Path, live: bool, timeout: float) -> None:
    """Exit 0 when this host's /v2/health/ready (or /live) answers 200: a container's health check."""
    import urllib.error
    import urllib.request

    from deploy.serve import ServeError, read_token

    try:
        s = DeploySettings.load(run_dir)
        token = read_token(s.auth_token_file)
    except (OSError, ValueError, ServeError) as exc:
        raise click.ClickException(str(exc)) from None
    url = f"{s.url}/v2/health/{'live' if live else 'ready'}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"{url}: {exc}") from None
    if status != 200:
        raise click.ClickException(f"{url}: {status}")
    click.echo(f"{url}: 200")


@main.command()
@_run_dir_option
def gateway(run_dir: Path) -> None:
    """Run the gateway (gunicorn) in the foreground with the run directory's settings."""
    from deploy.supervisor_conf import gateway_command, gateway_environment

    try:
        s = DeploySettings.load(run_dir)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    command = gateway_command(s)
    os.execve(command[0], command, {**os.environ, **gateway_environment(s)})


def run() -> None:
    """The console script: every option may also come from TORCHGATE_<COMMAND>_<OPTION> variables."""
    main(auto_envvar_prefix="TORCHGATE")


if __name__ == "__main__":
    run()
