"""How one worker runs: a typed, frozen configuration built once from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker runs. Defaults suit a CPU slot on a small host."""

    repository: Path
    dispatcher: str
    name: str = "worker"
    models: tuple[str, ...] = ()  # empty: every model in the repository
    device: str | None = None  # None: cuda:0 of CUDA_VISIBLE_DEVICES if CUDA is there, else the CPU
    threads: int | None = (
        1  # torch intra-op CPU threads (a GPU worker needs few); None leaves torch's default
    )
    capacity: int | None = None  # requests in flight the dispatcher may send; None: 2 x the largest batch
    heartbeat_interval: float = 0.5  # seconds between heartbeats
    heartbeat_liveness: int = 8  # missed intervals before the dispatcher is presumed gone
    drain_timeout: float = 30.0  # seconds to wait for the dispatcher's DRAIN acknowledgement
    curve_secret_key: Path | None = None  # this worker's CURVE secret key (required over TCP)
    curve_server_key: Path | None = None  # the dispatcher's CURVE public key (required over TCP)

    @property
    def liveness_seconds(self) -> float:
        """How long the dispatcher may stay silent before it is presumed gone."""
        return self.heartbeat_interval * self.heartbeat_liveness


def pick_device(explicit: str | None) -> torch.device:
    """Return the explicit device, else ``cuda:0`` (the GPU ``CUDA_VISIBLE_DEVICES`` selects), else the
    CPU."""
    if explicit:
        return torch.device(explicit)
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
