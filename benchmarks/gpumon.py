"""What a run used: GPU busy (NVML, else nvidia-smi, sampled) and CPU cores per process class (psutil).

:class:`GpuSampler` samples ``utilization.gpu`` every half second in a thread while a run goes on;
:func:`cpu_by_class` reads the CPU time of each process of a system's tree and files it under a class
(gateway, dispatcher, worker, ...) by its command line, so a run's CPU is reported per kind of process.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterable
from typing import Any

import psutil

SAMPLE_EVERY_S = 0.5

# (class, words one of which the command line holds), first match wins
CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("worker", ("inference_worker.worker",)),
    ("dispatcher", ("inference_worker.dispatcher",)),
    ("supervisord", ("supervisord", "deploy.cli")),
    ("gateway", ("gateway.wsgi", "gateway:", "torchgate-gateway")),
    ("seed app", ("seed_app",)),
    ("litserve", ("litserve_app",)),
)


def process_class(cmdline: list[str], default: str = "other") -> str:
    """Return the class of a process from its command line (``default`` if none fits)."""
    text = " ".join(cmdline)
    for name, words in CLASSES:
        if any(word in text for word in words):
            return name
    return default


def cpu_by_class(processes: Iterable[psutil.Process], default: str = "other") -> dict[int, tuple[str, float]]:
    """Return pid -> (class, CPU seconds so far) for each live process (``default``: a class none fits)."""
    out = {}
    for p in processes:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            out[p.pid] = (process_class(p.cmdline(), default), times.user + times.system)
    return out


def cores_by_class(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], elapsed_s: float
) -> dict[str, float]:
    """Return class -> cores used (CPU seconds / wall seconds) between two :func:`cpu_by_class` readings."""
    cores: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used = seconds - before.get(pid, (name, 0.0))[1]
        cores[name] = cores.get(name, 0.0) + max(0.0, used) / max(elapsed_s, 1e-9)
    return cores


def count_by_class(after: dict[int, tuple[str, float]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, _ in after.values():
        counts[name] = counts.get(name, 0) + 1
    return counts


class GpuSampler:
    """Sample GPU ``index``'s busy percentage while in a ``with`` block; :attr:`mean` and :attr:`peak`
    after."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None

    @staticmethod
    def source() -> str | None:
        """Return how utilisation can be read here ("nvml" or "nvidia-smi"), or None."""
        try:
            import pynvml

            pynvml.nvmlInit()
            pynvml.nvmlShutdown()
            return "nvml"
        except Exception:  # not installed, no driver: try the command
            pass
        if shutil.which("nvidia-smi"):
            return "nvidia-smi"
        return None

    def read(self) -> float | None:
        if self._nvml is not None:
            try:
                return float(self._nvml[0].nvmlDeviceGetUtilizationRates(self._nvml[1]).gpu)
            except Exception:
                return None
        try:
            out = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={self.index}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return float(out.splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def __enter__(self) -> GpuSampler:
        if self.source() == "nvml":
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(self.index))

        def loop() -> None:
            while not self._stop.wait(SAMPLE_EVERY_S):
                value = self.read()
                if value is not None:
                    self.samples.append(value)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml[0].nvmlShutdown()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None
