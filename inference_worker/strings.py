"""BYTES tensors as Triton's binary extension lays them out: each element a 4-byte little-endian length, then
its bytes; no torch, no I/O.

The same layout travels on torchgate's own wire (one frame per tensor, as for every other datatype), so a
BYTES tensor crosses the gateway, the dispatcher and the worker without being re-encoded, and never as pickle.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

_LENGTH = struct.Struct("<I")


class StringsError(ValueError):
    """A BYTES tensor that is malformed or over a limit; the message says which and by how much."""


@dataclass(frozen=True, slots=True)
class StringLimits:
    """How many BYTES elements one tensor may hold, and how long each may be."""

    max_elements: int = 1 << 16
    max_element_bytes: int = 16 << 20


DEFAULT_LIMITS = StringLimits()


def serialize(elements: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Return the elements as one buffer: each a 4-byte little-endian length, then its bytes."""
    parts: list[bytes | bytearray | memoryview] = []
    for element in elements:
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def spans(
    buf: bytes | memoryview, count: int, limits: StringLimits = DEFAULT_LIMITS, name: str = "tensor"
) -> list[tuple[int, int]]:
    """Return ``(start, end)`` of each of ``count`` elements in ``buf``, checking that they fill it
    exactly."""
    if count > limits.max_elements:
        raise StringsError(
            f"{name}: BYTES tensor of {count} elements exceeds the limit of {limits.max_elements}"
        )
    view = memoryview(buf)
    total, offset, out = len(view), 0, []
    for index in range(count):
        if offset + 4 > total:
            raise StringsError(
                f"{name}: BYTES data ends after {index} of {count} elements "
                f"(each element is a 4-byte little-endian length, then its bytes)"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        if length > limits.max_element_bytes:
            raise StringsError(
                f"{name}: BYTES element {index} is {length} bytes, more than the limit of "
                f"{limits.max_element_bytes}"
            )
        start = offset + 4
        if start + length > total:
            raise StringsError(
                f"{name}: BYTES element {index} says {length} bytes but only {total - start} remain"
            )
        out.append((start, start + length))
        offset = start + length
    if offset != total:
        raise StringsError(
            f"{name}: {total - offset} bytes follow the {count} BYTES elements its shape holds"
        )
    return out


def deserialize(
    buf: bytes | memoryview, count: int, limits: StringLimits = DEFAULT_LIMITS, name: str = "tensor"
) -> list[bytes]:
    """Return the ``count`` elements of ``buf`` as bytes, checking the layout and the limits."""
    view = memoryview(buf)
    return [bytes(view[a:b]) for a, b in spans(view, count, limits, name)]


def to_array(elements: list[bytes], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """Return the elements as an ``np.object_`` array of ``bytes`` shaped ``shape`` (as tritonclient does)."""
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def from_json(name: str, data: Any, limits: StringLimits = DEFAULT_LIMITS) -> list[bytes]:
    """Return the UTF-8 bytes of JSON ``data`` (strings, nested or flat), refusing anything else."""
    flat: list[bytes] = []

    def walk(value: Any, depth: int) -> None:
        if isinstance(value, str):
            if len(flat) >= limits.max_elements:
                raise StringsError(
                    f"input {name!r}: BYTES data holds more than the limit of {limits.max_elements} elements"
                )
            encoded = value.encode("utf-8", "surrogatepass")
            if len(encoded) > limits.max_element_bytes:
                raise StringsError(
                    f"input {name!r}: BYTES element {len(flat)} is {len(encoded)} bytes, more than the "
                    f"limit of {limits.max_element_bytes}"
                )
            flat.append(encoded)
        elif isinstance(value, list) and depth < 32:
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, list):
            raise StringsError(f"input {name!r}: BYTES data is nested too deeply")
        else:
            raise StringsError(
                f"input {name!r}: BYTES data must be strings, got {type(value).__name__} "
                "(send other bytes as binary data: parameters.binary_data_size)"
            )

    walk(data, 0)
    return flat
