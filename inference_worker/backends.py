"""Load one version of a model from the repository, safely: nothing from disk is unpickled.

A ``torch_export`` archive is checked before ``torch.export.load`` sees it, and loaded with unpickling refused
(:mod:`inference_worker.pt2_safety`): torch itself would unpickle weights marked ``use_pickle``, opaque
constants and sample inputs that fail a ``weights_only`` load.

A python model's factory module found beside its ``config.toml`` is imported under a name of its own
(``torchgate_model_<model>_<n>_<module>``), and the helper modules it imports from its folder are dropped from
``sys.modules`` afterwards, so two models that each ship a ``model.py`` never share a module.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import re
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from inference_worker.exported import direct_call
from inference_worker.pt2_safety import UnsafeArchive, load_pt2
from inference_worker.repository import CONFIG_PBTXT, ModelConfig
from inference_worker.triton_config import libtorch_positions

_imports = itertools.count(1)


class LoadError(RuntimeError):
    """A model version that cannot be loaded or warmed up; the message names the model, version and file."""


def load_error(
    config: ModelConfig, version: str, what: str, exc: BaseException | None, check: str
) -> LoadError:
    """Return a :class:`LoadError` saying which model version and file failed, why, and what to check."""
    cause = f": {type(exc).__name__}: {_first_line(exc)}" if exc is not None else ""
    return LoadError(
        f"model {config.name!r} version {version} "
        f"({config.model_file(version)}): {what}{cause}; check {check}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = text.splitlines()
    return (lines[0] if lines else "")[:300] + (" ..." if len(lines) > 1 or len(text) > 300 else "")


Runner = Callable[[Sequence[torch.Tensor | None]], list[torch.Tensor]]  # None: an optional input left out


def load_model(config: ModelConfig, version: str, device: torch.device) -> Runner:
    """Load ``config``'s ``version`` onto ``device`` and return a function from inputs to outputs."""
    return runner(config, load_module(config, version, device))


def load_module(config: ModelConfig, version: str, device: torch.device) -> torch.nn.Module:
    """Load ``config``'s ``version`` onto ``device``; raise a :class:`LoadError` that says why not."""
    path = config.model_file(version)
    try:
        module = _LOADERS[config.backend](config, path, device)
    except _FactoryError as exc:
        raise load_error(
            config,
            version,
            f"cannot import factory {config.factory!r}",
            exc.__cause__,
            f"key 'factory' in {config.config_path} and that every package it imports is installed",
        ) from exc
    except _FactoryResult as exc:
        raise load_error(config, version, str(exc), None, f"key 'factory' in {config.config_path}") from exc
    except _WeightsMismatch as exc:
        raise load_error(
            config,
            version,
            "the weights do not fit what the factory builds",
            exc.__cause__,
            f"keys 'factory' and 'weights' in {config.config_path}",
        ) from exc
    except _FixedBatch as exc:
        raise load_error(
            config,
            version,
            str(exc),
            None,
            f"max_batch_size in {config.config_path}, or export the program with a dynamic batch dimension: "
            f"dynamic_shapes with torch.export.Dim('batch', max={config.max_batch_size}) (or more) on dim 0 "
            "of every input",
        ) from exc
    except (Exception, SystemExit) as exc:  # a factory that calls sys.exit() fails its model, not the worker
        raise load_error(
            config,
            version,
            f"cannot load as backend {config.backend!r}",
            exc,
            f"key 'backend' in {config.config_path} and how {path.name} was saved",
        ) from exc
    return module


def runner(config: ModelConfig, module: torch.nn.Module) -> Runner:
    """Return a function from inputs (in config order) to outputs (in config order) around ``module``: each
    input is forward's argument at its place in the config, or for a config.pbtxt where Triton's libtorch
    backend puts it (:func:`_libtorch_positions`)."""
    output_names = [spec.name for spec in config.outputs]
    call = (direct_call(module) if config.backend == "torch_export" else None) or module
    inputs_at, outputs_at = _libtorch_positions(config, module)
    batching = config.max_batch_size > 0
    reshaped_in = [spec.reshape for spec in config.inputs]
    reshaped_out = [spec for spec in config.outputs if spec.reshape is not None]

    def run(inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        if any(shape is not None for shape in reshaped_in):  # Triton's reshape: the model's own shape
            inputs = [
                t if shape is None or t is None else t.reshape([t.shape[0], *shape] if batching else shape)
                for t, shape in zip(inputs, reshaped_in, strict=True)
            ]
        if inputs_at is not None:
            placed: list[torch.Tensor | None] = [None] * len(inputs)
            for tensor, at in zip(inputs, inputs_at, strict=True):
                placed[at] = tensor
            inputs = placed
        result = call(*inputs)
        if isinstance(result, torch.Tensor):
            result = [result]
        elif isinstance(result, dict):
            result = [result[name] for name in output_names]
        else:
            result = list(result)
        if len(result) != len(output_names):
            raise RuntimeError(f"model returned {len(result)} outputs, config declares {len(output_names)}")
        result = result if outputs_at is None else [result[at] for at in outputs_at]
        return _reshaped(result, config, batching) if reshaped_out else result

    return run


def _reshaped(outputs: list[torch.Tensor], config: ModelConfig, batching: bool) -> list[torch.Tensor]:
    """Return the outputs with Triton's ``reshape``: a model's ``reshape`` shape, sent with ``dims``."""
    done = []
    for out, spec in zip(outputs, config.outputs, strict=True):
        if spec.reshape is not None:
            shape = list(out.shape[1:] if batching else out.shape)
            if shape != list(spec.reshape):
                raise RuntimeError(
                    f"unexpected shape {shape} for output {spec.name!r}, its reshape says "
                    f"{list(spec.reshape)}"
                )
            out = out.reshape([out.shape[0], *spec.dims] if batching else spec.dims)
        done.append(out)
    return done


def _libtorch_positions(config: ModelConfig, module: torch.nn.Module) -> tuple[list[int] | None, ...]:
    """For a TorchScript model described by Triton's config.pbtxt, where its inputs go among forward's
    arguments and where its outputs are among forward's results, as Triton's libtorch backend places them
    (None: in config order): inputs named after forward's arguments go to those, in any order; names
    NAME__<index> throughout go to that index (the config checked that the indices number them 0 to n-1)."""
    if config.backend != "torchscript" or config.config_path.name != CONFIG_PBTXT:
        return None, None
    schema = getattr(getattr(module, "forward", None), "schema", None)
    arguments = list(getattr(schema, "arguments", ()))
    if arguments and isinstance(arguments[0].type, torch.ClassType):
        arguments = arguments[1:]  # self
    inputs = [spec.name for spec in config.inputs]
    outputs = [spec.name for spec in config.outputs]
    return (
        libtorch_positions(inputs, [argument.name for argument in arguments]),
        libtorch_positions(outputs),
    )


def _torchscript(config: ModelConfig, path: Path, device: torch.device) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module: torch.nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    return module.eval()


def _torch_export(config: ModelConfig, path: Path, device: torch.device) -> torch.nn.Module:
    try:
        program = load_pt2(path)  # checked first: nothing in the archive is unpickled
    except UnsafeArchive as exc:
        raise LoadError(str(exc)) from None
    if config.max_batch_size > 0 and (why := _fixed_batch(program, config.max_batch_size)) is not None:
        raise _FixedBatch(why)
    module: torch.nn.Module = program.module()
    return module.to(device) if device.type != "cpu" else module


def _fixed_batch(program: Any, max_batch_size: int) -> str | None:
    """Why ``program`` cannot take every batch size up to ``max_batch_size``, or None when it can (as far as
    its signature says). torch.export fixes every dimension it is not told is dynamic: a program exported
    from one sample passes the warm-up (one sample) and then fails its guards on every batch of two or more,
    failing each request of it."""
    placeholders = {node.name: node for node in program.graph.find_nodes(op="placeholder")}
    for name in program.graph_signature.user_inputs:
        node = placeholders.get(name)
        shape = getattr(node.meta.get("val") if node is not None else None, "shape", None)
        if not shape:
            continue  # a scalar, or nothing torch recorded: left to the warm-up
        first = shape[0]
        if isinstance(first, int):
            return (
                f"input {name!r} was exported with a fixed batch size of {first}, "
                f"but max_batch_size = {max_batch_size} batches requests together"
            )
        bounds = program.range_constraints.get(getattr(getattr(first, "node", None), "expr", None))
        upper = getattr(bounds, "upper", None)
        if upper is not None and bool(upper < max_batch_size):
            return (
                f"input {name!r} was exported for batches of at most {upper}, "
                f"below max_batch_size = {max_batch_size}"
            )
    return None


class _FactoryError(Exception):
    """The factory module or function cannot be imported (the cause says why)."""


class _FactoryResult(Exception):
    """The factory ran but did not return a module."""


class _WeightsMismatch(Exception):
    """The weights file does not fit the module the factory built (the cause says how)."""


class _FixedBatch(Exception):
    """An exported program that cannot take every batch size its config's max_batch_size allows."""


def import_factory(config: ModelConfig) -> Callable[[], object]:
    """Import ``config.factory`` ("module:function"); a module beside config.toml gets a name of its own."""
    assert config.factory is not None  # checked by the repository
    module_name, _, function_name = config.factory.partition(":")
    try:
        module = _import_local(config, module_name) or importlib.import_module(module_name)
        factory = getattr(module, function_name)
    # ImportError, AttributeError, or anything the module raises while it runs: sys.exit() too (argparse's
    # parse_args at import, reading the worker's own argv), which ended the worker and every model it served
    except (Exception, SystemExit) as exc:
        raise _FactoryError(str(exc)) from exc
    if not callable(factory):
        raise _FactoryError(f"{function_name!r} is not callable") from TypeError(
            f"{config.factory!r} is a {type(factory).__name__}"
        )
    return factory  # type: ignore[no-any-return]


def _import_local(config: ModelConfig, module_name: str) -> types.ModuleType | None:
    """Import a module (or package) found in the model's folder under a unique name; None if not there."""
    top, _, rest = module_name.partition(".")
    folder = config.path.resolve()
    file, package = folder / f"{top}.py", folder / top / "__init__.py"
    if not (file.is_file() or package.is_file()):
        return None
    safe_name = re.sub(r"\W", "_", config.name)
    unique = f"torchgate_model_{safe_name}_{next(_imports)}_{top}"
    spec = (
        importlib.util.spec_from_file_location(
            unique, package, submodule_search_locations=[str(package.parent)]
        )
        if package.is_file()
        else importlib.util.spec_from_file_location(unique, file)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[unique] = module
    sys.path.insert(0, str(folder))  # helpers beside it (`import utils`) are found while it runs
    try:
        spec.loader.exec_module(module)
        return importlib.import_module(f"{unique}.{rest}") if rest else module
    except BaseException:
        sys.modules.pop(unique, None)
        raise
    finally:
        sys.path.remove(str(folder))
        for name in set(sys.modules) - before:  # a helper of this folder must not serve another model
            origin = getattr(sys.modules[name], "__file__", None)
            if name != unique and not name.startswith(unique + ".") and origin and _inside(origin, folder):
                del sys.modules[name]


def _inside(file: str, folder: Path) -> bool:
    try:
        return Path(file).resolve().is_relative_to(folder)
    except OSError:
        return False


def _python(config: ModelConfig, path: Path, device: torch.device) -> torch.nn.Module:
    factory = import_factory(config)
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise _FactoryResult(
            f"factory {config.factory!r} returned {type(module).__name__}, expected a torch.nn.Module"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise _WeightsMismatch() from exc
    return module.to(device).eval()


_LOADERS: dict[str, Callable[[ModelConfig, Path, torch.device], torch.nn.Module]] = {
    "torchscript": _torchscript,
    "torch_export": _torch_export,
    "python": _python,
}
