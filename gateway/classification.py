"""Triton's classification extension: an output's top ``k`` classes as strings instead of its values; no I/O.

A client asks for it per output (``"parameters": {"classification": k}``; tritonclient's
``InferRequestedOutput(name, class_count=k)``). The answer is a BYTES tensor of shape ``[batch, k']`` for a
batching model (``[k']`` otherwise), ``k' = min(k, elements per sample)``, each element
``"<value>:<index>[:<label>]"``, highest value first, as Triton writes it:

- the value as C's ``std::to_string`` writes it: ``%f`` for floating point (``0.973154``), integers whole;
- the index into the sample's values, flattened (row-major) beyond the batch dimension;
- the label: line ``index`` of the output's ``label_filename`` (no label past its end or on an empty line).

Equal values are ranked lowest index first (Triton's order among ties is unspecified); NaN ranks last.
FP16 and BF16 outputs are ranked as float32 (Triton refuses them); BOOL and BYTES outputs cannot be ranked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gateway.codec import Tensor, tensor_array
from gateway.errors import InvalidArgument
from inference_worker import strings
from inference_worker.protocol import BYTES

UNRANKABLE = frozenset({"BOOL", BYTES})


def top_classes(
    tensor: Tensor,
    count: int,
    batched: bool,
    labels: tuple[str, ...] = (),
    max_elements: int = strings.DEFAULT_LIMITS.max_elements,
) -> Tensor:
    """Return ``tensor``'s top ``count`` classes per sample as a BYTES tensor of the same name.

    The answer holds at most ``max_elements`` strings, as any BYTES tensor (400 beyond).
    """
    values = tensor_array(tensor.datatype, tensor.data, tensor.shape)
    samples = tensor.shape[0] if batched and tensor.shape else 1
    per_sample = math.prod(tensor.shape[1:]) if batched and tensor.shape else math.prod(tensor.shape)
    rows = values.reshape(samples, per_sample)
    keep = min(count, per_sample)
    if samples * keep > max_elements:
        raise InvalidArgument(
            f"output {tensor.name!r}: {keep} classes for each of {samples} samples would be "
            f"{samples * keep} strings, more than the limit of {max_elements}; ask for fewer classes"
        )
    order = np.argsort(_descending(rows), axis=1, kind="stable")[:, :keep]
    floating = rows.dtype.kind == "f"
    elements = []
    for row, indices in zip(rows.tolist(), order.tolist(), strict=True):
        for index in indices:
            elements.append(_element(row[index], index, floating, labels))
    shape = (samples, keep) if batched and tensor.shape else (keep,)
    return Tensor(tensor.name, BYTES, shape, strings.serialize(elements))


def _descending(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Return keys whose ascending order is ``rows``' descending order, without overflow."""
    if rows.dtype.kind == "f":
        return -rows.astype(np.float32) if rows.dtype.itemsize < 4 else -rows  # NaN stays NaN: sorted last
    return ~rows  # -x - 1 (signed) or max - x (unsigned): order reversed, no overflow at the extremes


def _element(value: float | int, index: int, floating: bool, labels: tuple[str, ...]) -> bytes:
    text = f"{value:f}:{index}" if floating else f"{value}:{index}"
    label = labels[index] if index < len(labels) else ""
    return (f"{text}:{label}" if label else text).encode()
