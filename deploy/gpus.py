"""Find this host's GPUs without initialising CUDA in this process (nvidia-smi, else NVML)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger("torchgate.deploy")

NVIDIA_SMI_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int  # the nvidia-smi index, which CUDA uses too under CUDA_DEVICE_ORDER=PCI_BUS_ID
    uuid: str


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader`` output."""
    gpus = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        index, sep, uuid = line.partition(",")
        if not sep or not index.strip().isdigit():
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        gpus.append(Gpu(int(index), uuid.strip()))
    return gpus


def discover_gpus() -> list[Gpu]:
    """Return the GPUs nvidia-smi (or NVML) lists; an empty list when there are none or no driver."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run(
                [smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=NVIDIA_SMI_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("nvidia-smi failed (%s); trying NVML", exc)
        else:
            if done.returncode == 0:
                return parse_nvidia_smi(done.stdout)
            log.warning("nvidia-smi exited %s: %s", done.returncode, done.stderr.strip()[:200])
    return _discover_nvml()


def _discover_nvml() -> list[Gpu]:
    try:
        import pynvml  # optional; NVML does not create a CUDA context
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError when there is no driver
        log.info("NVML unavailable (%s)", exc)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            gpus.append(Gpu(i, uuid.decode() if isinstance(uuid, bytes) else str(uuid)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def parse_gpu_spec(spec: str | None) -> tuple[int, ...] | None:
    """Parse ``--gpus``: ``"0,1,3"`` -> (0, 1, 3); ``"none"``/``""`` -> (); ``"all"``/``"auto"``/None -> None
    (discover)."""
    if spec is None:
        return None
    spec = spec.strip().lower()
    if spec in ("all", "auto"):
        return None
    if spec in ("", "none", "cpu"):
        return ()
    indices = []
    for part in spec.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(
                f"--gpus: {part!r} is not a GPU index (expected a list like 0,1,3, 'all' or 'none')"
            )
        indices.append(int(part))
    if len(set(indices)) != len(indices):
        raise ValueError(f"--gpus: {spec!r} names a GPU twice")
    return tuple(indices)


def resolve_gpus(spec: str | None) -> tuple[int, ...]:
    """Turn ``--gpus`` into indices: an explicit list as given, ``all`` or no option as discovered.

    ``all`` with no GPU found is an error; no option with no GPU found means the CPU.
    """
    parsed = parse_gpu_spec(spec)
    if parsed is not None:
        return parsed
    found = tuple(g.index for g in discover_gpus())
    if not found and spec is not None:
        raise ValueError("--gpus all: no GPU found (nvidia-smi and NVML list none)")
    return found
