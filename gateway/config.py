"""The gateway's settings: one frozen object, built once at start-up from ``TORCHGATE_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from inference_worker.security import SecurityError, read_token

PREFIX = "TORCHGATE_"
BODY_BUDGET_ENV = "TORCHGATE_GATEWAY_BODY_BUDGET"
DEFAULT_BODY_BUDGET = 512 << 20  # bytes of requests one process holds at once (read, queued, parsed)


def body_budget(max_body: int) -> int:
    """Return the bytes of requests one gateway process (or the gRPC server) holds at once: the budget the
    environment names (at least one request of ``max_body`` bytes)."""
    return max(int(os.environ.get(BODY_BUDGET_ENV) or DEFAULT_BODY_BUDGET), max_body)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the gateway finds the dispatcher and the models, and the limits it enforces.

    Each field is read from the environment variable ``TORCHGATE_<FIELD IN UPPER CASE>`` by :meth:`from_env`.
    """

    # ZeroMQ endpoint of the dispatcher's frontend ROUTER socket.
    dispatcher: str = "ipc://run/frontend.sock"
    # Folder of <model>/config.toml and <model>/<version>/: the signatures requests are validated against.
    model_repository: str = "deploy/model_repository"
    # Seconds a request may take when it names no `parameters.timeout`.
    default_timeout: float = 30.0
    # Upper bound, in seconds, on any request's `parameters.timeout`.
    max_timeout: float = 30.0
    # Largest request body accepted, in bytes, before and after gzip/deflate decoding: beyond it, 413.
    max_body_bytes: int = 64 << 20
    # Most elements one BYTES (string) tensor of a request may hold: beyond it, 400.
    max_bytes_elements: int = 1 << 16
    # Longest one BYTES element (a string, an image file) may be, in bytes: beyond it, 400.
    max_bytes_element_size: int = 16 << 20
    # Bytes of freed memory each heap of a gateway process keeps for the next requests rather than give back
    # to the kernel, which would fault it in and zero it again (glibc; gateway/heap.py); 0: glibc's defaults.
    heap_keep_bytes: int = 64 << 20
    # Values (numbers, strings, objects, arrays) one JSON body may hold, counted before parsing: beyond it,
    # 413. Parsed, each costs 24 to 70 bytes however short its text; large tensors belong in binary data.
    max_json_values: int = 2 << 20
    # JSON bodies over 64 KiB parsed at once per process; the next wait (at most the default timeout), then
    # 503.
    large_parses: int = 2
    # Seconds a dispatcher STATUS answer is reused for readiness and statistics.
    status_ttl: float = 0.5
    # Seconds to wait for a STATUS answer before calling the dispatcher unreachable (and the server not
    # ready).
    status_timeout: float = 1.0
    # Seconds of a waiting request between liveness checks (QUERY) of the dispatcher.
    poll_interval: float = 0.5
    # Seconds without any answer from the dispatcher after which a waiting request fails with 503.
    unresponsive_after: float = 5.0
    # Least seconds between two re-scans of the repository triggered by requests naming an unknown model.
    rescan_interval: float = 2.0
    # Seconds a client should wait before retrying a 503 (the Retry-After header).
    retry_after: int = 1
    # Bearer token every endpoint but liveness requires; empty: no authentication.
    auth_token: str = ""
    # "explicit": POST /v2/repository/models/M/load and /unload are allowed; anything else: they answer 403.
    model_control: str = "none"
    # Seconds a load or unload call may take across every slot of the model before the call answers 503.
    control_timeout: float = 600.0
    # A file whose presence means the host is stopping: readiness answers 503 (load balancers stop sending)
    # while requests are still served; `torchgate serve` creates it on SIGTERM. Empty: none.
    drain_file: str = ""
    # Comma-separated models to serve from the repository (what the workers load); empty: every model in it.
    models: str = ""
    # Comma-separated origins web pages may call the API from (CORS; gateway/cors.py), or "*"; empty: none.
    cors_origins: str = ""
    # Folder where clients' system shared-memory regions are registered (Triton's extension,
    # gateway/client_shm.py), shared by every gateway process of a server; empty: the extension is off.
    client_shm_dir: str = ""
    # Folder of the trace settings every gateway process of a server shares (Triton's trace extension,
    # gateway/tracing.py; `torchgate serve --trace-config` writes them); empty: nothing is traced.
    trace_dir: str = ""
    # The log settings file every process of a server follows (Triton's logging extension,
    # inference_worker/log_settings.py; `torchgate serve` writes it); empty: POST /v2/logging is refused.
    log_settings: str = ""
    # Bytes of answers this process keeps for models with [response_cache] enable = true (Triton's response
    # cache, gateway/response_cache.py; `torchgate serve --cache-config local,size=N` shares N out); 0: none.
    response_cache_bytes: int = 0
    # TorchServe's management port (8081) and metrics port (8082), when the gateway also listens there: each
    # answers only its API (the management endpoints, /metrics); 0: none.
    management_port: int = 0
    metrics_port: int = 0

    @property
    def model_names(self) -> list[str]:
        return [name.strip() for name in self.models.split(",") if name.strip()]

    def __post_init__(self) -> None:
        for name in (
            "default_timeout",
            "max_timeout",
            "status_ttl",
            "status_timeout",
            "poll_interval",
            "unresponsive_after",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{PREFIX}{name.upper()} must be positive, got {getattr(self, name)!r}")
        if self.max_json_values < 1 or self.large_parses < 1:
            raise ValueError(f"{PREFIX}MAX_JSON_VALUES and {PREFIX}LARGE_PARSES must be at least 1")
        if self.max_body_bytes < 1024:
            raise ValueError(f"{PREFIX}MAX_BODY_BYTES must be at least 1024, got {self.max_body_bytes}")
        if not 0 < self.max_bytes_elements <= 1 << 20:
            raise ValueError(
                f"{PREFIX}MAX_BYTES_ELEMENTS must be 1 to {1 << 20}, got {self.max_bytes_elements}"
            )
        if self.max_bytes_element_size < 1:
            raise ValueError(
                f"{PREFIX}MAX_BYTES_ELEMENT_SIZE must be positive, got {self.max_bytes_element_size}"
            )
        if self.heap_keep_bytes < 0:
            raise ValueError(f"{PREFIX}HEAP_KEEP_BYTES must be 0 or more, got {self.heap_keep_bytes}")
        if self.default_timeout > self.max_timeout:
            object.__setattr__(self, "max_timeout", self.default_timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """Build the settings from ``TORCHGATE_*`` variables; unset ones keep their documented default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind: type[Any] = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        token_file = environ.get(PREFIX + "AUTH_TOKEN_FILE")
        if token_file and "auth_token" not in values:
            try:
                values["auth_token"] = read_token(Path(token_file))
            except SecurityError as exc:
                raise ValueError(f"{PREFIX}AUTH_TOKEN_FILE: {exc}") from None
        return cls(**values)
