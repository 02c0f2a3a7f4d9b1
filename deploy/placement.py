"""Where each model runs: worker slots of their own for models with an ``instance_group``, no I/O.

A model without ``[[instance_group]]`` is served by the host's default slots (one per GPU, or the CPU slots),
each loading every such model. A model with one gets slots of its own, as Triton's ``instance_group``:
``count`` processes on each listed GPU (every GPU of the host when none is listed), or on the CPU. So a model
that cannot load, or that takes a whole device, leaves the others alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference_worker.repository import ConfigError, ModelConfig


@dataclass(frozen=True, slots=True)
class Placement:
    """Worker slots dedicated to one model: ``count`` processes on GPU ``gpu``, or on the CPU (None)."""

    model: str
    gpu: int | None
    count: int


def place(models: dict[str, ModelConfig], host_gpus: tuple[int, ...]) -> tuple[Placement, ...]:
    """Return the dedicated slots every model's ``instance_group`` asks for on a host with ``host_gpus``."""
    counts: dict[tuple[str, int | None], int] = {}
    for name in sorted(models):
        model = models[name]
        for i, group in enumerate(model.instance_groups):
            kind = group.kind if group.kind != "AUTO" else ("GPU" if host_gpus else "CPU")
            if kind == "CPU":
                counts[(name, None)] = counts.get((name, None), 0) + group.count
                continue
            if not host_gpus:
                raise ConfigError(
                    f"{model.config_path}: instance_group[{i}] asks for KIND_GPU, but "
                    "this host serves without "
                    "GPUs (see --gpus); use KIND_CPU, or KIND_AUTO to take a GPU where there is one"
                )
            missing = [g for g in group.gpus if g not in host_gpus]
            if missing:
                raise ConfigError(
                    f"{model.config_path}: instance_group[{i}].gpus lists {missing}, "
                    "which this host does not "
                    f"serve with (GPUs in use: {list(host_gpus)})"
                )
            for gpu in group.gpus or host_gpus:
                counts[(name, gpu)] = counts.get((name, gpu), 0) + group.count
    return tuple(Placement(model, gpu, count) for (model, gpu), count in counts.items())


def shared_models(names: list[str], placements: tuple[Placement, ...]) -> tuple[str, ...]:
    """Return the models of ``names`` the default slots serve: those without slots of their own."""
    placed = {p.model for p in placements}
    return tuple(n for n in names if n not in placed)
