"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` (and ``generate_stream``), a
flat JSON object in and out, for clients that send text or a few values; no I/O.

A request is a JSON object whose keys are the model's input names, each with a value or a flat list of
values; any other key (and any key inside ``"parameters"``) is a request parameter, as Triton reads it:
``timeout`` and ``priority`` for the server, the rest for the model's handler. Without shapes in the request,
each input's shape is its declared one (``[-1] + dims`` for a batching model) with its fixed dimensions
filled first, the innermost variable one taking the elements left, and any other variable one 1, exactly as
Triton does. The answer holds ``model_name``, ``model_version`` and each output by name: its value when it
has one element, else the flat list of them (``BYTES`` as strings).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from gateway.codec import NUMPY_DTYPES, Tensor, output_strings
from gateway.errors import InvalidArgument
from inference_worker.protocol import BYTES
from inference_worker.repository import ModelConfig, TensorSpec

PARAMETERS = "parameters"
EVENT_STREAM = "text/event-stream; charset=utf-8"


def infer_document(doc: Any, model: ModelConfig) -> dict[str, Any]:
    """Return the Open Inference Protocol infer request a generate request stands for; raise
    :class:`InvalidArgument` (400) for what cannot be one."""
    if not isinstance(doc, dict):
        raise InvalidArgument("a generate request must be a JSON object")
    specs = {spec.name: spec for spec in model.inputs}
    inputs: dict[str, dict[str, Any]] = {}
    parameters: dict[str, Any] = {}

    def take(key: str, value: Any) -> None:
        spec = specs.get(key)
        if spec is None:
            parameters[key] = value  # checked as every request's parameters are
            return
        if key in inputs:
            raise InvalidArgument(f"input {key!r} is given twice (at the top and in 'parameters')")
        inputs[key] = _input(spec, value, model.max_batch_size)

    for key, value in doc.items():
        if key != PARAMETERS:
            take(key, value)
    nested = doc.get(PARAMETERS, {})
    if not isinstance(nested, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    for key, value in nested.items():
        take(key, value)
    missing = [name for name, spec in specs.items() if name not in inputs and not spec.optional]
    if missing:
        raise InvalidArgument(
            f"model {model.name!r} needs the input(s) {', '.join(repr(m) for m in missing)}: a generate "
            "request names each input as a key"
        )
    document: dict[str, Any] = {"inputs": list(inputs.values())}
    if parameters:
        document[PARAMETERS] = parameters
    return document


def shape_for(spec: TensorSpec, count: int, max_batch_size: int) -> list[int]:
    """Return the shape ``count`` elements take in ``spec`` (Triton's rule, above); raise if they cannot."""
    shape = spec.full_shape(max_batch_size)
    fixed = math.prod(d for d in shape if d != -1)
    if count == 0 or fixed == 0 or count % fixed:
        raise InvalidArgument(f"input {spec.name!r}: {count} values do not fit its shape {shape}")
    left = count // fixed
    out = list(shape)
    for i in reversed(range(len(out))):
        if out[i] == -1:
            out[i], left = left, 1
    if left != 1:  # no variable dimension to take what the fixed ones leave
        raise InvalidArgument(f"input {spec.name!r}: {count} values do not fit its shape {shape}")
    return out


def _input(spec: TensorSpec, value: Any, max_batch_size: int) -> dict[str, Any]:
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, list | dict) for v in values):
        raise InvalidArgument(f"input {spec.name!r}: a generate request's value is one value or a flat list")
    if spec.datatype == BYTES and not all(isinstance(v, str) for v in values):
        raise InvalidArgument(f"input {spec.name!r} is BYTES: give a string or a list of strings")
    shape = shape_for(spec, len(values), max_batch_size)
    return {"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": values}


def response(model: str, version: str | None, outputs: list[Tensor]) -> dict[str, Any]:
    """Return the generate answer: the model, its version and each output (one value, or a flat list)."""
    doc: dict[str, Any] = {"model_name": model}
    if version:
        doc["model_version"] = version
    for tensor in outputs:
        values: Any
        if tensor.datatype == BYTES:
            values = output_strings(tensor)
        else:
            values = np.frombuffer(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype]).tolist()
        doc[tensor.name] = values[0] if len(values) == 1 else values
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    """The answer's JSON: ``NaN`` and ``Infinity`` as their literals, as the infer answer writes them."""
    return json.dumps(doc, separators=(",", ":")).encode()


def event(doc: dict[str, Any]) -> bytes:
    """One Server-Sent Event of ``generate_stream``: a ``data:`` line and a blank line."""
    return b"data: " + dumps(doc) + b"\n\n"
