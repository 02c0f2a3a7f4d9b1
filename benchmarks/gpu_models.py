"""The GPU benchmark's two models, in one torchgate model repository, and the requests sent to them.

- ``resnet50``: torchvision's ``resnet50(weights=None)`` traced to TorchScript, FP32 ``[3, 224, 224]`` in (602
KB
  per request), ``[1000]`` out, ``max_batch_size = 64``, ``max_queue_delay_us = 2000`` (as issue 11 measured
  it). Without torchvision, or with ``stand_in``, a small convolutional network with the same input and output
  sizes takes its place (the report says which ran).
- ``digits``: the shipped default model (``deploy/model_repository/digits``, an exported ``.pt2``), 64 grey
  levels in, 10 logits out, ``max_batch_size = 64``, no batch delay, as shipped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.models import WORKLOAD_SPECS, Tensor, Workload
from benchmarks.settings import REPO_ROOT

GPU_WORKLOADS = ("resnet50", "digits")
SHIPPED_DIGITS = REPO_ROOT / "deploy" / "model_repository" / "digits"

# Registered with the CPU benchmark's workloads so that benchmarks.payloads builds their request bodies.
WORKLOAD_SPECS.setdefault(
    "resnet50",
    Workload(
        "resnet50",
        "ResNet-50 FP32, 3x224x224, 1 image/request",
        (Tensor("input", "FP32", (3, 224, 224)),),
        (Tensor("output", "FP32", (1000,)),),
        4,
    ),
)
WORKLOAD_SPECS.setdefault(
    "digits",
    Workload(
        "digits",
        "digits (the shipped MLP), 64 grey levels, 1 sample/request",
        (Tensor("input", "FP32", (64,)),),
        (Tensor("output", "FP32", (10,)),),
        16,
    ),
)


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One model as the benchmark wrote it: where its file is and what it is."""

    workload: str
    name: str  # the model's name in the repository
    path: Path  # model.pt (TorchScript) or model.pt2 (torch.export)
    description: str
    max_batch_size: int
    delay_us: int

    @property
    def spec(self) -> Workload:
        return WORKLOAD_SPECS[self.workload]


class StandIn(nn.Module):
    """3x224x224 -> 1000 in a few stride-2 convolutions: ResNet-50's input and output, little of its
    compute."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=4, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=4, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet50_module(stand_in: bool) -> tuple[nn.Module, str]:
    """Return ResNet-50 (torchvision, random weights) or the stand-in, and which it is."""
    torch.manual_seed(0)
    if not stand_in:
        try:
            import torchvision
        except ImportError:
            stand_in = True
        else:
            return torchvision.models.resnet50(weights=None).eval(), (
                f"torchvision {torchvision.__version__} resnet50(weights=None), traced to TorchScript"
            )
    return StandIn().eval(), "stand-in CNN with ResNet-50's input and output sizes (not ResNet-50's compute)"


def config_toml(name: str, backend: str, spec: Workload, max_batch_size: int, delay_us: int) -> str:
    lines = [
        f'name = "{name}"',
        f'backend = "{backend}"',
        f"max_batch_size = {max_batch_size}",
        "max_queue_size = 4096",
        "",
        "[dynamic_batching]",
        f"max_queue_delay_us = {delay_us}",
    ]
    for kind, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        for t in tensors:
            lines += [
                "",
                f"[[{kind}]]",
                f'name = "{t.name}"',
                f'datatype = "{t.datatype}"',
                f"dims = {list(t.dims)}",
            ]
    return "\n".join(lines) + "\n"


def write_gpu_repository(root: Path, workloads: tuple[str, ...], stand_in: bool) -> dict[str, GpuModel]:
    """Write each workload's model and config into ``root`` (rewritten every run: it takes seconds)."""
    shutil.rmtree(root, ignore_errors=True)
    models: dict[str, GpuModel] = {}
    for workload in workloads:
        spec = WORKLOAD_SPECS[workload]
        name = spec.model_name
        folder = root / name
        (folder / "1").mkdir(parents=True)
        if workload == "resnet50":
            module, description = resnet50_module(stand_in)
            path = folder / "1" / "model.pt"
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(module, torch.zeros(1, 3, 224, 224))
            traced.save(str(path))
            models[workload] = GpuModel(workload, name, path, description, 64, 2000)
            backend = "torchscript"
        elif workload == "digits":
            path = folder / "1" / "model.pt2"
            shutil.copyfile(SHIPPED_DIGITS / "1" / "model.pt2", path)
            models[workload] = GpuModel(
                workload, name, path, "the shipped digits MLP (deploy/model_repository)", 64, 0
            )
            backend = "torch_export"
        else:
            raise ValueError(f"unknown GPU workload {workload!r}")
        m = models[workload]
        (folder / "config.toml").write_text(config_toml(m.name, backend, spec, m.max_batch_size, m.delay_us))
    return models


def load_model(path: Path, device: str = "cpu") -> torch.nn.Module:
    """Load a TorchScript ``.pt`` or an exported ``.pt2`` onto ``device``, as every system under test does."""
    if path.suffix == ".pt":
        return torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call,no-any-return]
    module = torch.export.load(str(path)).module()
    return module.to(device)  # type: ignore[no-any-return]


def gpu_samples(workload: str) -> list[dict[str, np.ndarray]]:
    """Return the fixed pool of request samples (seeded)."""
    spec = WORKLOAD_SPECS[workload]
    rng = np.random.default_rng(11)
    if workload == "digits":
        return [{"input": rng.integers(0, 17, size=64).astype(np.float32)} for _ in range(spec.pool_size)]
    return [{"input": rng.random((3, 224, 224), dtype=np.float32).round(3)} for _ in range(spec.pool_size)]


def expected_output(model: GpuModel, sample: dict[str, np.ndarray]) -> np.ndarray:
    """Return the model's own output for one sample, on the CPU: every system must answer (close to) it."""
    module = load_model(model.path)
    with torch.inference_mode():
        out = module(torch.from_numpy(sample["input"][None]))
    return np.asarray(out[0].numpy(), dtype=np.float32)
