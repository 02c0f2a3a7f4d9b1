"""Triton's trace settings (the trace extension, ``--trace-config``) and what a traced request writes; no I/O.

The settings a server runs with are one document, shared by every gateway process (:mod:`gateway.tracing`
keeps it in a file): the trace file, the global settings, the settings each model overrides, and the
values the server started with (what a global ``null`` goes back to). Settings are Triton's: ``trace_level``
(``["OFF"]`` or ``["TIMESTAMPS"]``), ``trace_rate`` (trace one request in so many), ``trace_count`` (traces
left to take, -1: no limit) and ``log_frequency`` (0: each trace is added to the trace file as it completes;
N: every N traces of a gateway process go to a file of their own, ``<trace_file>.<index>``). Answers give
them as Triton does, numbers as strings. ``TENSORS`` and the OpenTelemetry mode are not supported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidArgument

MODE = "triton"
_DECIMAL = re.compile(r"-?[0-9]+")
DEFAULTS: dict[str, Any] = {"trace_level": ["OFF"], "trace_rate": 1000, "trace_count": -1, "log_frequency": 0}
NUMBERS = {"trace_rate": (1, 2**32 - 1), "trace_count": (-1, 2**31 - 1), "log_frequency": (0, 2**32 - 1)}
NO_FILE = "no trace file: start the server with '--trace-config triton,file=PATH' to trace requests"
# --trace-config's settings (Triton's names) and the setting each one is.
CLI_NAMES = {
    "level": "trace_level",
    "rate": "trace_rate",
    "count": "trace_count",
    "log-frequency": "log_frequency",
}


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings one model's requests are traced with."""

    on: bool  # TIMESTAMPS
    rate: int
    count: int
    log_frequency: int
    counted_by: str  # "" when the model's traces are counted by the global trace_count, else the model's name


def new_document(trace_file: str, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the document a server starts with: ``settings`` (checked values) over Triton's defaults."""
    start = {**DEFAULTS, **(settings or {})}
    return {"trace_file": trace_file, "initial": dict(start), "global": dict(start), "models": {}}


def parse_update(doc: Any) -> dict[str, Any]:
    """Check a POSTed trace setting (Triton's JSON, or gRPC's lists of strings): return each named setting's
    new value, None where it is cleared."""
    if not isinstance(doc, Mapping):
        raise InvalidArgument("a trace setting request's body must be a JSON object")
    update: dict[str, Any] = {}
    for name, value in doc.items():
        if name == "trace_file":
            raise InvalidArgument("trace file location can not be updated through network protocol")
        if name == "trace_mode":
            if value not in (None, MODE, [MODE]):
                raise InvalidArgument(f"trace_mode can only be '{MODE}' in torchgate, got {value!r}")
            continue
        if name == "trace_level":
            update[name] = None if value is None else _level(value)
        elif name in NUMBERS:
            update[name] = None if value is None else _number(name, value)
        else:
            known = ", ".join(["trace_level", *NUMBERS, "trace_file", "trace_mode"])
            raise InvalidArgument(f"unknown trace setting {name!r}; the settings are {known}")
    return update


def parse_cli(values: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Read ``--trace-config`` values as Triton does (``triton,file=PATH``, ``triton,log-frequency=N``,
    ``rate=N``, ``level=TIMESTAMPS``, ``count=N``, ``mode=triton``): return the trace file and settings."""
    trace_file, levels = "", []
    settings: dict[str, Any] = {}
    for value in values:
        mode, _, rest = value.partition(",") if "," in value else ("", "", value)
        name, equals, setting = rest.partition("=")
        if not equals or mode not in ("", MODE, "opentelemetry"):
            raise InvalidArgument(f"--trace-config takes '[triton,]<setting>=<value>', got {value!r}")
        if mode == "opentelemetry" or (name == "mode" and setting != MODE):
            raise InvalidArgument(
                "torchgate traces in Triton's own mode only: OpenTelemetry is not supported"
            )
        if name == "file" and mode == MODE:
            trace_file = setting
        elif name == "log-frequency" and mode == MODE:
            settings["log_frequency"] = _number("log_frequency", setting)
        elif name == "level" and not mode:
            levels.append(setting)
        elif name in CLI_NAMES and not mode:
            settings[CLI_NAMES[name]] = _number(CLI_NAMES[name], setting)
        elif name != "mode":
            raise InvalidArgument(
                f"unknown --trace-config setting {value!r}: triton,file=, triton,log-frequency=, rate=, "
                "level=, count= and mode=triton are"
            )
    if levels:
        settings["trace_level"] = _level(levels)
    return trace_file, settings


def apply(doc: Mapping[str, Any], model: str, update: Mapping[str, Any]) -> dict[str, Any]:
    """Return the document with ``update`` (from :func:`parse_update`) applied: to the global settings when
    ``model`` is empty, else to that model's own (a None there: the model follows the global value again)."""
    if update.get("trace_level") not in (None, ["OFF"]) and not doc["trace_file"]:
        raise InvalidArgument(NO_FILE)
    if model and "log_frequency" in update:
        raise InvalidArgument("log_frequency is one for the whole server: set it without a model")
    new = {**doc, "global": dict(doc["global"]), "models": {k: dict(v) for k, v in doc["models"].items()}}
    if not model:
        for name, value in update.items():
            new["global"][name] = doc["initial"][name] if value is None else value
        return new
    own = new["models"].setdefault(model, {})
    for name, value in update.items():
        if value is None:
            own.pop(name, None)
        else:
            own[name] = value
    if not own:
        del new["models"][model]
    return new


def effective(doc: Mapping[str, Any], model: str) -> Effective:
    """Return the settings ``model``'s requests are traced with (the global ones where it sets none)."""
    own = doc["models"].get(model, {}) if model else {}
    values = {**doc["global"], **own}
    return Effective(
        on=bool(doc["trace_file"]) and values["trace_level"] != ["OFF"],
        rate=values["trace_rate"],
        count=values["trace_count"],
        log_frequency=values["log_frequency"],
        counted_by=model if "trace_count" in own else "",
    )


def count_taken(doc: Mapping[str, Any], counted_by: str) -> dict[str, Any] | None:
    """Return the document with one trace taken from the count ``counted_by`` names, or None when none is
    left (a count of -1 has no limit and is not changed: the document is returned as it is)."""
    settings = doc["models"][counted_by] if counted_by else doc["global"]
    count = settings["trace_count"]
    if count < 0:
        return dict(doc)
    if count == 0:
        return None
    new = apply(doc, counted_by, {"trace_count": count - 1})
    return new


def response(doc: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Return the settings ``model`` (or the server, when empty) is traced with, as Triton answers them."""
    values = {**doc["global"], **(doc["models"].get(model, {}) if model else {})}
    return {
        "trace_level": list(values["trace_level"]),
        "trace_rate": str(values["trace_rate"]),
        "trace_count": str(values["trace_count"]),
        "log_frequency": str(values["log_frequency"]),
        "trace_file": doc["trace_file"],
        "trace_mode": MODE,
    }


def entries(
    trace_id: int, model: str, version: str, request_id: str, stamps: Sequence[tuple[str, int]]
) -> list[Any]:
    """Return a traced request's entries in Triton's trace file: who it was, then its timestamps in order."""
    head: dict[str, Any] = {"id": trace_id, "model_name": model, "model_version": _version(version)}
    if request_id:
        head["request_id"] = request_id
    ordered = sorted(stamps, key=lambda stamp: stamp[1])
    return [head, {"id": trace_id, "timestamps": [{"name": name, "ns": ns} for name, ns in ordered]}]


def worker_stamps(stats: Mapping[str, Any], sent_ns: int, answered_ns: int) -> list[tuple[str, int]]:
    """Return a worker's timestamps for one request, from its reply's statistics: when it queued the request,
    started the batch, had its inputs in place, had the outputs computed and was done. None unless they lie
    between the gateway's sending the request and its answer: a worker on another host counts time on a
    clock of its own, and its durations are then all the trace can trust (they stay in the statistics)."""
    try:
        queued, start = int(stats["queue_start_ns"]), int(stats["compute_start_ns"])
        input_ns, infer_ns = int(stats["compute_input_ns"]), int(stats["compute_infer_ns"])
        output_ns = int(stats["compute_output_ns"])
    except (KeyError, TypeError, ValueError):
        return []
    end = start + input_ns + infer_ns + output_ns
    if not sent_ns <= queued <= start <= end <= answered_ns:
        return []
    return [
        ("QUEUE_START", queued),
        ("COMPUTE_START", start),
        ("COMPUTE_INPUT_END", start + input_ns),
        ("COMPUTE_OUTPUT_START", start + input_ns + infer_ns),
        ("COMPUTE_END", end),
    ]


def _level(value: Any) -> list[str]:
    levels = [value] if isinstance(value, str) else value
    if not isinstance(levels, list | tuple) or not levels or not all(isinstance(v, str) for v in levels):
        raise InvalidArgument(f"trace_level must be a list of levels, got {value!r}")
    if "OFF" in levels:
        if len(levels) != 1:
            raise InvalidArgument("Expect only one trace level 'OFF' is specified")
        return ["OFF"]
    for level in levels:
        if level == "TENSORS":
            raise InvalidArgument("trace level TENSORS is not supported by torchgate: TIMESTAMPS is")
        if level != "TIMESTAMPS":
            raise InvalidArgument(f"unknown trace level {level!r}: OFF or TIMESTAMPS")
    return ["TIMESTAMPS"]


def _number(name: str, value: Any) -> int:
    low, high = NUMBERS[name]
    if isinstance(value, list | tuple) and len(value) == 1:  # gRPC's SettingValue: a list of strings
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(f"Unable to parse '{name}', got: {value!r}")
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):  # int() would take " 1", "+1", "1_0"
        raise InvalidArgument(f"Unable to parse '{name}', got: {value}")
    if isinstance(value, str) and len(value.lstrip("-")) > 20:  # int() refuses 4300 digits and more
        raise InvalidArgument(
            f"Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {value[:24]}..."
        )
    number = int(value)
    if not low <= number <= high:
        raise InvalidArgument(
            f"Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {value}"
        )
    return number


def _version(version: str) -> int | str:
    return int(version) if version.isdigit() else version
