"""Where traced requests spent their time (``torchgate trace-summary FILE...``), from trace files as
:mod:`gateway.tracing` writes them (and as Triton does); no I/O.

Each traced request's timestamps become spans between consecutive stages, named for what torchgate does
there: reading the request, handing it to a gateway thread (gunicorn's WSGI environ, Flask's routing), the
thread's work before sending it (parsing, checking), the way to the worker (the dispatcher, the wire), the
worker's queue, the batch's input, infer and output, the way back, the gateway's work on the answer, and
sending it. Spans are gathered per model version and protocol (HTTP or gRPC) and given as the mean, median
and 99th percentile in microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# (span, from, to, unless): what each stretch between two timestamps is; a span whose "unless" timestamp is
# there is told by finer ones
SPANS = (
    ("request", "HTTP_RECV_START", "HTTP_SEND_END", ""),
    ("request", "GRPC_WAITREAD_END", "GRPC_SEND_START", ""),
    ("receive", "HTTP_RECV_START", "HTTP_RECV_END", ""),
    ("gateway: to a thread, WSGI, routing", "HTTP_RECV_END", "HANDLER_START", ""),
    ("gateway: parse, check, send", "HANDLER_START", "REQUEST_START", ""),
    ("gateway: parse, check, send", "HTTP_RECV_END", "REQUEST_START", "HANDLER_START"),  # Triton's
    ("gateway: parse, check, send", "GRPC_WAITREAD_END", "REQUEST_START", ""),
    ("to the worker (dispatcher, wire)", "REQUEST_START", "QUEUE_START", ""),
    ("worker queue", "QUEUE_START", "COMPUTE_START", ""),
    ("compute input", "COMPUTE_START", "COMPUTE_INPUT_END", ""),
    ("compute infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", ""),
    ("compute output", "COMPUTE_OUTPUT_START", "COMPUTE_END", ""),
    ("back to the gateway", "COMPUTE_END", "REQUEST_END", ""),
    ("worker, no timestamps (another host)", "REQUEST_START", "REQUEST_END", "QUEUE_START"),
    ("gateway: the answer", "REQUEST_END", "HTTP_SEND_START", ""),
    ("gateway: the answer", "REQUEST_END", "GRPC_SEND_START", ""),
    ("send", "HTTP_SEND_START", "HTTP_SEND_END", ""),
)
ORDER = list(dict.fromkeys(span[0] for span in SPANS))


@dataclass
class Group:
    """The traces of one model version over one protocol."""

    model: str
    version: str
    protocol: str
    spans: dict[str, list[int]] = field(default_factory=dict)  # span -> nanoseconds, one per trace
    count: int = 0


def traces(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge a trace file's entries by id (Triton writes a trace's head and timestamps apart)."""
    merged: dict[Any, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or "id" not in entry:
            continue
        trace = merged.setdefault(entry["id"], {"timestamps": {}})
        for key, value in entry.items():
            if key == "timestamps" and isinstance(value, list):
                trace["timestamps"].update({s["name"]: s["ns"] for s in value if "name" in s and "ns" in s})
            elif key != "timestamps":
                trace[key] = value
    return list(merged.values())


def summarize(all_traces: Sequence[Mapping[str, Any]]) -> list[Group]:
    """Return the traces' spans grouped by model version and protocol, in the order first seen."""
    groups: dict[tuple[str, str, str], Group] = {}
    for trace in all_traces:
        stamps: Mapping[str, int] = trace["timestamps"]
        protocol = (
            "HTTP" if "HTTP_RECV_START" in stamps else "gRPC" if "GRPC_WAITREAD_END" in stamps else "other"
        )
        key = (str(trace.get("model_name", "?")), str(trace.get("model_version", "?")), protocol)
        group = groups.setdefault(key, Group(*key))
        group.count += 1
        for name, start, end, unless in SPANS:
            if start in stamps and end in stamps and unless not in stamps:
                group.spans.setdefault(name, []).append(stamps[end] - stamps[start])
    return list(groups.values())


def report(groups: Sequence[Group]) -> str:
    """Return the summary as Markdown tables: one per model version and protocol."""
    parts = []
    for group in groups:
        lines = [
            f"{group.model} version {group.version}, {group.protocol}: {group.count} traces",
            "",
            "| span | mean (us) | p50 (us) | p99 (us) |",
            "|---|---:|---:|---:|",
        ]
        for name in ORDER:
            values = sorted(group.spans.get(name, []))
            if values:
                mean = sum(values) / len(values) / 1e3
                lines.append(
                    f"| {name} | {mean:.1f} | {_percentile(values, 0.5) / 1e3:.1f} | "
                    f"{_percentile(values, 0.99) / 1e3:.1f} |"
                )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else "no traces\n"


def _percentile(values: Sequence[int], q: float) -> float:
    """Return the ``q`` quantile of sorted ``values``, interpolated between the two nearest."""
    at = q * (len(values) - 1)
    low = int(at)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (at - low)
