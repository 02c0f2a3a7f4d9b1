"""The seed's contract, ``POST /predict`` with ``{"input": ...}`` -> ``{"output": ...}``; no I/O.

``input`` is a number, a list or a nested list for the model's single input. One sample (shaped like the
input's dims) answers one sample; a list of samples (a batch, for a batching model) answers a list. A number
is taken as one sample when the input's dims hold one element. A model with several outputs answers
``{"output": {name: value}}``.

For a BYTES input (text, say), ``input`` is a string (one sample) or a list of strings (a batch). A BYTES
output is a string per element (one element per sample: the string itself), or the JSON document when the
output's config says ``format = "json"``.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from gateway.codec import Tensor, json_array, output_strings, tensor_array
from gateway.errors import InvalidArgument
from gateway.validation import bytes_input, check_tensor, describe, sole_input
from inference_worker import strings
from inference_worker.errors import CodedError
from inference_worker.protocol import BYTES, ErrorCode
from inference_worker.repository import ModelConfig, TensorSpec, fits


def predict_input(
    value: Any,
    model: ModelConfig,
    limits: strings.StringLimits = strings.DEFAULT_LIMITS,
    field: str = '"input"',
) -> tuple[Tensor, bool]:
    """Return the input tensor for ``value`` and whether its outputs go back whole.

    Outputs go back whole for a batch, or for a model that does not batch; a single sample sent to a batching
    model ran as a batch of one, and its outputs lose that batch dim. Errors name ``value`` as ``field``.
    """
    spec = sole_input(model, "/predict")
    if spec.datatype == BYTES:
        if isinstance(value, str):
            return bytes_input([value.encode("utf-8", "surrogatepass")], model, limits), False
        if isinstance(value, list) and model.max_batch_size > 0:
            try:
                elements = strings.from_json(spec.name, value, limits)
            except strings.StringsError as exc:
                raise InvalidArgument(str(exc)) from None
            if len(elements) != len(value):
                raise InvalidArgument(f"{field} for {spec.name!r} must be a string or a list of strings")
            return bytes_input(elements, model, limits), True
        expected = "a string" + (" or a list of strings" if model.max_batch_size > 0 else "")
        raise InvalidArgument(f"{field} for BYTES input {spec.name!r} must be {expected}")
    array = json_array(spec.name, spec.datatype, value)
    dims, batching = spec.dims, model.max_batch_size > 0
    if fits(array.shape, dims):
        batched = False
    elif batching and array.ndim == len(dims) + 1 and fits(array.shape[1:], dims):
        batched = True
    elif array.ndim == 0 and all(d in (1, -1) for d in dims):
        array, batched = array.reshape((1,) * len(dims)), False
    else:
        expected = f"one sample shaped {list(dims)}"
        if batching:
            expected += f" or a list of up to {model.max_batch_size} such samples"
        raise InvalidArgument(
            f"{field} has shape {list(array.shape)}; model {model.name!r} expects {expected} "
            f"(input {describe(spec, model.max_batch_size)})"
        )
    shape = tuple(array.shape)
    if batching and not batched:
        shape = (1, *shape)
    if math.prod(shape) == 0:
        raise InvalidArgument(f"{field} of shape {list(array.shape)} holds no elements")
    tensor = Tensor(spec.name, spec.datatype, shape, array.tobytes())
    check_tensor(tensor, spec, model.max_batch_size)
    return tensor, batched or not batching


def predict_output(outputs: list[Tensor], model: ModelConfig, whole: bool) -> dict[str, Any]:
    """Return ``{"output": ...}``; unless ``whole``, drop the batch dim a single sample was given."""
    values = output_values(outputs, model, whole)
    if len(model.outputs) == 1 and len(values) == 1:
        return {"output": next(iter(values.values()))}
    return {"output": values}


def output_values(outputs: list[Tensor], model: ModelConfig, whole: bool) -> dict[str, Any]:
    """Return each output as a JSON-able value; unless ``whole``, without the batch dim of a single sample."""
    specs = {spec.name: spec for spec in model.outputs}
    values: dict[str, Any] = {}
    for tensor in outputs:
        if tensor.datatype == BYTES:
            values[tensor.name] = _strings(tensor, specs[tensor.name], whole)
            continue
        array = tensor_array(tensor.datatype, tensor.data, tensor.shape)
        if not whole and array.ndim:
            array = array[0]
        if array.dtype.kind == "f" and array.dtype.itemsize < 4:
            array = array.astype("<f4")
        values[tensor.name] = array
    return values


def string_elements(tensor: Tensor, spec: TensorSpec) -> list[Any]:
    """Return a BYTES output's elements, flat: strings, or the JSON documents its config announces."""
    elements: list[Any] = output_strings(tensor)
    if spec.format == "json":
        try:
            elements = [orjson.loads(e) for e in elements]
        except orjson.JSONDecodeError:
            raise CodedError(
                ErrorCode.INTERNAL, f"output {tensor.name!r} is not the JSON its config announces"
            ) from None
    return elements


def _strings(tensor: Tensor, spec: TensorSpec, whole: bool) -> Any:
    """Return a BYTES output as nested lists of strings (or JSON documents); one element alone unnested."""
    elements = string_elements(tensor, spec)
    shape = list(tensor.shape)
    if not whole and shape:
        shape = shape[1:]
        elements = elements[: math.prod(shape)]
    if math.prod(shape) == 1:
        return elements[0]
    if whole and shape and math.prod(shape[1:]) == 1:
        return elements  # one element per sample: a list of them
    return nest(elements, shape)


def nest(flat: list[Any], shape: list[int]) -> Any:
    """Return ``flat`` as nested lists of ``shape`` (row-major)."""
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    return [nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
