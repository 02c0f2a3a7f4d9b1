"""Open Inference Protocol v2 bodies <-> tensors, JSON and Triton's binary extension; no I/O, no Flask.

Decisions a client may rely on:

- JSON numbers go through numpy; FP16 and BF16 travel only as binary data, in both directions.
- Integer and BOOL tensors need JSON integers and booleans; FP32/FP64 take any JSON number. The literals
  ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's json module writes) are accepted for floating-point
  tensors, and written back the same way in JSON outputs.
- Nested and flat ``data`` are both accepted when the element count matches the shape; ragged data is not.
- A body may be gzip or deflate encoded; decoding stops at the body limit (413), so a zip bomb costs nothing.
- BYTES tensors are strings in JSON (UTF-8; nested or flat) and, as binary data, Triton's layout: each element
a
  4-byte little-endian length, then its bytes. Their element count and element size are limited
  (:class:`~inference_worker.strings.StringLimits`). A BYTES output goes back as JSON strings when it is
  UTF-8; other bytes need ``binary_data``.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import orjson

from gateway.errors import InvalidArgument, PayloadTooLarge
from inference_worker import strings
from inference_worker.errors import CodedError
from inference_worker.protocol import (
    BYTES,
    DATATYPE_SIZES,
    DATATYPES,
    MAX_DIMS,
    MAX_NAME_LENGTH,
    MAX_PARAMETERS,
    MAX_TENSORS,
    ErrorCode,
    Parameters,
    parameter_problem,
)
from inference_worker.strings import DEFAULT_LIMITS, StringLimits, StringsError

MAX_ID_LENGTH = 256
MAX_GZIP_MEMBERS = 16  # each member's end copies the rest of the body (zlib's unused_data): keep it linear
MAX_HEADER_DIGITS = 20  # an Inference-Header-Content-Length this long fits no body (int() refuses 4300)
MAX_JSON_VALUES = 2 << 20  # values one JSON body may hold (GatewayConfig.max_json_values)
MAX_UINT64 = (1 << 64) - 1  # Triton's timeout and priority are uint64
JSON_UNSUPPORTED = frozenset({"FP16", "BF16"})  # binary only, as in Triton
# Triton's: a stream's request asks for ``triton_final_response`` on its answers (gateway.grpc_server)
FINAL_FLAG_PARAMETER = "triton_enable_empty_final_response"
RESERVED_PARAMETERS = frozenset(  # read here, not passed on
    {"timeout", "priority", "binary_data_output", FINAL_FLAG_PARAMETER}
)
SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

# Little-endian numpy dtypes of every datatype numpy can hold (BF16 has none).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_FLOAT_KINDS = frozenset("iuf")
_INT_KINDS = frozenset("iu")


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor of a request or a reply: its bytes are little-endian and row-major."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes | memoryview

    @property
    def nbytes(self) -> int:
        if self.datatype == BYTES:
            return len(self.data)
        return DATATYPE_SIZES[self.datatype] * math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class RegionSlice:
    """Where a tensor lies in a client's registered system shared-memory region (Triton's shared-memory
    extension, :mod:`gateway.client_shm`): ``byte_size`` bytes from ``offset``."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` None follows the request's ``binary_data_output``;
    ``classification`` > 0 asks for its top classes instead of its values (:mod:`gateway.classification`);
    ``region``: written there instead of into the response."""

    name: str
    binary: bool | None = None
    classification: int = 0
    region: RegionSlice | None = None


@dataclass(slots=True)
class InferRequest:
    """A parsed infer request, not yet checked against a model (see :mod:`gateway.validation`)."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    timeout_us: int | None = None
    priority: int = 0
    binary_data_output: bool = False
    raw: bytes | memoryview | None = None  # the whole body of a raw binary request (header length 0)
    parameters: Parameters = field(default_factory=dict)  # the others, for the model's handler
    # inputs (by index) whose bytes are still in a client's shared-memory region (gateway.client_shm)
    in_regions: dict[int, RegionSlice] = field(default_factory=dict)


# -- bodies ----------------------------------------------------------------------------------------------


@overload
def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes: ...
@overload
def decode_content(body: bytes | bytearray, encoding: str | None, limit: int) -> bytes | bytearray: ...
@overload
def decode_content(
    body: bytes | bytearray | memoryview, encoding: str | None, limit: int
) -> bytes | bytearray | memoryview: ...
def decode_content(
    body: bytes | bytearray | memoryview, encoding: str | None, limit: int
) -> bytes | bytearray | memoryview:
    """Undo a ``Content-Encoding`` of gzip or deflate, refusing more than ``limit`` decoded bytes."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":  # zlib-wrapped as HTTP says, but some clients send raw deflate
        zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    else:
        raise InvalidArgument(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    parts: list[bytes] = []
    size, rest = 0, memoryview(body)
    while True:  # gzip: one member after another, as gzip -d reads them (RFC 1952 2.2)
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(rest, limit + 1 - size)
        except zlib.error:
            raise InvalidArgument(f"request body is not valid {enc} data") from None
        size += len(out)
        if size > limit:
            raise PayloadTooLarge(f"decoded request body exceeds the limit of {limit} bytes")
        parts.append(out)
        if not decoder.eof:
            raise InvalidArgument(f"request body is truncated {enc} data")
        rest = rest[len(rest) - len(decoder.unused_data) :]
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if enc == "deflate":
            raise InvalidArgument(f"request body has {len(rest)} bytes after its {enc} data")
        if len(parts) >= MAX_GZIP_MEMBERS:
            raise InvalidArgument(f"request body has more than {MAX_GZIP_MEMBERS} gzip members")


def header_length_value(value: str | None) -> int | None:
    """Return an ``Inference-Header-Content-Length`` as a number, or None when it is not one (ASCII digits,
    at most :data:`MAX_HEADER_DIGITS` of them once leading zeros are dropped); :func:`parse_infer_request`
    says why."""
    if not value or not (value.isascii() and value.isdigit()) or len(value.lstrip("0")) > MAX_HEADER_DIGITS:
        return None
    return int(value)


def json_values_bound(text: bytes | bytearray, start: int = 0, end: int | None = None) -> int:
    """Return an upper bound on how many values the JSON in ``text[start:end]`` holds, without parsing it.

    Every value but the first follows a ``,``, ``:``, ``[`` or ``{`` (one inside a string counts too: the
    bound only errs high). Parsed, each value costs 24 to 70 bytes of Python objects whatever its text's
    length: 60 MB of ``{},`` took the gateway to 1.86 GiB.
    """
    end = len(text) if end is None else end
    return sum(text.count(c, start, end) for c in (b",", b":", b"[", b"{")) + 1


def check_json_values(
    text: bytes | bytearray, max_values: int, start: int = 0, end: int | None = None
) -> None:
    """Refuse (413) JSON that could hold more than ``max_values`` values, before any is built."""
    if (len(text) if end is None else end) - start <= max_values:
        return  # fewer bytes than values allowed: nothing to count
    count = json_values_bound(text, start, end)
    if count > max_values:
        raise PayloadTooLarge(
            f"request JSON may hold {count} values, more than the limit of {max_values}; "
            "send large tensors as binary data (parameters.binary_data_size)"
        )


def loads(text: bytes | bytearray | memoryview, max_values: int = MAX_JSON_VALUES) -> Any:
    """Parse JSON; ``NaN`` and ``Infinity`` literals are allowed, nesting is bounded (a 400, not a crash).

    At most ``max_values`` values are built (413 beyond: see :func:`check_json_values`).
    """
    if isinstance(text, bytes | bytearray):
        check_json_values(text, max_values)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # orjson refuses NaN/Infinity literals and nesting past 1024: let the standard parser decide
    try:
        return json.loads(bytes(text), parse_float=_finite)
    except RecursionError:
        raise InvalidArgument("request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None


def _finite(literal: str) -> float:
    """Read a JSON number with a fraction or an exponent; one past a double's range (``1e400``) is refused
    rather than read as infinity (only the literal ``Infinity`` is one)."""
    value = float(literal)
    if math.isinf(value):
        raise InvalidArgument(f"number {literal[:40]} is beyond the range of a double")
    return value


def parse_infer_request(
    body: bytes | bytearray | memoryview,  # memoryview: received into a shared-memory segment
    header_length: str | None,
    header_id: str | None = None,
    limits: StringLimits = DEFAULT_LIMITS,
    max_values: int = MAX_JSON_VALUES,
) -> InferRequest:
    """Parse an infer request body: JSON, JSON + binary tensors, or a raw binary tensor (header length 0)."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        if not (header_length.isascii() and header_length.isdigit()):  # int() would take "+1", " 1", "1_0"
            raise InvalidArgument(f"Inference-Header-Content-Length {header_length!r} is not an integer")
        length = header_length_value(header_length)  # None: too many digits for any body
        if length is None or length > len(view):
            cut = header_length[:40] + "..." * (len(header_length) > 40)
            shown = str(length) if length is not None else cut
            raise InvalidArgument(
                f"Inference-Header-Content-Length {shown} does not fit a body of {len(view)} bytes"
            )
        if length == 0:
            return InferRequest(id=header_id, inputs=[], binary_data_output=True, raw=view)
        header, binary = view[:length], view[length:]
    check_json_values(bytes(header) if isinstance(body, memoryview) else body, max_values, 0, len(header))
    doc = loads(header, max_values)
    if not isinstance(doc, dict):
        raise InvalidArgument("infer request must be a JSON object")
    request_id = doc.get("id", header_id)
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH):
        raise InvalidArgument(f"'id' must be a string of at most {MAX_ID_LENGTH} characters")
    params = _parameters(doc.get("parameters"), "request")
    timeout = params.get("timeout")
    if timeout is not None and (type(timeout) is not int or not 0 <= timeout <= MAX_UINT64):
        raise InvalidArgument(
            "parameter 'timeout' must be a non-negative integer (microseconds) of at most 2^64-1"
        )
    priority = params.get("priority", 0)
    if type(priority) is not int or not 0 <= priority <= MAX_UINT64:
        raise InvalidArgument("parameter 'priority' must be a non-negative integer of at most 2^64-1")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidArgument("parameter 'binary_data_output' must be true or false")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs or len(raw_inputs) > MAX_TENSORS:
        raise InvalidArgument(f"'inputs' must be a list of 1 to {MAX_TENSORS} tensors")
    inputs, offset, in_regions = [], 0, {}
    for i, raw in enumerate(raw_inputs):
        tensor, used, where = _input(raw, i, binary, offset, limits)
        if where is not None:
            in_regions[i] = where
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidArgument(
            f"the inputs' binary_data_size add up to {offset} bytes but {len(binary)} bytes "
            "of binary data follow the JSON header"
        )
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_requested_outputs(doc.get("outputs")),
        timeout_us=timeout,
        priority=priority,
        binary_data_output=binary_output,
        parameters=handler_parameters(params, RESERVED_PARAMETERS),
        in_regions=in_regions,
    )


def region_slice(params: dict[str, Any], where: str) -> RegionSlice | None:
    """Return where a tensor's shared-memory parameters place it, None without them, or raise (400)."""
    if not any(key in params for key in SHARED_MEMORY_PARAMETERS):
        return None
    region, size = params.get("shared_memory_region"), params.get("shared_memory_byte_size")
    offset = params.get("shared_memory_offset", 0)
    if region is None or size is None:
        raise InvalidArgument(
            f"{where}: shared memory needs both 'shared_memory_region' and 'shared_memory_byte_size'"
        )
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{where}: 'shared_memory_region' must be a region's name")
    for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
        if type(value) is not int or not 0 <= value <= MAX_UINT64:
            raise InvalidArgument(f"{where}: '{key}' must be a non-negative integer")
    return RegionSlice(region, size, offset)


def handler_parameters(raw: dict[str, Any], reserved: frozenset[str] = frozenset()) -> Parameters:
    """Return the parameters a request passes on to its model's handler (all but ``reserved``), or raise
    (400) naming one that cannot travel: a value that is not a string, a number or a boolean, say."""
    chosen = {name: value for name, value in raw.items() if name not in reserved}
    if len(chosen) > MAX_PARAMETERS:
        raise InvalidArgument(f"a request may have at most {MAX_PARAMETERS} parameters, not {len(chosen)}")
    for name, value in chosen.items():
        if (why := parameter_problem(name, value)) is not None:
            raise InvalidArgument(why)
    return chosen


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} 'parameters' must be a JSON object")
    return raw


def _requested_outputs(raw: Any) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
        raise InvalidArgument(f"'outputs' must be a list of at most {MAX_TENSORS} outputs")
    outputs = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidArgument(f"outputs[{i}] must be a JSON object with a 'name'")
        where = f"output {entry['name']!r}"
        params = _parameters(entry.get("parameters"), where)
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidArgument(f"{where}: parameter 'binary_data' must be true or false")
        classes = params.get("classification", 0)
        if type(classes) is not int or not 0 <= classes <= MAX_UINT64:
            raise InvalidArgument(
                f"output {entry['name']!r}: parameter 'classification' must be a non-negative integer "
                "(the number of classes to return)"
            )
        region = region_slice(params, where)
        if region is not None and (binary or classes):
            raise InvalidArgument(
                f"{where}: an output in shared memory ('shared_memory_region') cannot also be "
                + ("'binary_data'" if binary else "'classification'")
            )
        outputs.append(RequestedOutput(entry["name"], binary, classes, region))
    return outputs


def _input(
    raw: Any, index: int, binary: memoryview, offset: int, limits: StringLimits = DEFAULT_LIMITS
) -> tuple[Tensor, int, RegionSlice | None]:
    """Parse ``inputs[index]``; return the tensor, how many binary bytes it took and, for one whose bytes
    are in a client's shared-memory region (:mod:`gateway.client_shm`), where (its data then empty)."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"inputs[{index}] must be a JSON object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise InvalidArgument(f"inputs[{index}].name must be a string of 1 to {MAX_NAME_LENGTH} characters")
    if datatype not in DATATYPES:
        supported = ", ".join([*DATATYPE_SIZES, BYTES])
        raise InvalidArgument(
            f"input {name!r}: datatype {datatype!r} is not supported; expected one of {supported}"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise InvalidArgument(
            f"input {name!r}: shape must be a list of at most {MAX_DIMS} non-negative integers"
        )
    shape_t = tuple(shape)
    params = _parameters(raw.get("parameters"), f"input {name!r}")
    where = region_slice(params, f"input {name!r}")
    if where is not None:
        if "data" in raw or "binary_data_size" in params:
            raise InvalidArgument(
                f"input {name!r}: set only one of 'data', 'binary_data_size' and 'shared_memory_region'"
            )
        return Tensor(name, datatype, shape_t, b""), 0, where
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidArgument(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in raw:
            raise InvalidArgument(f"input {name!r}: has both 'data' and binary_data_size")
        if size and not len(binary) and offset == 0:
            raise InvalidArgument(
                f"input {name!r}: binary_data_size {size} but no binary data follows the JSON "
                "(send the Inference-Header-Content-Length header)"
            )
        if offset + size > len(binary):
            raise InvalidArgument(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)"
            )
        return Tensor(name, datatype, shape_t, binary[offset : offset + size]), size, None
    if "data" not in raw:
        raise InvalidArgument(f"input {name!r}: needs 'data' or parameters.binary_data_size")
    if datatype in JSON_UNSUPPORTED:
        raise InvalidArgument(
            f"input {name!r}: {datatype} data must be sent as binary (binary_data_size), not JSON"
        )
    if datatype == BYTES:
        return Tensor(name, datatype, shape_t, strings_to_bytes(name, shape_t, raw["data"], limits)), 0, None
    return Tensor(name, datatype, shape_t, json_to_bytes(name, datatype, shape_t, raw["data"])), 0, None


def strings_to_bytes(name: str, shape: tuple[int, ...], data: Any, limits: StringLimits) -> bytes:
    """Turn JSON strings (nested or flat) into a BYTES tensor's serialized bytes, checking the count."""
    try:
        elements = strings.from_json(name, data, limits)
    except StringsError as exc:
        raise InvalidArgument(str(exc)) from None
    count = math.prod(shape)
    if len(elements) != count:
        raise InvalidArgument(
            f"input {name!r}: data holds {len(elements)} strings, shape {list(shape)} needs {count}"
        )
    return strings.serialize(element for element in elements)


def json_to_bytes(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> bytes:
    """Turn JSON ``data`` (nested or flat) into the tensor's little-endian bytes, checking kind and count."""
    array = json_array(name, datatype, data)
    count = math.prod(shape)
    if array.size != count:
        raise InvalidArgument(
            f"input {name!r}: data holds {array.size} elements, shape {list(shape)} needs {count}"
        )
    return array.tobytes()


def json_array(name: str, datatype: str, data: Any) -> np.ndarray[Any, Any]:
    """Turn JSON numbers into a numpy array of ``datatype`` (BF16 as its uint16 bits), refusing wrong
    kinds."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise InvalidArgument(f"input {name!r}: data is ragged or nested too deeply for a tensor") from None
    kind = array.dtype.kind
    if array.size == 0:
        kind = "b" if datatype == "BOOL" else "i"
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidArgument(f"input {name!r}: BOOL data must be true/false, got {_kind_name(kind)}")
        return array.astype(np.bool_, copy=False)
    if datatype in ("FP16", "BF16", "FP32", "FP64"):
        if kind not in _FLOAT_KINDS:
            raise InvalidArgument(f"input {name!r}: {datatype} data must be numbers, got {_kind_name(kind)}")
        if datatype == "BF16":
            return _to_bf16_bits(array.astype(np.float32))
        target = NUMPY_DTYPES[datatype]
        if datatype != "FP64" and array.size and kind == "f" and _past(array, np.finfo(target).max):
            raise InvalidArgument(f"input {name!r}: a value is out of the range of {datatype}")
        return array.astype(target, copy=False)
    target = NUMPY_DTYPES[datatype]
    if kind == "f" and (exact := _python_ints(data)) is not None:
        # numpy reads [0, 2**64 - 1] (an int64 and a uint64) as float64: these are integers all the same
        info = np.iinfo(target)
        if any(not info.min <= value <= info.max for value in exact.flat):
            raise InvalidArgument(f"input {name!r}: a value is out of the range of {datatype}")
        return exact.astype(target)
    if kind not in _INT_KINDS:
        raise InvalidArgument(f"input {name!r}: {datatype} data must be integers, got {_kind_name(kind)}")
    if array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidArgument(f"input {name!r}: a value is out of the range of {datatype}")
    return array.astype(target, copy=False)


def _python_ints(data: Any) -> np.ndarray[Any, Any] | None:
    """Return ``data`` as an object array of its Python integers, or None if any element is not one."""
    exact = np.asarray(data, dtype=object)
    return exact if all(type(value) is int for value in exact.flat) else None


def _past(array: np.ndarray[Any, Any], limit: float) -> bool:
    """Whether a finite value of ``array`` is beyond ``limit`` in magnitude (NaN and infinities pass)."""
    peak = np.abs(array).max()  # one pass; only data holding NaN or an infinity needs the second
    if np.isfinite(peak):
        return bool(peak > limit)
    finite = array[np.isfinite(array)]
    return bool(finite.size and np.abs(finite).max() > limit)


def _kind_name(kind: str) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "floating-point numbers",
        "U": "strings",
        "S": "strings",
        "O": "mixed or non-numeric values",
    }.get(kind, "non-numeric values")


def _to_bf16_bits(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Round float32 values to bfloat16 (to nearest even) and return their bits as little-endian uint16."""
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(array)
    out = rounded.astype("<u2")
    out[nan] = 0x7FC0
    return out


def tensor_array(datatype: str, data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """View a tensor's bytes as a numpy array; BF16 is widened to float32."""
    if datatype == "BF16":
        bits = np.frombuffer(data, dtype="<u2").astype("<u4") << 16
        return bits.view("<f4").reshape(shape)
    return np.frombuffer(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


# -- responses -------------------------------------------------------------------------------------------

LARGE_OUTPUTS = 64 * 1024  # binary outputs past this are sent as they are, after the header
Placement = bool | RegionSlice  # how an output goes back: binary data (True), JSON (False), or in a region


@dataclass(frozen=True, slots=True)
class Body:
    """An HTTP response body with its content type and extra headers; a large binary one is its parts,
    written one after the other (never joined: a copy of every output byte)."""

    data: bytes | list[bytes]
    content_type: str
    headers: dict[str, str]

    def whole(self) -> bytes:
        """Return the body as one ``bytes`` (joined if in parts)."""
        return self.data if isinstance(self.data, bytes) else b"".join(self.data)


def infer_response(
    model: str, version: str | None, request_id: str | None, outputs: list[tuple[Tensor, Placement]]
) -> Body:
    """Build an infer response: each ``(tensor, placement)`` as JSON data, as binary data after the header,
    or (a :class:`RegionSlice`) written to a shared-memory region: its name, datatype and shape only, as
    Triton answers (Triton's C++ client, perf_analyzer's, refuses an output's ``parameters`` without
    ``binary_data_size``)."""
    doc: dict[str, Any] = {"model_name": model}
    if version:
        doc["model_version"] = version
    if request_id is not None:
        doc["id"] = request_id
    entries, blobs, finite = [], [], True
    for tensor, binary in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if isinstance(binary, RegionSlice):
            pass  # its data is in the region
        elif binary:
            entry["parameters"] = {"binary_data_size": len(tensor.data)}
            blobs.append(tensor.data)
        elif tensor.datatype == BYTES:
            entry["data"] = output_strings(tensor)
        else:
            data = np.frombuffer(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype])
            if data.dtype.kind == "f" and finite:
                finite = bool(np.isfinite(data).all())
            entry["data"] = data
        entries.append(entry)
    doc["outputs"] = entries
    header = dumps(doc) if finite else _dumps_non_finite(doc)
    if not blobs:
        return Body(header, "application/json", {})
    parts: bytes | list[bytes]
    if sum(len(b) for b in blobs) < LARGE_OUTPUTS:
        parts = b"".join([header, *blobs])
    else:  # the WSGI server writes bytes: a view (a frame) is copied once, bytes (out of a segment) never
        parts = [header, *(b if isinstance(b, bytes) else bytes(b) for b in blobs)]
    return Body(
        parts,
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(len(header))},
    )


def response_encoding(accept_encoding: str | None) -> str | None:
    """Return ``gzip`` or ``deflate``, whichever ``Accept-Encoding`` names first (and does not refuse with
    ``q=0``), as Triton picks the encoding of an infer response; None: send it as it is."""
    for item in (accept_encoding or "").split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if name in ("gzip", "deflate"):
            quality = params.strip().lower().replace(" ", "")
            if quality.startswith("q=") and quality[2:].rstrip("0").rstrip(".") in ("0", ""):
                continue
            return name
    return None


def encode_body(body: Body, encoding: str) -> Body:
    """Return ``body`` compressed with ``encoding`` (gzip, or deflate in zlib's wrapping as HTTP means it);
    ``Inference-Header-Content-Length`` still counts the uncompressed JSON header, as Triton sends it.

    A body with large binary outputs (past :data:`LARGE_OUTPUTS`) is left as it is, which HTTP allows:
    tensor bytes barely compress (random float32 by 10%) and cost the gateway ~30 ms of CPU per MiB.
    """
    parts = body.data if isinstance(body.data, list) else [body.data]
    if "Inference-Header-Content-Length" in body.headers and sum(len(p) for p in parts) > LARGE_OUTPUTS:
        return body
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    encoder = zlib.compressobj(6, zlib.DEFLATED, wbits)
    data = b"".join([*(encoder.compress(part) for part in parts), encoder.flush()])
    return Body(data, body.content_type, {**body.headers, "Content-Encoding": encoding})


def output_strings(tensor: Tensor) -> list[str]:
    """Return a BYTES output's elements as JSON strings; bytes that are not UTF-8 need binary data (400)."""
    count = math.prod(tensor.shape)
    try:
        elements = strings.deserialize(tensor.data, count, strings.StringLimits(count, len(tensor.data)))
    except StringsError as exc:  # the worker's reply was checked on the wire; this would be a bug
        raise CodedError(ErrorCode.INTERNAL, f"output {tensor.name!r}: {exc}") from None
    try:
        return [element.decode("utf-8") for element in elements]
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"output {tensor.name!r} holds bytes that are not UTF-8, which JSON cannot carry: "
            "request it as binary data (parameters.binary_data true)"
        ) from None


def dumps(doc: Any) -> bytes:
    """Serialize a JSON document (numpy arrays allowed)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def dumps_values(doc: Any) -> bytes:
    """Serialize like :func:`dumps`, but write NaN and infinities as the ``NaN`` and ``Infinity`` literals
    (as Python's json module and Flask's ``jsonify`` do) rather than orjson's ``null``."""
    return _dumps_non_finite(doc) if _non_finite(doc) else dumps(doc)


def _non_finite(value: Any) -> bool:
    if isinstance(value, np.ndarray | np.floating):
        return value.dtype.kind == "f" and not bool(np.isfinite(value).all())
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def _dumps_non_finite(doc: Any) -> bytes:
    """Serialize with the ``NaN`` and ``Infinity`` literals requests may use (orjson would write null)."""

    def plain(value: Any) -> Any:
        return value.tolist() if isinstance(value, np.ndarray | np.generic) else value

    return json.dumps(doc, default=plain, separators=(",", ":")).encode()
