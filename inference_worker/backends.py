"""Load one version of a model from the repository, safely: nothing from disk is unpickled."""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from inference_worker.repository import ModelConfig


class LoadError(RuntimeError):
    """A model version that cannot be loaded; the message says which file and why."""


Runner = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


def load_model(config: ModelConfig, version: str, device: torch.device) -> Runner:
    """Load ``config``'s ``version`` onto ``device`` and return a function from inputs to outputs."""
    path = config.model_file(version)
    try:
        module = _LOADERS[config.backend](config, path, device)
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"{path}: cannot load {config.backend} model: {type(exc).__name__}: {exc}") from exc
    output_names = [spec.name for spec in config.outputs]

    def run(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        result = module(*inputs)
        if isinstance(result, torch.Tensor):
            result = [result]
        elif isinstance(result, dict):
            result = [result[name] for name in output_names]
        else:
            result = list(result)
        if len(result) != len(output_names):
            raise RuntimeError(f"model returned {len(result)} outputs, config declares {len(output_names)}")
        return result

    return run


def _torchscript(config: ModelConfig, path: Path, device: torch.device) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def _torch_export(config: ModelConfig, path: Path, device: torch.device) -> torch.nn.Module:
    program = torch.export.load(str(path))
    module = program.module()
    return module.to(device) if device.type != "cpu" else module


def _python(config: ModelConfig, path: Path, device: torch.device) -> torch.nn.Module:
    assert config.factory is not None  # checked by the repository
    module_name, _, function_name = config.factory.partition(":")
    model_dir = str(config.path)
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)  # a factory module may live beside config.toml
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise LoadError(
            f"{config.path / 'config.toml'}: key 'factory' = {config.factory!r} cannot be imported: {exc}"
        ) from exc
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise LoadError(
            f"factory {config.factory!r} returned {type(module).__name__}, expected a torch.nn.Module"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.to(device).eval()


_LOADERS: dict[str, Callable[[ModelConfig, Path, torch.device], torch.nn.Module]] = {
    "torchscript": _torchscript,
    "torch_export": _torch_export,
    "python": _python,
}
