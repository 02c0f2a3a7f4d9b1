"""What one host runs: a typed, frozen description of the gateway, the dispatcher and the worker slots.

Everything `torchgate serve` and `torchgate render` need is built once into :class:`DeploySettings`,
rendered into supervisord's configuration by :mod:`deploy.supervisor_conf`, and saved beside it as
``deploy.json`` so that later commands (``add-worker``, ``rolling-restart``) act on the same host layout.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from deploy.placement import Placement
from gateway import trace_settings
from inference_worker.errors import CodedError

# Defaults, each chosen for a two-core laptop without a GPU; every one has a command-line option.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# gunicorn processes: one per core, at most this many (each holds its own dispatcher sockets). One process is
# bound by its GIL at about one core: on two cores, MLP at 32 connections, two processes (and one CPU worker)
# served 1,240 requests/s where one served 730-860 (docs/performance.md, "Session 5").
MAX_DEFAULT_GATEWAY_PROCESSES = 8
DEFAULT_GATEWAY_THREADS = 32  # gthread threads per gateway process: they mostly wait on ZeroMQ with the GIL
# released, and more requests in flight make bigger batches (docs/benchmarks-seed.md)
DEFAULT_GPU_WORKER_THREADS = 2  # torch CPU threads of a GPU worker (OMP_NUM_THREADS): staging and launching
# CPU worker slots when no GPU is used: two, so one can restart while one serves, where there are more than
# two cores; on two, one worker (its batches twice as big) costs less CPU per request than two sharing the
# cores with the gateways (docs/performance.md).
DEFAULT_CPU_WORKERS = 2
DEFAULT_WORKERS_PER_GPU = 1  # one slot per device: a second copy of the model rarely pays on one GPU
DEFAULT_WORKER_STARTSECS = 10  # a worker must stay up this long to count as started: covers model load
DEFAULT_WORKER_STARTRETRIES = 3  # failed starts (with supervisord's growing back-off) before FATAL
DEFAULT_DRAIN_SECONDS = 30  # how long a stopping worker may take to finish its in-flight requests
DEFAULT_GATEWAY_GRACEFUL_SECONDS = 30  # gunicorn graceful_timeout: in-flight HTTP requests on TERM
STOP_MARGIN_SECONDS = 10  # stopwaitsecs = drain (or graceful) time + this, then SIGKILL
DEFAULT_LOG_MAXBYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5
MAX_IPC_PATH = 100  # unix socket paths are limited to 107 bytes on Linux (sun_path)

SHIPPED_REPOSITORY = Path(__file__).resolve().parent / "model_repository"


@dataclass(frozen=True, slots=True)
class Slot:
    """One worker process: a supervisord program pinned to one GPU, or a CPU slot."""

    name: str
    gpu: int | None  # the nvidia-smi index this slot sees as cuda:0; None: a CPU slot
    threads: int
    autostart: bool = True
    models: tuple[str, ...] = ()  # a model's own slot serves just it; empty: the host's shared models

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else "cuda"


@dataclass(frozen=True, slots=True)
class DeploySettings:
    """The whole host: where it runs, what it serves and how many of each process."""

    run_dir: Path
    model_repository: Path = SHIPPED_REPOSITORY
    models: tuple[str, ...] = ()  # models each worker loads; empty: every model in the repository
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    grpc_port: int | None = None  # the Open Inference Protocol over gRPC (gateway/grpc_server.py); None: off
    gateway_processes: int = 1
    gateway_threads: int = DEFAULT_GATEWAY_THREADS
    gateway_queue: int | None = None  # requests per gateway process waiting for a thread; None: 4 x threads
    gpus: tuple[int, ...] = ()
    workers_per_gpu: int = DEFAULT_WORKERS_PER_GPU
    cpu_workers: int = 0
    spare_slots: int = 0  # per GPU, or CPU slots when no GPU is used; rendered with autostart=false
    worker_threads: int = 1  # torch intra-op threads (and OMP_NUM_THREADS) per CPU worker
    # ... and per GPU worker: the GPU computes, and an OpenMP pool there only spins on cores the gateways need
    gpu_worker_threads: int = DEFAULT_GPU_WORKER_THREADS
    worker_startsecs: int = DEFAULT_WORKER_STARTSECS
    worker_startretries: int = DEFAULT_WORKER_STARTRETRIES
    drain_seconds: int = DEFAULT_DRAIN_SECONDS
    gateway_graceful_seconds: int = DEFAULT_GATEWAY_GRACEFUL_SECONDS
    log_maxbytes: int = DEFAULT_LOG_MAXBYTES
    log_backups: int = DEFAULT_LOG_BACKUPS
    auth_token_file: Path | None = None  # bearer token the HTTP API requires (all but liveness)
    placements: tuple[Placement, ...] = ()  # slots of their own for models with an instance_group
    shared_models: tuple[str, ...] | None = None  # what default slots load; None: `models` (empty: all)
    model_control: str = "none"  # "explicit": the HTTP API may load and unload models
    management_port: int | None = None  # TorchServe's management API here too (its 8081), and only it
    metrics_port: int | None = None  # /metrics here too (TorchServe's 8082), and only it
    # clients may register system shared-memory regions (gateway/client_shm.py)
    allow_client_shm: bool = False
    # Triton's --trace-config values (gateway/trace_settings.py): a trace file turns request tracing on
    trace_config: tuple[str, ...] = ()
    # Triton's response cache (--cache-config local,size=N): N bytes shared out among the gateway processes
    # and the gRPC server, for models with [response_cache] enable = true; 0: none
    response_cache_bytes: int = 0
    python: str = field(default_factory=lambda: sys.executable)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir).absolute())
        object.__setattr__(self, "model_repository", Path(self.model_repository).absolute())
        if self.auth_token_file is not None:
            object.__setattr__(self, "auth_token_file", Path(self.auth_token_file).absolute())
        object.__setattr__(self, "gpus", tuple(self.gpus))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "placements", tuple(self.placements))
        object.__setattr__(self, "trace_config", tuple(self.trace_config))
        if self.shared_models is not None:
            object.__setattr__(self, "shared_models", tuple(self.shared_models))
        _check_settings(self)

    # Paths inside the run directory.
    @property
    def conf_path(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def conf_d(self) -> Path:
        return self.run_dir / "conf.d"

    @property
    def settings_path(self) -> Path:
        return self.run_dir / "deploy.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    @property
    def grpc_metrics_dir(self) -> Path:
        return self.run_dir / "metrics-grpc"

    @property
    def stats_path(self) -> Path:
        """The dispatcher keeps the workers' statistics here, for its restarts within a run."""
        return self.metrics_dir / "dispatcher-stats.json"

    def folders(self) -> tuple[Path, ...]:
        """Return the run directory's folders."""
        return (
            self.log_dir,
            self.conf_d,
            self.sockets_dir,
            self.metrics_dir,
            self.grpc_metrics_dir,
            self.client_shm_dir,
            self.trace_dir,
        )

    @property
    def response_cache_share(self) -> int:
        """The bytes of answers each gateway process and the gRPC server keep (the cache's size, shared)."""
        if not self.response_cache_bytes:
            return 0
        return max(1, self.response_cache_bytes // (self.gateway_processes + (self.grpc_port is not None)))

    @property
    def log_settings_path(self) -> Path:
        """The log settings every process follows (Triton's logging extension; defaults at every start)."""
        return self.run_dir / "log-settings.json"

    @property
    def trace_dir(self) -> Path:
        """Where the trace settings every gateway process shares are kept (written anew at every start)."""
        return self.run_dir / "trace"

    def trace_document(self) -> dict[str, Any] | None:
        """Return the trace settings a start writes (gateway/tracing.py), or None when nothing is traced."""
        trace_file, settings = trace_settings.parse_cli(self.trace_config)
        if not trace_file:
            return None
        return trace_settings.new_document(str(Path(trace_file).absolute()), settings)

    @property
    def client_shm_dir(self) -> Path:
        """Where clients' shared-memory regions are registered (emptied at every start, as Triton forgets
        them)."""
        return self.run_dir / "client-shm"

    @property
    def sockets_dir(self) -> Path:
        return self.run_dir / "sockets"

    @property
    def drain_flag(self) -> Path:
        """Present while the host is stopping: the gateway answers readiness with 503."""
        return self.run_dir / "draining"

    @property
    def supervisor_socket(self) -> Path:
        return self.sockets_dir / "supervisor.sock"

    @property
    def frontend_endpoint(self) -> str:
        return f"ipc://{self.sockets_dir / 'frontend.sock'}"

    @property
    def backend_endpoint(self) -> str:
        return f"ipc://{self.sockets_dir / 'backend.sock'}"

    @property
    def connect_host(self) -> str:
        """The host clients on this machine connect to (loopback for a wildcard bind; IPv6 in brackets)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    @property
    def url(self) -> str:
        return f"http://{self.connect_host}:{self.port}"

    @property
    def torchserve_ports(self) -> list[tuple[str, int]]:
        """TorchServe's extra ports the gateway also listens on: ``[("management", 8081), ...]``."""
        ports = [("management", self.management_port), ("metrics", self.metrics_port)]
        return [(what, port) for what, port in ports if port is not None]

    @property
    def grpc_address(self) -> str | None:
        """Where gRPC clients connect (``host:port``), or None when gRPC is off."""
        return None if self.grpc_port is None else f"{self.connect_host}:{self.grpc_port}"

    @property
    def worker_stopwaitsecs(self) -> int:
        return self.drain_seconds + STOP_MARGIN_SECONDS

    @property
    def gateway_stopwaitsecs(self) -> int:
        return self.gateway_graceful_seconds + STOP_MARGIN_SECONDS

    @property
    def slot_models(self) -> tuple[str, ...]:
        """Return the models a default slot loads (empty: every model of the repository)."""
        return self.models if self.shared_models is None else self.shared_models

    def threads_for(self, gpu: int | None) -> int:
        """Return the torch CPU threads of a slot on ``gpu`` (None: a CPU slot)."""
        return self.worker_threads if gpu is None else self.gpu_worker_threads

    def slots(self) -> list[Slot]:
        """Return every rendered worker slot: per GPU, then CPU, spare slots last on each device; then each
        model's own slots (its ``instance_group``)."""
        slots = []
        if self.shared_models != ():  # some model has no slots of its own
            for gpu in self.gpus:
                for k in range(self.workers_per_gpu + self.spare_slots):
                    slots.append(
                        Slot(gpu_slot_name(gpu, k), gpu, self.gpu_worker_threads, k < self.workers_per_gpu)
                    )
            cpu_spares = 0 if self.gpus else self.spare_slots
            for k in range(self.cpu_workers + cpu_spares):
                slots.append(Slot(cpu_slot_name(k), None, self.worker_threads, k < self.cpu_workers))
        for p in self.placements:
            for k in range(p.count):
                name = model_slot_name(p.model, p.gpu, k)
                slots.append(Slot(name, p.gpu, self.threads_for(p.gpu), True, (p.model,)))
        return slots

    def to_json(self) -> str:
        raw: dict[str, Any] = asdict(self)
        raw["run_dir"] = str(self.run_dir)
        raw["model_repository"] = str(self.model_repository)
        raw["auth_token_file"] = str(self.auth_token_file) if self.auth_token_file else None
        raw["placements"] = [asdict(p) for p in self.placements]
        return json.dumps(raw, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DeploySettings:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"deploy.json: unknown keys {unknown}")
        raw["run_dir"] = Path(raw["run_dir"])
        raw["model_repository"] = Path(raw["model_repository"])
        raw["auth_token_file"] = Path(raw["auth_token_file"]) if raw.get("auth_token_file") else None
        raw["gpus"] = tuple(raw.get("gpus", ()))
        raw["models"] = tuple(raw.get("models", ()))
        raw["placements"] = tuple(Placement(**p) for p in raw.get("placements", ()))
        raw["trace_config"] = tuple(raw.get("trace_config", ()))
        return cls(**raw)

    @classmethod
    def load(cls, run_dir: str | Path) -> DeploySettings:
        """Read the settings `torchgate serve` or `render` saved in ``run_dir``."""
        path = Path(run_dir) / "deploy.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; render the run directory first (torchgate render --run-dir {run_dir})"
            )
        return cls.from_json(path.read_text())


def gpu_slot_name(gpu: int, k: int) -> str:
    return f"worker-gpu{gpu}-{k}"


def cpu_slot_name(k: int) -> str:
    return f"worker-cpu-{k}"


def model_slot_name(model: str, gpu: int | None, k: int) -> str:
    """Return the name of a model's own slot: ``worker-<model>-cpu-<k>`` or ``worker-<model>-gpu<n>-<k>``."""
    return f"worker-{model}-{'cpu' if gpu is None else f'gpu{gpu}'}-{k}"


def is_worker_slot(name: str) -> bool:
    return name.startswith("worker-")


def default_worker_threads(cores: int | None, worker_slots: int) -> int:
    """Share the cores among the worker slots, leaving one for the gateway and dispatcher."""
    cores = cores or 1
    return max(1, (cores - 1) // max(1, worker_slots))


def default_gateway_processes(cores: int | None) -> int:
    """One gateway process per core, at most :data:`MAX_DEFAULT_GATEWAY_PROCESSES`."""
    return max(1, min(cores or 1, MAX_DEFAULT_GATEWAY_PROCESSES))


def default_cpu_workers(cores: int | None) -> int:
    """:data:`DEFAULT_CPU_WORKERS` CPU worker slots, one on a machine of two cores or fewer."""
    return DEFAULT_CPU_WORKERS if (cores or 1) > 2 else 1


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_settings(s: DeploySettings) -> None:
    try:
        trace_file, _ = trace_settings.parse_cli(s.trace_config)
    except CodedError as exc:
        raise ValueError(exc.message) from None
    if s.trace_config and not trace_file:
        raise ValueError("--trace-config needs the trace file: --trace-config triton,file=PATH")

    positive = {
        "port": s.port,
        "gateway_processes": s.gateway_processes,
        "gateway_threads": s.gateway_threads,
        "worker_threads": s.worker_threads,
        "gpu_worker_threads": s.gpu_worker_threads,
        "workers_per_gpu": s.workers_per_gpu,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    non_negative = {
        "cpu_workers": s.cpu_workers,
        "spare_slots": s.spare_slots,
        "worker_startsecs": s.worker_startsecs,
        "worker_startretries": s.worker_startretries,
        "drain_seconds": s.drain_seconds,
        "gateway_graceful_seconds": s.gateway_graceful_seconds,
        "log_backups": s.log_backups,
        "response_cache_bytes": s.response_cache_bytes,
        "gateway_queue": 0 if s.gateway_queue is None else s.gateway_queue,
    }
    for name, value in non_negative.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    if s.port > 65535:
        raise ValueError(f"port must be at most 65535, got {s.port}")
    if s.grpc_port is not None and not 0 < s.grpc_port <= 65535:
        raise ValueError(f"grpc_port must be 1 to 65535, got {s.grpc_port}")
    if s.grpc_port == s.port:
        raise ValueError(f"the gRPC port must differ from the HTTP port ({s.port})")
    ports = [("management", s.management_port), ("metrics", s.metrics_port)]
    for what, port in ports:
        if port is not None and not 0 < port <= 65535:
            raise ValueError(f"the {what} port must be 1 to 65535, got {port}")
    named = [(w, p) for w, p in [("HTTP", s.port), ("gRPC", s.grpc_port), *ports] if p is not None]
    if len({p for _, p in named}) != len(named):
        listed = ", ".join(f"{w} {p}" for w, p in named)
        raise ValueError(f"the HTTP, gRPC, management and metrics ports must all differ: {listed}")
    if len(set(s.gpus)) != len(s.gpus) or any(g < 0 for g in s.gpus):
        raise ValueError(f"gpus must be distinct non-negative indices, got {list(s.gpus)}")
    if not s.gpus and s.cpu_workers + s.spare_slots == 0 and s.shared_models != ():
        raise ValueError("no worker slots: give --cpu-workers or --gpus")
    if s.model_control not in ("none", "explicit"):
        raise ValueError(f"model_control must be 'none' or 'explicit', got {s.model_control!r}")
    for path in (s.supervisor_socket, s.sockets_dir / "frontend.sock"):
        if len(str(path).encode()) > MAX_IPC_PATH:
            raise ValueError(
                f"{path}: socket path longer than {MAX_IPC_PATH} bytes; choose a shorter --run-dir"
            )
    for text in (
        str(s.run_dir),
        str(s.model_repository),
        str(s.auth_token_file or ""),
        s.python,
        s.host,
        *s.models,
        *(s.shared_models or ()),
        *(p.model for p in s.placements),
    ):
        if any(c in text for c in '"\n\r,;%'):
            raise ValueError(
                f"{text!r}: paths, host and model names must not contain quotes, commas, ';', '%' or newlines"
            )
