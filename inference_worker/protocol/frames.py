"""The torchgate wire's framing: versioned msgpack headers with tensor bytes in frames of their own.

A message is a list of ZeroMQ frames: ``[header, *tensor_frames]``. The header is a msgpack map with
``v`` (the protocol version), ``kind`` (one of :class:`Kind`) and the named fields of that kind (see
:mod:`inference_worker.protocol.messages`). Each tensor the header describes (in ``inputs`` or ``outputs``:
``{name, datatype, shape}``) owns exactly one frame, in order, holding its bytes little-endian and row-major,
so
large tensors cross without being copied into the header. Nothing here imports torch or zmq, and nothing is
ever unpickled.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from inference_worker import strings

VERSION = 1

# Limits checked before anything is allocated for a received message.
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 64
MAX_DIMS = 16
MAX_TENSOR_BYTES = 1 << 31  # 2 GiB per tensor
MAX_NAME_LENGTH = 256
# BYTES on the wire: as many elements as a tensor may hold, each as long as a whole tensor may be.
STRING_LIMITS = strings.StringLimits(max_elements=1 << 20, max_element_bytes=MAX_TENSOR_BYTES)

# Open Inference Protocol datatype -> bytes per element, for the datatypes of fixed size.
DATATYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
}
# BYTES: variable-length elements, each a 4-byte little-endian length then its bytes (see strings.py).
BYTES = "BYTES"
DATATYPES: frozenset[str] = frozenset({*DATATYPE_SIZES, BYTES})


class Kind(enum.StrEnum):
    REQUEST = "REQUEST"
    REPLY = "REPLY"
    ERROR = "ERROR"
    READY = "READY"
    HEARTBEAT = "HEARTBEAT"
    DRAIN = "DRAIN"
    DISCONNECT = "DISCONNECT"
    QUERY = "QUERY"
    QUERY_REPLY = "QUERY_REPLY"
    STATUS = "STATUS"
    STATUS_REPLY = "STATUS_REPLY"
    CONTROL = "CONTROL"
    CONTROL_REPLY = "CONTROL_REPLY"
    CANCEL = "CANCEL"


KINDS: dict[str, Kind] = {kind.value: kind for kind in Kind}  # a lookup costs less than calling the enum


class ErrorCode(enum.StrEnum):
    """Why a request failed; the gateway maps each to one HTTP status."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # 400
    NOT_FOUND = "NOT_FOUND"  # 404
    UNAVAILABLE = "UNAVAILABLE"  # 503: no ready worker, queue full, worker gone
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # 504
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # 507-ish; mapped to 500 with a clear message
    INTERNAL = "INTERNAL"  # 500
    DECLINED = "DECLINED"  # a worker did not take a direct request: the gateway sends it to the dispatcher
    CANCELLED = "CANCELLED"  # 499: its client went away before it ran (nobody reads the answer)


class ProtocolError(ValueError):
    """A message that does not follow this protocol. Answer or drop it; never crash on it."""


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """What a tensor frame holds: its name, datatype and shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes the frame holds; for BYTES, the least it can hold (a 4-byte length per element)."""
        return DATATYPE_SIZES.get(self.datatype, 4) * math.prod(self.shape)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(slots=True)
class Message:
    """One decoded message: its kind, its header fields and its tensor frames, paired with their meta."""

    kind: Kind
    fields: dict[str, Any]
    tensors: list[tuple[TensorMeta, memoryview]]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def tensor_meta(raw: Any, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> TensorMeta:
    """Check one ``{name, datatype, shape}`` map and return it as a :class:`TensorMeta`."""
    if not isinstance(raw, dict):
        raise ProtocolError("tensor description must be a map")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ProtocolError(f"tensor name must be a string of 1..{MAX_NAME_LENGTH} characters")
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list here is unhashable
        raise ProtocolError(f"tensor {name!r}: unknown datatype {datatype!r}")
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
        raise ProtocolError(f"tensor {name!r}: shape must be a list of at most {MAX_DIMS} dims")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"tensor {name!r}: every dim must be a non-negative integer")
    meta = TensorMeta(name, datatype, tuple(shape))
    if meta.nbytes > max_tensor_bytes:
        raise ProtocolError(f"tensor {name!r}: {meta.nbytes} bytes exceeds the limit of {max_tensor_bytes}")
    return meta


def encode(
    kind: Kind,
    fields: dict[str, Any] | None = None,
    tensors: Sequence[tuple[TensorMeta, Any]] = (),
    tensor_key: str = "inputs",
) -> list[Any]:
    """Build the frames of one message; tensor buffers are passed through untouched (no copy)."""
    header: dict[str, Any] = {"v": VERSION, "kind": kind.value}
    if fields:
        header.update(fields)
    if tensors:
        header[tensor_key] = [meta.to_wire() for meta, _ in tensors]
    return [msgpack.packb(header, use_bin_type=True), *(buf for _, buf in tensors)]


def decode(frames: Sequence[Any], max_tensor_bytes: int = MAX_TENSOR_BYTES) -> Message:
    """Parse and check the frames of one message; raise :class:`ProtocolError` on anything malformed."""
    if not frames:
        raise ProtocolError("empty message")
    header_buf = _buffer(frames[0])
    if len(header_buf) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header_buf)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(header_buf, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a map")
    if header.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {header.get('v')!r}, expected {VERSION}")
    raw_kind = header.get("kind")
    kind = KINDS.get(raw_kind) if isinstance(raw_kind, str) else None
    if kind is None:
        raise ProtocolError(f"unknown message kind {raw_kind!r}")
    key = "outputs" if kind is Kind.REPLY else "inputs"
    raw_tensors = header.get(key, [])
    if not isinstance(raw_tensors, list) or len(raw_tensors) > MAX_TENSORS:
        raise ProtocolError(f"{key} must be a list of at most {MAX_TENSORS} tensors")
    if len(raw_tensors) != len(frames) - 1:
        raise ProtocolError(
            f"header describes {len(raw_tensors)} tensors but {len(frames) - 1} frames follow"
        )
    tensors = []
    for raw, frame in zip(raw_tensors, frames[1:], strict=True):
        meta = tensor_meta(raw, max_tensor_bytes)
        buf = _buffer(frame)
        if meta.datatype == BYTES:
            _check_strings(meta, buf, max_tensor_bytes)
        elif len(buf) != meta.nbytes:
            raise ProtocolError(
                f"tensor {meta.name!r}: frame holds {len(buf)} bytes, shape and datatype need {meta.nbytes}"
            )
        tensors.append((meta, buf))
    return Message(kind, header, tensors)


def _check_strings(meta: TensorMeta, buf: memoryview, max_tensor_bytes: int) -> None:
    if len(buf) > max_tensor_bytes:
        raise ProtocolError(f"tensor {meta.name!r}: {len(buf)} bytes exceeds the limit of {max_tensor_bytes}")
    try:
        strings.spans(buf, math.prod(meta.shape), STRING_LIMITS, f"tensor {meta.name!r}")
    except strings.StringsError as exc:
        raise ProtocolError(str(exc)) from None


def header_id(frames: Sequence[Any]) -> str | None:
    """Return the ``id`` field of a message that failed to decode, if its header can be read at all."""
    try:
        header = msgpack.unpackb(_buffer(frames[0]), raw=False, max_bin_len=0, max_ext_len=0)
    except Exception:  # anything unreadable (or no frame at all) has no id to answer
        return None
    value = header.get("id") if isinstance(header, dict) else None
    return value if isinstance(value, str) else None


def _buffer(frame: Any) -> memoryview:
    """Return a flat byte view of a frame (bytes, zmq.Frame or any buffer) without copying."""
    buf = getattr(frame, "buffer", frame)
    try:
        view = memoryview(buf)
    except TypeError:
        raise ProtocolError(f"frame of type {type(frame).__name__} is not a buffer") from None
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def require(fields: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``fields[key]`` if it has the expected type, else raise :class:`ProtocolError`."""
    value = fields.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(f"field {key!r} must be {expected}, got {type(value).__name__}")
    return value
