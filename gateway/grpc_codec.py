"""The Open Inference Protocol's gRPC messages <-> the gateway's requests and tensors, as Triton's gRPC
endpoint reads and writes them; no I/O.

Decisions a client may rely on:

- Inputs come as ``raw_input_contents`` (one entry per input, in the inputs' order: what ``tritonclient``
  sends) or each in its typed ``contents`` (``fp32_contents``, ``int_contents`` for INT8 to INT32,
  ``bytes_contents`` for BYTES, ...), never both. FP16 and BF16 travel only raw, as in Triton.
- Outputs always go back as ``raw_output_contents`` (BYTES in Triton's 4-byte length layout), as Triton sends
  them; clients read either form.
- Request parameters ``timeout`` (microseconds) and ``priority`` are read here; the others go to the model's
  handler, as over HTTP. An output's ``classification`` asks for its top classes (a BYTES output).
- Triton's shared-memory parameters place an input or an output in a client's registered system
  shared-memory region (:mod:`gateway.client_shm`); an input in a region takes no ``raw_input_contents``
  entry (the entries belong to the other inputs, in order), and an output in one gets an empty entry.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format

from gateway.codec import (
    JSON_UNSUPPORTED,
    MAX_ID_LENGTH,
    MAX_UINT64,
    RESERVED_PARAMETERS,
    InferRequest,
    Placement,
    RegionSlice,
    RequestedOutput,
    Tensor,
    handler_parameters,
    json_to_bytes,
    region_slice,
)
from gateway.errors import InvalidArgument
from gateway.grpc_messages import message
from inference_worker import strings
from inference_worker.protocol import BYTES, DATATYPE_SIZES, DATATYPES, MAX_DIMS, MAX_NAME_LENGTH, MAX_TENSORS
from inference_worker.strings import StringLimits

# The typed field of InferTensorContents that holds each datatype (FP16 and BF16 have none: raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def parameters(entries: Any) -> dict[str, Any]:
    """Return a message's ``map<string, InferParameter>`` as plain values (an unset one is None)."""
    return {key: _value(entry) for key, entry in entries.items()}


def _value(entry: Any) -> Any:
    which = entry.WhichOneof("parameter_choice")
    return None if which is None else getattr(entry, which)


def infer_request(msg: Any, limits: StringLimits) -> InferRequest:
    """Read a ``ModelInferRequest`` (model and version aside); raise :class:`InvalidArgument` naming what is
    wrong."""
    if len(msg.id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"'id' must be a string of at most {MAX_ID_LENGTH} characters")
    params = parameters(msg.parameters)
    timeout = params.get("timeout")
    if timeout is not None and (type(timeout) is not int or not 0 <= timeout <= MAX_UINT64):
        raise InvalidArgument("parameter 'timeout' must be a non-negative integer (microseconds)")
    priority = params.get("priority")
    priority = 0 if priority is None else priority  # absent, or present with no value (as timeout)
    if type(priority) is not int or not 0 <= priority <= MAX_UINT64:
        raise InvalidArgument("parameter 'priority' must be a non-negative integer")
    if not 0 < len(msg.inputs) <= MAX_TENSORS:
        raise InvalidArgument(f"'inputs' must hold 1 to {MAX_TENSORS} tensors")
    in_regions = {
        i: where
        for i, t in enumerate(msg.inputs)
        if (where := region_slice(parameters(t.parameters), f"input {t.name!r}")) is not None
    }
    raw = list(msg.raw_input_contents)
    carried = len(msg.inputs) - len(in_regions)  # the inputs not in a region, each with an entry when raw
    if raw and len(raw) != carried:
        raise InvalidArgument(
            f"raw_input_contents holds {len(raw)} entries but there are {carried} inputs not in shared "
            "memory: give one entry per such input, in order, or none and each input's contents"
        )
    if len(msg.outputs) > MAX_TENSORS:
        raise InvalidArgument(f"'outputs' must hold at most {MAX_TENSORS} outputs")
    entries = iter(raw)
    return InferRequest(
        id=msg.id or None,
        inputs=[
            _input(t, i in in_regions, None if i in in_regions or not raw else next(entries), limits)
            for i, t in enumerate(msg.inputs)
        ],
        outputs=[_output(o) for o in msg.outputs],
        timeout_us=timeout,
        priority=priority,
        binary_data_output=True,
        parameters=handler_parameters(
            {k: v for k, v in params.items() if v is not None}, RESERVED_PARAMETERS
        ),
        in_regions=in_regions,
    )


def _input(tensor: Any, in_region: bool, raw: bytes | None, limits: StringLimits) -> Tensor:
    name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        raise InvalidArgument(f"an input's name must be 1 to {MAX_NAME_LENGTH} characters")
    if datatype not in DATATYPES:
        supported = ", ".join([*DATATYPE_SIZES, BYTES])
        raise InvalidArgument(
            f"input {name!r}: datatype {datatype!r} is not supported; expected one of {supported}"
        )
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidArgument(f"input {name!r}: shape must hold at most {MAX_DIMS} non-negative integers")
    given = [field.name for field, _ in tensor.contents.ListFields()]
    if in_region:  # its bytes are read from the region (gateway.client_shm)
        if given:
            raise InvalidArgument(f"input {name!r}: has both contents and 'shared_memory_region'")
        return Tensor(name, datatype, shape, b"")
    if raw is not None:
        if given:
            raise InvalidArgument(f"input {name!r}: has both contents and raw_input_contents")
        return Tensor(name, datatype, shape, raw)
    if not given:
        raise InvalidArgument(f"input {name!r}: has no data (contents or raw_input_contents)")
    if datatype in JSON_UNSUPPORTED:
        raise InvalidArgument(f"input {name!r}: {datatype} data must be sent in raw_input_contents")
    field = CONTENTS[datatype]
    if given != [field]:
        raise InvalidArgument(f"input {name!r}: {datatype} data goes in contents.{field}, not {given}")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: contents.{field} holds {len(values)} elements, "
            f"shape {list(shape)} needs {count}"
        )
    if datatype == BYTES:
        if count > limits.max_elements:
            raise InvalidArgument(f"input {name!r}: {count} strings, more than {limits.max_elements}")
        return Tensor(name, datatype, shape, strings.serialize(values))
    return Tensor(name, datatype, shape, json_to_bytes(name, datatype, shape, list(values)))


def _output(output: Any) -> RequestedOutput:
    params = parameters(output.parameters)
    classes = params.get("classification", 0)
    if type(classes) is not int or not 0 <= classes <= MAX_UINT64:
        raise InvalidArgument(
            f"output {output.name!r}: parameter 'classification' must be a non-negative integer "
            "(the number of classes to return)"
        )
    region = region_slice(params, f"output {output.name!r}")
    if region is not None and classes:
        raise InvalidArgument(
            f"output {output.name!r}: an output in shared memory ('shared_memory_region') cannot also be "
            "'classification'"
        )
    return RequestedOutput(output.name, True, classes, region)


def infer_response(
    model: str, version: str | None, request_id: str | None, outputs: list[tuple[Tensor, Placement]]
) -> Any:
    """Build a ``ModelInferResponse``: each output's metadata, its bytes in ``raw_output_contents`` (for one
    written to a shared-memory region, an empty entry and no parameters, as Triton sends it)."""
    response = message(
        "ModelInferResponse", model_name=model, model_version=version or "", id=request_id or ""
    )
    for tensor, _ in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(
        b"" if isinstance(p, RegionSlice) else bytes(t.data) for t, p in outputs
    )
    return response


def model_metadata(doc: dict[str, Any]) -> Any:
    """Build a ``ModelMetadataResponse`` from the HTTP endpoint's document
    (:func:`gateway.triton.model_metadata`)."""
    response = message(
        "ModelMetadataResponse", name=doc["name"], versions=doc["versions"], platform=doc["platform"]
    )
    for side in ("inputs", "outputs"):
        for tensor in doc[side]:
            getattr(response, side).add(
                name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
            )
    return response


def repository_index(entries: list[dict[str, Any]]) -> Any:
    """Build a ``RepositoryIndexResponse`` from the HTTP endpoint's entries
    (:func:`gateway.triton.repository_index`)."""
    response = message("RepositoryIndexResponse")
    for entry in entries:
        response.models.add(
            name=entry["name"],
            version=entry.get("version", ""),
            state=entry.get("state", ""),
            reason=entry.get("reason", ""),
        )
    return response


def model_config(doc: dict[str, Any]) -> Any:
    """Build a ``ModelConfigResponse`` from the HTTP endpoint's document (:func:`gateway.triton.model_config`,
    the JSON form of the same message)."""
    return json_format.ParseDict({"config": doc}, message("ModelConfigResponse"))


def model_statistics(doc: dict[str, Any]) -> Any:
    """Build a ``ModelStatisticsResponse`` from the HTTP endpoint's document
    (:func:`gateway.triton.model_stats`, the JSON form of the same message)."""
    return json_format.ParseDict(doc, message("ModelStatisticsResponse"))
