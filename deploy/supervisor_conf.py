"""Render supervisord's configuration from :class:`DeploySettings`: pure functions, no I/O.

Every program is its own supervisord group (no ``[group:x]`` sections): ``supervisorctl update`` stops and
re-adds every process of a *changed* group, so one group per slot means adding a slot (a new file in
``conf.d/``) changes nothing that runs.
"""

from __future__ import annotations

import os
import pwd
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from deploy.settings import DeploySettings, Slot

PRIORITY_DISPATCHER = 100
PRIORITY_WORKER = 200
PRIORITY_GATEWAY = 300
DISPATCHER_STARTSECS = 2
DISPATCHER_STARTRETRIES = 10
DISPATCHER_STOPWAITSECS = 15  # it answers what is in flight first (--stop-grace 10 s, --stop-linger 2.5 s)
GATEWAY_STARTSECS = 3
GATEWAY_STARTRETRIES = 10
# A worker exits 3 when its models cannot load and 2 when its configuration is refused: restarting it cannot
# help. Before startsecs such an exit is a failed start (retried, then FATAL); after it, the slot stays
# EXITED, with the reason in its log, instead of looping. Any other exit (a crash, a kill) is restarted. It
# exits 0 only once drained after a stop request: expected, so supervisord logs the stop at INFO, not WARN.
WORKER_FINAL_EXIT_CODES = "0,2,3"


@dataclass(frozen=True, slots=True)
class Credentials:
    """The username and password the control socket asks for (generated per run directory)."""

    username: str
    password: str


def render_supervisord_conf(s: DeploySettings, credentials: Credentials, as_root: bool | None = None) -> str:
    """Return the whole ``supervisord.conf`` for this host.

    The control socket asks for ``credentials`` (a second lock beside its mode, and no CRIT line at start);
    run as root, supervisord is told to stay root, which it otherwise reports as CRIT.
    """
    if as_root is None:
        as_root = os.geteuid() == 0
    auth = [("username", credentials.username), ("password", credentials.password)]
    parts = [
        _comment(s),
        _section("unix_http_server", [("file", str(s.supervisor_socket)), ("chmod", "0700"), *auth]),
        _section(
            "supervisord",
            [
                *([("user", pwd.getpwuid(0).pw_name)] if as_root else []),
                ("logfile", str(s.log_dir / "supervisord.log")),
                ("logfile_maxbytes", str(s.log_maxbytes)),
                ("logfile_backups", str(s.log_backups)),
                ("pidfile", str(s.run_dir / "supervisord.pid")),
                ("childlogdir", str(s.log_dir)),
                ("directory", str(s.run_dir)),
                ("nodaemon", "true"),
                ("umask", "077"),
                ("identifier", "torchgate"),
            ],
        ),
        _section(
            "rpcinterface:supervisor",
            [("supervisor.rpcinterface_factory", "supervisor.rpcinterface:make_main_rpcinterface")],
        ),
        _section("supervisorctl", [("serverurl", f"unix://{s.supervisor_socket}"), *auth]),
        render_dispatcher(s),
        *(render_worker(s, slot) for slot in s.slots()),
        render_gateway(s),
        *([render_grpc(s)] if s.grpc_port is not None else []),
        "; Slots added live by `torchgate add-worker` (one file, one program, one group each).\n"
        + _section("include", [("files", "conf.d/*.conf")]),
    ]
    return "\n".join(parts)


def render_dispatcher(s: DeploySettings) -> str:
    command = [
        s.python,
        "-m",
        "inference_worker.dispatcher",
        "--frontend",
        s.frontend_endpoint,
        "--backend",
        s.backend_endpoint,
        "--stats-file",
        str(s.stats_path),
    ]
    return _program(
        s,
        "dispatcher",
        command,
        {"PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""},
        priority=PRIORITY_DISPATCHER,
        startsecs=DISPATCHER_STARTSECS,
        startretries=DISPATCHER_STARTRETRIES,
        stopwaitsecs=DISPATCHER_STOPWAITSECS,
    )


def worker_command(s: DeploySettings, slot: Slot) -> list[str]:
    """Return the command line of one worker slot."""
    command = [
        s.python,
        "-m",
        "inference_worker.worker",
        "--model-repository",
        str(s.model_repository),
        "--dispatcher",
        s.backend_endpoint,
        "--name",
        slot.name,
        "--device",
        slot.device,
        "--threads",
        str(slot.threads),
    ]
    for model in slot.models or s.slot_models:
        command += ["--model", model]
    return command


def worker_environment(slot: Slot) -> dict[str, str]:
    """Pin the slot to its GPU before the process can touch CUDA; CPU slots see no GPU at all."""
    return {
        "CUDA_VISIBLE_DEVICES": "" if slot.gpu is None else str(slot.gpu),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "OMP_NUM_THREADS": str(slot.threads),
        "MKL_NUM_THREADS": str(slot.threads),
        "PYTHONUNBUFFERED": "1",
    }


def render_worker(s: DeploySettings, slot: Slot) -> str:
    """Return the ``[program:...]`` section of one worker slot."""
    return _program(
        s,
        slot.name,
        worker_command(s, slot),
        worker_environment(slot),
        priority=PRIORITY_WORKER,
        startsecs=s.worker_startsecs,
        startretries=s.worker_startretries,
        stopwaitsecs=s.worker_stopwaitsecs,
        autostart=slot.autostart,
        autorestart="unexpected",
        exitcodes=WORKER_FINAL_EXIT_CODES,
    )


def gateway_command(s: DeploySettings) -> list[str]:
    binds = []
    for port in (s.port, s.management_port, s.metrics_port):  # TorchServe's ports too, when asked for
        if port is not None:
            binds += ["--bind", f"[{s.host}]:{port}" if ":" in s.host else f"{s.host}:{port}"]
    return [
        s.python,
        "-m",
        "gunicorn",
        "--config",
        "python:gateway.gunicorn_conf",  # worker class, timeout, logging, keep-alive; the flags below win
        *binds,
        "--workers",
        str(s.gateway_processes),
        "--threads",
        str(s.gateway_threads),
        "--graceful-timeout",
        str(s.gateway_graceful_seconds),
        "--name",
        "torchgate-gateway",
        "gateway.wsgi:app",
    ]


def gateway_environment(s: DeploySettings) -> dict[str, str]:
    env = {
        "TORCHGATE_DISPATCHER": s.frontend_endpoint,
        "TORCHGATE_MODEL_REPOSITORY": str(s.model_repository),
        # Every gunicorn process keeps its metrics here; `torchgate serve` empties it when a run starts, and a
        # gateway (or gRPC server) restarted by supervisord keeps the counters there (gateway.multiproc).
        "PROMETHEUS_MULTIPROC_DIR": str(s.metrics_dir),
        "TORCHGATE_METRICS_KEEP": "1",
        "TORCHGATE_DRAIN_FILE": str(s.drain_flag),  # readiness answers 503 while it exists
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    }
    if s.gateway_queue is not None:
        env["TORCHGATE_GATEWAY_QUEUE"] = str(s.gateway_queue)
    if s.models:  # the gateway validates against, and waits for, only the models the workers load
        env["TORCHGATE_MODELS"] = ",".join(s.models)
    if s.model_control != "none":
        env["TORCHGATE_MODEL_CONTROL"] = s.model_control
    if s.auth_token_file is not None:  # the path, never the token: the configuration may be read by others
        env["TORCHGATE_AUTH_TOKEN_FILE"] = str(s.auth_token_file)
    if s.grpc_port is not None:  # /metrics counts the gRPC server's requests too, from its own folder
        env["TORCHGATE_GRPC_METRICS_DIR"] = str(s.grpc_metrics_dir)
    if s.management_port is not None:  # that port answers TorchServe's management API only
        env["TORCHGATE_MANAGEMENT_PORT"] = str(s.management_port)
    if s.metrics_port is not None:  # that port answers /metrics only
        env["TORCHGATE_METRICS_PORT"] = str(s.metrics_port)
    if s.allow_client_shm:  # one folder of registrations for every gateway process and the gRPC server
        env["TORCHGATE_CLIENT_SHM_DIR"] = str(s.client_shm_dir)
    if s.response_cache_bytes:  # each process's share of the response cache
        env["TORCHGATE_RESPONSE_CACHE_BYTES"] = str(s.response_cache_share)
    if s.trace_config:  # the trace settings every gateway process and the gRPC server share
        env["TORCHGATE_TRACE_DIR"] = str(s.trace_dir)
    return env


def render_gateway(s: DeploySettings) -> str:
    return _program(
        s,
        "gateway",
        gateway_command(s),
        gateway_environment(s),
        priority=PRIORITY_GATEWAY,
        startsecs=GATEWAY_STARTSECS,
        startretries=GATEWAY_STARTRETRIES,
        stopwaitsecs=s.gateway_stopwaitsecs,
    )


GRPC_PROGRAM = "grpc"  # the program of gateway/grpc_server.py


def grpc_command(s: DeploySettings) -> list[str]:
    assert s.grpc_port is not None
    return [
        s.python,
        "-m",
        "gateway.grpc_server",
        "--host",
        s.host,
        "--port",
        str(s.grpc_port),
        "--threads",
        str(s.gateway_threads),
        "--grace-seconds",
        str(s.gateway_graceful_seconds),
    ]


def render_grpc(s: DeploySettings) -> str:
    """The Open Inference Protocol over gRPC: one process beside the HTTP gateway, with its settings."""
    # Its metrics live in a folder of its own, which the gateway's /metrics sums in.
    environment = {**gateway_environment(s), "PROMETHEUS_MULTIPROC_DIR": str(s.grpc_metrics_dir)}
    del environment["TORCHGATE_GRPC_METRICS_DIR"]
    return _program(
        s,
        GRPC_PROGRAM,
        grpc_command(s),
        environment,
        priority=PRIORITY_GATEWAY,
        startsecs=GATEWAY_STARTSECS,
        startretries=GATEWAY_STARTRETRIES,
        stopwaitsecs=s.gateway_stopwaitsecs,
    )


def _program(
    s: DeploySettings,
    name: str,
    command: list[str],
    environment: dict[str, str],
    *,
    priority: int,
    startsecs: int,
    startretries: int,
    stopwaitsecs: int,
    autostart: bool = True,
    autorestart: str = "true",
    exitcodes: str = "0",
) -> str:
    return _section(
        f"program:{name}",
        [
            ("command", _escape(shlex.join(command))),
            ("directory", _escape(str(s.run_dir))),
            (
                "environment",
                ",".join(f'{key}="{_escape(value)}"' for key, value in _with_logs(s, environment)),
            ),
            ("priority", str(priority)),
            ("autostart", _bool(autostart)),
            ("autorestart", autorestart),
            ("exitcodes", exitcodes),
            ("startsecs", str(startsecs)),
            ("startretries", str(startretries)),
            ("stopsignal", "TERM"),
            ("stopwaitsecs", str(stopwaitsecs)),
            ("stopasgroup", "true"),
            ("killasgroup", "true"),
            ("redirect_stderr", "true"),
            ("stdout_logfile", _escape(str(s.log_dir / f"{name}.log"))),
            ("stdout_logfile_maxbytes", str(s.log_maxbytes)),
            ("stdout_logfile_backups", str(s.log_backups)),
        ],
    )


def _with_logs(s: DeploySettings, environment: dict[str, str]) -> Iterable[tuple[str, str]]:
    """A program's environment, with the log settings every process follows (Triton's logging extension)."""
    return {**environment, "TORCHGATE_LOG_SETTINGS": str(s.log_settings_path)}.items()


def _section(name: str, options: Iterable[tuple[str, str]]) -> str:
    lines = [f"[{name}]"] + [f"{key}={value}" for key, value in options]
    return "\n".join(lines) + "\n"


def _comment(s: DeploySettings) -> str:
    return (
        "; Rendered by torchgate (deploy/supervisor_conf.py). Change the flags of `torchgate render` or\n"
        "; `torchgate serve` rather than this file; add slots live with `torchgate add-worker`.\n"
        f"; Operate: torchgate ctl --run-dir {s.run_dir} status (supervisorctl -c {s.conf_path} status)\n"
    )


def _escape(value: str) -> str:
    """Escape supervisord's ``%(name)s`` expansion."""
    return value.replace("%", "%%")


def _bool(value: bool) -> str:
    return "true" if value else "false"
