"""Check a parsed request against a model's signature before it costs a worker anything; no I/O.

Every refusal is an :class:`~gateway.errors.InvalidArgument` (400) whose message names the tensor and what
was expected.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from gateway.classification import UNRANKABLE
from gateway.codec import JSON_UNSUPPORTED, InferRequest, RegionSlice, Tensor
from gateway.errors import InvalidArgument
from inference_worker import strings
from inference_worker.protocol import BYTES, DATATYPE_SIZES, MAX_TENSOR_BYTES
from inference_worker.repository import ModelConfig, TensorSpec


def describe(spec: TensorSpec, max_batch_size: int) -> str:
    """Return ``'input' FP32 [-1, 64]``: how a tensor of the signature is named in messages."""
    return f"{spec.name!r} {spec.datatype} {spec.full_shape(max_batch_size)}"


def sole_input(model: ModelConfig, what: str) -> TensorSpec:
    """Return the one input ``what`` (a kind of request that carries one tensor) fills, or refuse the model:
    it needs one input, or one required with the others optional (:attr:`ModelConfig.sole_input`)."""
    spec = model.sole_input
    if spec is None:
        required = sum(not s.optional for s in model.inputs)
        has = f"{len(model.inputs)}" + (
            f", {required} of them required" if required < len(model.inputs) else ""
        )
        raise InvalidArgument(
            f"{what} needs a model with one input (besides optional ones); model {model.name!r} has {has}: "
            f"use /v2/models/{model.name}/infer"
        )
    return spec


def check_inputs(
    request: InferRequest, model: ModelConfig, limits: strings.StringLimits = strings.DEFAULT_LIMITS
) -> list[Tensor]:
    """Return the request's inputs in the model's order, or raise naming the first that does not fit.

    An ``optional`` input the request leaves out is left out of the list: the worker passes None for it."""
    given: dict[str, Tensor] = {}
    for tensor in request.inputs:
        if tensor.name in given:
            raise InvalidArgument(f"input {tensor.name!r} is given twice")
        given[tensor.name] = tensor
    expected = {spec.name: spec for spec in model.inputs}
    for name in given:
        if name not in expected:
            raise InvalidArgument(
                f"model {model.name!r} has no input {name!r}; its inputs are "
                + ", ".join(describe(s, model.max_batch_size) for s in model.inputs)
            )
    ordered = []
    batch: tuple[str, int] | None = None
    for spec in model.inputs:
        if spec.name not in given:
            if spec.optional:
                continue
            raise InvalidArgument(
                f"missing input {describe(spec, model.max_batch_size)} for model {model.name!r}"
            )
        tensor = given[spec.name]
        check_tensor(tensor, spec, model.max_batch_size, limits)
        if model.max_batch_size > 0:
            if batch is not None and tensor.shape[0] != batch[1]:
                raise InvalidArgument(
                    f"input {tensor.name!r} has batch size {tensor.shape[0]} but input "
                    f"{batch[0]!r} has {batch[1]}: every input needs the same batch size"
                )
            batch = (tensor.name, tensor.shape[0])
        ordered.append(tensor)
    return ordered


def check_tensor(
    tensor: Tensor,
    spec: TensorSpec,
    max_batch_size: int,
    limits: strings.StringLimits = strings.DEFAULT_LIMITS,
) -> None:
    """Check one input's datatype, shape, batch size and byte count (BYTES: layout and limits) against its
    spec."""
    name = tensor.name
    if (why := spec.mismatch(tensor.datatype, tensor.shape, max_batch_size)) is not None:
        raise InvalidArgument(why)
    if 0 in tensor.shape:
        raise InvalidArgument(f"input {name!r}: shape {list(tensor.shape)} holds no elements")
    if tensor.datatype == BYTES:
        if len(tensor.data) > MAX_TENSOR_BYTES:
            raise InvalidArgument(f"input {name!r}: {len(tensor.data)} bytes, more than {MAX_TENSOR_BYTES}")
        try:
            strings.spans(tensor.data, math.prod(tensor.shape), limits, f"input {name!r}")
        except strings.StringsError as exc:
            raise InvalidArgument(str(exc)) from None
        return
    need = DATATYPE_SIZES[tensor.datatype] * math.prod(tensor.shape)
    if need > MAX_TENSOR_BYTES:
        raise InvalidArgument(
            f"input {name!r}: shape {list(tensor.shape)} needs {need} bytes, more than the "
            f"limit of {MAX_TENSOR_BYTES}"
        )
    if len(tensor.data) != need:
        raise InvalidArgument(
            f"input {name!r}: {len(tensor.data)} bytes of data, but shape {list(tensor.shape)} "
            f"of {tensor.datatype} needs {need}"
        )


class Planned(NamedTuple):
    """An output to answer: whether it goes back as binary data, and how many top classes instead of its
    values (0: its values)."""

    name: str
    binary: bool
    classes: int = 0
    region: RegionSlice | None = None  # written to this client's shared-memory region (gateway.client_shm)


def output_plan(request: InferRequest, model: ModelConfig) -> list[Planned]:
    """Return the outputs to compute, each with how it goes back.

    FP16 and BF16 outputs asked for as JSON, and classes of an output that has none, are refused here,
    before any inference.
    """
    specs = {spec.name: spec for spec in model.outputs}
    default_binary = request.binary_data_output or request.raw is not None
    if request.outputs:
        seen: set[str] = set()
        plan = []
        for out in request.outputs:
            if out.name not in specs:
                raise InvalidArgument(
                    f"model {model.name!r} has no output {out.name!r}; its outputs are "
                    + ", ".join(describe(s, model.max_batch_size) for s in model.outputs)
                )
            if out.name in seen:
                raise InvalidArgument(f"output {out.name!r} is requested twice")
            seen.add(out.name)
            binary = default_binary if out.binary is None else out.binary
            plan.append(Planned(out.name, binary, out.classification, out.region))
    else:
        plan = [Planned(spec.name, default_binary) for spec in model.outputs]
    for name, binary, classes, region in plan:
        if classes and specs[name].datatype in UNRANKABLE:
            raise InvalidArgument(
                f"output {name!r} is {specs[name].datatype}: its values cannot be ranked, so it has no "
                "classes (parameter 'classification')"
            )
        if not binary and not classes and not region and specs[name].datatype in JSON_UNSUPPORTED:
            raise InvalidArgument(
                f"output {name!r} is {specs[name].datatype}, which travels only as binary data: "
                "request it with parameters.binary_data true"
            )
    return plan


def raw_input(
    request: InferRequest, model: ModelConfig, limits: strings.StringLimits = strings.DEFAULT_LIMITS
) -> Tensor:
    """Turn a raw binary request (header length 0) into the single input of ``model``.

    The shape is the input's dims; for a batching model the batch size is what the byte count implies. For a
    BYTES input the whole body is one element (an image, say), as a raw body is to TorchServe.
    """
    data = request.raw if request.raw is not None else b""
    spec = sole_input(model, "a raw binary request (Inference-Header-Content-Length: 0)")
    if spec.datatype == BYTES:
        return bytes_input([bytes(data)], model, limits)
    if -1 in spec.dims:
        raise InvalidArgument(
            f"a raw binary request cannot carry input {describe(spec, model.max_batch_size)}: "
            "its shape has variable dims; send a JSON header"
        )
    row = DATATYPE_SIZES[spec.datatype] * math.prod(spec.dims)
    if model.max_batch_size > 0:
        if row == 0 or len(data) % row or not data:
            raise InvalidArgument(
                f"raw binary input {spec.name!r}: {len(data)} bytes is not a whole number of "
                f"{spec.datatype} {list(spec.dims)} samples ({row} bytes each)"
            )
        shape = (len(data) // row, *spec.dims)
    else:
        shape = spec.dims
    tensor = Tensor(spec.name, spec.datatype, shape, data)
    check_tensor(tensor, spec, model.max_batch_size)
    return tensor


def bytes_input(
    elements: list[bytes], model: ModelConfig, limits: strings.StringLimits = strings.DEFAULT_LIMITS
) -> Tensor:
    """Return the single BYTES input of ``model`` holding ``elements``, one sample each.

    The input's dims must hold one element (``[1]``, ``[-1]`` or ``[]``); a batching model gets the elements
    as a batch of ``len(elements)``, a model that does not batch needs exactly one.
    """
    spec = model.sole_input
    if spec is None or spec.datatype != BYTES:
        inputs = ", ".join(describe(s, model.max_batch_size) for s in model.inputs)
        raise InvalidArgument(f"model {model.name!r} does not take one BYTES input (its inputs: {inputs})")
    if not all(d in (1, -1) for d in spec.dims):
        raise InvalidArgument(
            f"input {describe(spec, model.max_batch_size)} holds several strings per sample: "
            f"send it to /v2/models/{model.name}/infer"
        )
    one = (1,) * len(spec.dims)
    if model.max_batch_size > 0:
        shape: tuple[int, ...] = (len(elements), *one)
    elif len(elements) == 1 or spec.dims == (-1,):
        shape = (len(elements),) if spec.dims == (-1,) else one
    else:
        raise InvalidArgument(f"model {model.name!r} does not batch: send one string or one file")
    if not elements:
        raise InvalidArgument(f"input {spec.name!r}: no data")
    tensor = Tensor(spec.name, BYTES, shape, strings.serialize(elements))
    check_tensor(tensor, spec, model.max_batch_size, limits)
    return tensor
