"""What every system under test provides: start, the requests it understands, and its settings in words."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.models import Sample
from benchmarks.payloads import HttpRequest, decode_output
from benchmarks.procs import Launched, StartError, http_call, wait_ready
from benchmarks.settings import BenchSettings

PYTHON = sys.executable


@dataclass(frozen=True, slots=True)
class StartContext:
    """Where and with what one system starts for one workload."""

    settings: BenchSettings
    workload: str
    repository: Path  # the torchgate model repository written by benchmarks.models
    port: int
    work_dir: Path  # this system's own folder for this workload (logs, stores, run dirs)

    @property
    def model_path(self) -> Path:
        from benchmarks.models import WORKLOAD_SPECS

        return self.repository / WORKLOAD_SPECS[self.workload].model_name / "1" / "model.pt2"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class System(ABC):
    """One server under test."""

    name: str = ""
    label: str = ""

    def unavailable(self) -> str | None:
        """Return why this system cannot run here, or None."""
        return None

    @abstractmethod
    def formats(self, workload: str) -> tuple[str, ...]:
        """Return the request formats this system speaks for ``workload`` (see benchmarks.payloads)."""

    @abstractmethod
    def launch(self, ctx: StartContext) -> Launched:
        """Start the processes; return at once."""

    @abstractmethod
    def ready(self, ctx: StartContext, probe: HttpRequest) -> bool:
        """Return True once the system answers its health check (``probe``: a request it must serve)."""

    @abstractmethod
    def request(self, workload: str, fmt: str, sample: Sample) -> HttpRequest:
        """Return the HTTP request carrying ``sample`` in ``fmt``."""

    @abstractmethod
    def describe(self, settings: BenchSettings, workload: str) -> str:
        """Return the settings this system runs with, for the report."""

    answer_kind: dict[str, str] = {}  # format -> how its answer reads (benchmarks.payloads.decode_output)

    def start(self, ctx: StartContext, probe: list[HttpRequest]) -> Launched:
        """Launch, then wait until ready (see :meth:`await_ready`)."""
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        return self.await_ready(ctx, self.launch(ctx), probe)

    def await_ready(
        self,
        ctx: StartContext,
        launched: Launched,
        probe: list[HttpRequest],
        expected: np.ndarray | None = None,
        formats: list[str] | None = None,
    ) -> Launched:
        """Wait for readiness (bounded polling), then require a 200 for each probe request and, where the
        system computes, the model's own output for it (``expected``); kill it on failure."""
        try:
            wait_ready(launched, lambda: self.ready(ctx, probe[0]), ctx.settings.ready_timeout_s)
            for i, req in enumerate(probe):
                status, headers, body = http_call(ctx.url + req.path, req.body, req.headers)
                if status != 200:
                    raise StartError(
                        f"{self.name}: probe {req.path} answered {status}; log {launched.log_path}:\n"
                        f"{launched.log_tail()}"
                    )
                kind = self.answer_kind.get(formats[i]) if formats else None
                if expected is not None and kind is not None:
                    got = decode_output(kind, body, headers)
                    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
                        raise StartError(
                            f"{self.name}: {formats[i] if formats else ''} answer differs from the "
                            f"model's own output: {got[:4]} vs {expected[:4]}"
                        )
        except BaseException:
            launched.stop(grace_s=5)
            raise
        return launched
