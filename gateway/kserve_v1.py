"""KServe's v1 protocol (TensorFlow Serving's row format): ``{"instances": [...]}`` ->
``{"predictions": [...]}``; no I/O.

What KServe's model servers (and TorchServe's KServe wrapper) answer at ``POST /v1/models/{name}:predict``:

- ``instances`` (or ``inputs``) is a list with one instance per sample, for the model's single input: each
  instance shaped like the input's dims; for a ``BYTES`` input a string (its UTF-8 bytes) or
  ``{"b64": "..."}`` (the bytes of a file: an image, say). A model that does not batch takes one instance.
- ``predictions`` holds one prediction per instance: the output's value for that sample, or
  ``{name: value}`` when the model has several outputs. A ``BYTES`` output is its string, or the JSON document
  its config says (``format = "json"``).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from gateway.codec import Tensor, tensor_array
from gateway.errors import InvalidArgument
from gateway.predict import nest, output_values, predict_input, string_elements
from gateway.validation import bytes_input, sole_input
from inference_worker import strings
from inference_worker.errors import CodedError
from inference_worker.protocol import BYTES, ErrorCode
from inference_worker.repository import ModelConfig, TensorSpec


def instances_input(
    doc: Any, model: ModelConfig, limits: strings.StringLimits = strings.DEFAULT_LIMITS
) -> tuple[Tensor, int]:
    """Return the input tensor for a v1 predict body and how many instances it holds."""
    if not isinstance(doc, dict):
        raise InvalidArgument('a v1 predict body must be a JSON object: {"instances": [...]}')
    instances = doc.get("instances", doc.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument('"instances" must be a list with one instance per sample')
    spec = sole_input(model, "the v1 protocol")
    if model.max_batch_size == 0 and len(instances) != 1:
        raise InvalidArgument(f"model {model.name!r} does not batch: send one instance, not {len(instances)}")
    if spec.datatype == BYTES:
        elements = [_instance_bytes(instance, i) for i, instance in enumerate(instances)]
        return bytes_input(elements, model, limits), len(instances)
    if model.max_batch_size == 0:
        return predict_input(instances[0], model, limits, '"instances[0]"')[0], 1
    tensor, whole = predict_input(instances, model, limits, '"instances"')
    if not whole or tensor.shape[0] != len(instances):
        raise InvalidArgument(
            f"each instance must be one sample of input {spec.name!r}, shaped {list(spec.dims)}"
        )
    return tensor, len(instances)


def predictions(outputs: list[Tensor], model: ModelConfig, count: int) -> list[Any]:
    """Return one prediction per instance: the only output's value, or ``{name: value}``."""
    if model.max_batch_size == 0:  # one instance: the outputs whole
        per_sample = [output_values(outputs, model, whole=True)]
    else:
        specs = {spec.name: spec for spec in model.outputs}
        split = {t.name: _samples(t, specs[t.name], count) for t in outputs}
        per_sample = [{name: samples[i] for name, samples in split.items()} for i in range(count)]
    if len(model.outputs) == 1 and len(outputs) == 1:
        return [next(iter(p.values())) for p in per_sample]
    return per_sample


def _samples(tensor: Tensor, spec: TensorSpec, count: int) -> list[Any]:
    """Return a batch-first output's value for each of its ``count`` samples."""
    if tensor.shape[:1] != (count,):
        raise CodedError(
            ErrorCode.INTERNAL, f"output {tensor.name!r} of shape {list(tensor.shape)} is not {count} samples"
        )
    if tensor.datatype == BYTES:  # one element per sample: the element itself
        elements, shape = string_elements(tensor, spec), list(tensor.shape[1:])
        step = math.prod(shape)
        if step == 1:
            return elements
        return [nest(elements[i * step : (i + 1) * step], shape) for i in range(count)]
    array = tensor_array(tensor.datatype, tensor.data, tensor.shape)
    if array.dtype.kind == "f" and array.dtype.itemsize < 4:
        array = array.astype("<f4")
    return list(array)


def _instance_bytes(instance: Any, index: int) -> bytes:
    if isinstance(instance, str):
        return instance.encode("utf-8", "surrogatepass")
    if isinstance(instance, dict) and isinstance(instance.get("b64"), str) and len(instance) == 1:
        try:
            return base64.b64decode(instance["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"instances[{index}].b64 is not base64") from None
    raise InvalidArgument(f'instances[{index}] must be a string or {{"b64": "<base64 bytes>"}}')
