"""Where the dispatcher listens and how it judges liveness: a typed, frozen configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DispatcherConfig:
    """Where the dispatcher listens and how it judges liveness."""

    frontend: str
    backend: str
    heartbeat_interval: float = 0.5  # seconds between heartbeats to workers
    heartbeat_liveness: int = 8  # missed intervals before a worker is taken out of rotation
    max_message_bytes: int = 1 << 31  # a peer that sends more is disconnected by libzmq
    startup_grace: float = 5.0  # seconds after start in which requests wait for workers to (re-)register
    curve_secret_key: Path | None = None  # required when an endpoint is TCP
    curve_authorized: Path | None = None  # folder of public keys allowed to connect over TCP
    stop_grace: float = (
        10.0  # seconds a stop waits for the requests in flight (supervisord's stopwaitsecs is more)
    )
    stop_linger: float = 2.5  # seconds a stop keeps routing at least (requests stopping gateways still take)
    stats_file: Path | None = None  # the workers' statistics, kept across the dispatcher's restarts

    @property
    def liveness(self) -> float:
        """Seconds a worker may stay silent before it is taken out of rotation."""
        return self.heartbeat_interval * self.heartbeat_liveness
