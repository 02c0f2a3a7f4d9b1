"""A model's handler: its pre- and post-processing, run in the worker around each batch.

``handler = "module:Class"`` in a model's ``config.toml`` names a class in a module beside it (imported as the
python backend's factory is, under a name of its own). Hooks, each optional (see :class:`Handler`):

- ``setup(model_dir, device)``: once, before the first request (load a tokenizer, say);
- ``preprocess(inputs)``: one request's inputs (strings and bytes as ``np.object_`` arrays of ``bytes``,
numbers
  as tensors) -> the model's inputs for that request, each with the request's samples first. An exception here
  fails that request alone, with a 400 that carries its message; the rest of the batch runs;
- ``inference(model, batch)``: the batched (and padded) model inputs -> the model's outputs by name;
- ``postprocess(outputs, inputs)``: one request's share of the outputs (cut back to its length when padded),
  with what its preprocess returned -> ``{output name: value}`` (or the value, for a model with one output).
  A value is a tensor or array, or for a BYTES output strings, bytes or JSON-able objects, one per sample;
- ``warmup_inputs()``: one request's inputs to warm the model up with before the worker says READY.

``preprocess`` and ``postprocess`` get the request's parameters (``{name: str, int, float or bool}``: an Open
Inference Protocol request's ``parameters``, the query string of ``/predictions``, ``/predict``'s
``"parameters"``) when they declare a ``parameters`` argument: ``preprocess(self, inputs, parameters)``.

The gateway never imports a handler or its dependencies; only the worker does.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from inference_worker import strings
from inference_worker.errors import CodedError
from inference_worker.exported import positional_inputs
from inference_worker.protocol import BYTES, ErrorCode, TensorMeta
from inference_worker.repository import ModelConfig, TensorSpec
from inference_worker.tensors import TORCH_DTYPES, from_torch, to_torch


class Handler:
    """The hooks a handler may define; a handler class need not inherit from this one."""

    def setup(self, model_dir: Path, device: torch.device) -> None:
        """Load what the hooks need, once."""

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Turn one request's inputs into model inputs (samples first); by default pass tensors through."""
        return {name: value for name, value in inputs.items() if isinstance(value, torch.Tensor)}

    def inference(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the model on a batch; by default ``model(**batch)`` (an exported program's positional inputs
        passed by position, by their names), one tensor named ``output``."""
        positional = positional_inputs(model)
        if positional:
            if missing := [name for name in positional if name not in batch]:
                raise TypeError(
                    f"the exported program takes inputs {list(positional)} by position, and preprocess "
                    f"returned {list(batch)} (no {missing}): name its tensors after the program's inputs, "
                    "or define inference(model, batch)"
                )
            rest = {name: tensor for name, tensor in batch.items() if name not in positional}
            result = model(*(batch[name] for name in positional), **rest)
        else:
            result = model(**batch)
        if isinstance(result, torch.Tensor):
            return {"output": result}
        if isinstance(result, Mapping):
            return dict(result)
        return {f"output{i}": t for i, t in enumerate(result)}

    def postprocess(self, outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> Any:
        """Turn one request's model outputs into its outputs; by default pass them through."""
        return outputs

    def warmup_inputs(self) -> dict[str, Any] | None:
        """Return one request's inputs to warm up with, or None to skip the warm-up."""
        return None


class BoundHandler:
    """A handler instance with the defaults of :class:`Handler` for every hook it lacks."""

    def __init__(self, instance: Any, config: ModelConfig) -> None:
        self.instance, self.config = instance, config
        default = Handler()
        for hook in ("setup", "preprocess", "inference", "postprocess", "warmup_inputs"):
            setattr(self, hook, getattr(instance, hook, getattr(default, hook)))
        # A hook that declares ``parameters`` gets the request's (its OIP request parameters, say).
        self.preprocess_parameters = takes_parameters(self.preprocess)
        self.postprocess_parameters = takes_parameters(self.postprocess)

    # The hooks, bound in __init__ (declared for the type checker).
    setup: Any
    preprocess: Any
    inference: Any
    postprocess: Any
    warmup_inputs: Any

    def request_inputs(self, tensors: Sequence[tuple[TensorMeta, memoryview]]) -> dict[str, Any]:
        """Return a request's wire tensors as the hooks see them: BYTES as object arrays, numbers as
        tensors."""
        inputs: dict[str, Any] = {}
        for meta, buf in tensors:
            if meta.datatype == BYTES:
                count = math.prod(meta.shape)
                elements = strings.deserialize(buf, count, strings.StringLimits(count, len(buf)), meta.name)
                inputs[meta.name] = strings.to_array(elements, meta.shape)
            else:
                inputs[meta.name] = to_torch(meta, buf)
        return inputs

    def prepare(
        self, inputs: dict[str, Any], samples: int, parameters: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """Run ``preprocess`` on one request; a failure is that request's 400, with the handler's message."""
        try:
            if self.preprocess_parameters:
                result = self.preprocess(inputs, parameters=dict(parameters or {}))
            else:
                result = self.preprocess(inputs)
        except Exception as exc:
            raise CodedError(ErrorCode.INVALID_ARGUMENT, f"preprocessing failed: {_say(exc)}") from exc
        if not isinstance(result, Mapping) or not result:
            raise CodedError(
                ErrorCode.INTERNAL, f"preprocess returned {type(result).__name__}, expected {{name: tensor}}"
            )
        prepared = {}
        for name, value in result.items():
            try:
                tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            except Exception as exc:  # None, strings, a ragged list: this request's failure, not the worker's
                raise CodedError(
                    ErrorCode.INTERNAL,
                    f"preprocess returned {name!r} as a {type(value).__name__}, not a tensor: {_say(exc)}",
                ) from None
            if self.config.max_batch_size > 0 and (tensor.dim() == 0 or tensor.shape[0] != samples):
                raise CodedError(
                    ErrorCode.INTERNAL,
                    f"preprocess returned {name!r} of shape {list(tensor.shape)}: "
                    f"its first dim must be the request's {samples} samples",
                )
            prepared[str(name)] = tensor
        return prepared

    def finish(
        self,
        outputs: dict[str, torch.Tensor],
        inputs: dict[str, torch.Tensor],
        samples: int,
        parameters: Mapping[str, Any] | None = None,
    ) -> list[tuple[TensorMeta, Any]]:
        """Run ``postprocess`` on one request and return its outputs as wire tensors, in config order."""
        try:
            if self.postprocess_parameters:
                result = self.postprocess(outputs, inputs, parameters=dict(parameters or {}))
            else:
                result = self.postprocess(outputs, inputs)
        except Exception as exc:
            raise CodedError(ErrorCode.INTERNAL, f"postprocessing failed: {_say(exc)}") from exc
        names = [spec.name for spec in self.config.outputs]
        if not (isinstance(result, Mapping) and set(result) <= set(names) and result):
            if len(names) != 1:
                raise CodedError(
                    ErrorCode.INTERNAL,
                    f"postprocess must return {{output name: value}} for outputs {names}",
                )
            result = {names[0]: result}
        try:
            return [
                wire_output(spec, result[spec.name], samples, self.config.max_batch_size > 0)
                for spec in self.config.outputs
                if spec.name in result
            ]
        except CodedError:
            raise
        except Exception as exc:  # a value that is no tensor (a dict, strings for a number): this request's
            raise CodedError(
                ErrorCode.INTERNAL, f"postprocess returned what cannot be sent: {_say(exc)}"
            ) from None


def takes_parameters(hook: Any) -> bool:
    """Whether a hook declares a ``parameters`` argument (or takes ``**kwargs``)."""
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # a builtin or an odd callable: call it as documented
        return False
    return any(
        p.name == "parameters" or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in signature.parameters.values()
    )


def wire_output(spec: TensorSpec, value: Any, samples: int, batching: bool) -> tuple[TensorMeta, Any]:
    """Turn one output value of one request into its wire tensor, checking it against ``spec``."""
    expected = ([samples] if batching else []) + list(spec.dims)
    if spec.datatype == BYTES:
        array = _object_array(value, batching)
        shape = _shape(array.size, array.shape, expected, spec)
        elements = [_element(v, spec) for v in array.reshape(-1)]
        return TensorMeta(spec.name, BYTES, shape), strings.serialize(elements)
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    tensor = tensor.to(TORCH_DTYPES[spec.datatype])
    shape = _shape(tensor.numel(), tuple(tensor.shape), expected, spec)
    return from_torch(spec.name, tensor.reshape(shape))


def _object_array(value: Any, batching: bool) -> np.ndarray[Any, Any]:
    """Return a BYTES value as an object array: a list's items (one per sample, or every element of the
    request), one bare value, or an array as it is shaped. A list of any other length does not fit (it was
    sent as one JSON element for a request of one sample)."""
    if isinstance(value, np.ndarray):
        return value.astype(object)
    if batching and isinstance(value, list | tuple):
        array = np.empty(len(value), dtype=object)
        array[:] = list(value)
        return array
    array = np.empty(1, dtype=object)
    array[0] = value
    return array


def _shape(count: int, shape: tuple[int, ...], expected: list[int], spec: TensorSpec) -> tuple[int, ...]:
    """Return ``shape``, or ``expected`` when it holds the same elements; else the handler erred."""
    if len(shape) == len(expected) and all(e in (-1, s) for s, e in zip(shape, expected, strict=True)):
        return shape
    if -1 not in expected and count == math.prod(expected):
        return tuple(expected)
    raise CodedError(
        ErrorCode.INTERNAL,
        f"output {spec.name!r} of shape {list(shape)} does not fit {expected} (-1: any size)",
    )


def _element(value: Any, spec: TensorSpec) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and spec.format != "json":
        return value.encode("utf-8")
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise CodedError(
            ErrorCode.INTERNAL, f"output {spec.name!r}: a {type(value).__name__} is not JSON-able: {exc}"
        ) from None


def zeros_inputs(config: ModelConfig) -> dict[str, Any] | None:
    """Return one sample of zeros for a model whose inputs are all numeric, else None."""
    if any(spec.datatype == BYTES for spec in config.inputs):
        return None
    batch = [1] if config.max_batch_size > 0 else []
    return {
        spec.name: torch.zeros(batch + [max(d, 1) for d in spec.dims], dtype=TORCH_DTYPES[spec.datatype])
        for spec in config.inputs
    }


def _say(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_handler(config: ModelConfig, version: str, device: torch.device) -> BoundHandler:
    """Import ``config.handler``, make one instance and run its ``setup``; raise a LoadError saying why
    not."""
    from inference_worker.backends import _import_local, load_error

    assert config.handler is not None
    module_name, _, class_name = config.handler.partition(":")
    try:
        module = _import_local(config, module_name) or importlib.import_module(module_name)
        instance = getattr(module, class_name)()
    except (Exception, SystemExit) as exc:  # sys.exit() in a handler's module fails its model, not the worker
        raise load_error(
            config,
            version,
            f"cannot import handler {config.handler!r}",
            exc,
            f"key 'handler' in {config.config_path} and that every package it imports is installed",
        ) from exc
    bound = BoundHandler(instance, config)
    try:
        bound.setup(config.versions[version], device)
    except (Exception, SystemExit) as exc:
        raise load_error(
            config, version, f"handler {config.handler!r} setup failed", exc, "the handler's setup"
        ) from exc
    return bound
