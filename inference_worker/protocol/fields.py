"""What every message kind shares: the links, the tensors, and the checks that read one header field."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from inference_worker.protocol.frames import (
    MAX_NAME_LENGTH,
    ErrorCode,
    Kind,
    ProtocolError,
    TensorMeta,
    encode,
)

Tensors = Sequence[tuple[TensorMeta, Any]]  # each tensor's meta and its frame (any buffer)
Parameters = dict[str, str | int | float | bool]  # a request's parameters, for its model's handler
MAX_PARAMETERS = 64
MAX_PARAMETER_TEXT = 16 << 10  # characters of a string parameter


class Link(enum.StrEnum):
    """Which way a message travels."""

    GATEWAY_TO_DISPATCHER = "gateway -> dispatcher"
    DISPATCHER_TO_GATEWAY = "dispatcher -> gateway"
    WORKER_TO_DISPATCHER = "worker -> dispatcher"
    DISPATCHER_TO_WORKER = "dispatcher -> worker"
    GATEWAY_TO_WORKER = "gateway -> worker (direct lane)"
    WORKER_TO_GATEWAY = "worker -> gateway (direct lane)"


def _text(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    return "" if value is None else str(value)


def _optional_text(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def _number(fields: dict[str, Any], key: str) -> float | None:
    value = fields.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(fields: dict[str, Any], key: str, default: int = 0) -> int:
    value = fields.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _names(fields: dict[str, Any], key: str) -> tuple[str, ...]:
    value = fields.get(key) or []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"field {key!r} must be a list of names")
    return tuple(value)


def _code(fields: dict[str, Any]) -> ErrorCode:
    value = fields.get("code")
    return (
        ErrorCode(value) if isinstance(value, str) and value in ErrorCode.__members__ else ErrorCode.INTERNAL
    )


def _map(fields: dict[str, Any], key: str) -> dict[str, Any]:
    value = fields.get(key)
    return value if isinstance(value, dict) else {}


def parameter_problem(name: Any, value: Any) -> str | None:
    """Say why one request parameter cannot travel to a handler; None when it can."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return f"parameter names must be strings of 1 to {MAX_NAME_LENGTH} characters"
    if isinstance(value, bool | float):
        return None
    if isinstance(value, int):
        return None if -(1 << 63) <= value < 1 << 64 else f"parameter {name!r}: integer out of range"
    if isinstance(value, str):
        if len(value) > MAX_PARAMETER_TEXT:
            return f"parameter {name!r}: longer than {MAX_PARAMETER_TEXT} characters"
        return None
    return f"parameter {name!r} must be a string, a number or a boolean"


def _parameters(fields: dict[str, Any], key: str = "parameters") -> Parameters:
    """Read a request's parameters; entries a gateway would have refused are left out."""
    value = fields.get(key)
    if not isinstance(value, dict):
        return {}
    entries = list(value.items())[:MAX_PARAMETERS]
    return {k: v for k, v in entries if parameter_problem(k, v) is None}


def _optional_map(fields: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = fields.get(key)
    return value if isinstance(value, dict) else None


def _optional_list(fields: dict[str, Any], key: str) -> list[Any] | None:
    value = fields.get(key)
    return value if isinstance(value, list) else None


def _list(fields: dict[str, Any], key: str) -> list[Any]:
    value = fields.get(key)
    return value if isinstance(value, list) else []


def _header(kind: Kind, fields: dict[str, Any], tensors: Tensors = (), key: str = "inputs") -> list[Any]:
    return encode(kind, {k: v for k, v in fields.items() if v is not None}, tensors, tensor_key=key)
