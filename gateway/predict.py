"""The seed's contract, ``POST /predict`` with ``{"input": ...}`` -> ``{"output": ...}``; no I/O.

``input`` is a number, a list or a nested list for the model's single input. One sample (shaped like the
input's dims) answers one sample; a list of samples (a batch, for a batching model) answers a list. A number
is taken as one sample when the input's dims hold one element. A model with several outputs answers
``{"output": {name: value}}``.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.codec import Tensor, json_array, tensor_array
from gateway.errors import InvalidArgument
from gateway.validation import check_tensor, describe, fits
from inference_worker.repository import ModelConfig


def predict_input(value: Any, model: ModelConfig) -> tuple[Tensor, bool]:
    """Return the input tensor for ``value`` and whether its outputs go back whole.

    Outputs go back whole for a batch, or for a model that does not batch; a single sample sent to a batching
    model ran as a batch of one, and its outputs lose that batch dim.
    """
    if len(model.inputs) != 1:
        raise InvalidArgument(
            f"/predict needs a model with one input; model {model.name!r} has "
            f"{len(model.inputs)}: use /v2/models/{model.name}/infer"
        )
    spec = model.inputs[0]
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
            f'"input" has shape {list(array.shape)}; model {model.name!r} expects {expected} '
            f"(input {describe(spec, model.max_batch_size)})"
        )
    shape = tuple(array.shape)
    if batching and not batched:
        shape = (1, *shape)
    if math.prod(shape) == 0:
        raise InvalidArgument(f'"input" of shape {list(array.shape)} holds no elements')
    tensor = Tensor(spec.name, spec.datatype, shape, array.tobytes())
    check_tensor(tensor, spec, model.max_batch_size)
    return tensor, batched or not batching


def predict_output(outputs: list[Tensor], model: ModelConfig, whole: bool) -> dict[str, Any]:
    """Return ``{"output": ...}``; unless ``whole``, drop the batch dim a single sample was given."""
    values = {}
    for tensor in outputs:
        array = tensor_array(tensor.datatype, tensor.data, tensor.shape)
        if not whole and array.ndim:
            array = array[0]
        if array.dtype.kind == "f" and array.dtype.itemsize < 4:
            array = array.astype("<f4")
        values[tensor.name] = array
    if len(model.outputs) == 1 and len(values) == 1:
        return {"output": next(iter(values.values()))}
    return {"output": values}
