"""Measurements and their summary: one row per (workload, system, format), medians over the rounds."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.load import LoadResult
from benchmarks.raw import RawResult


@dataclass(slots=True)
class Measurement:
    """One wrk run of one system, with the peak memory of its process tree while it ran."""

    workload: str
    system: str
    fmt: str
    round: int
    load: LoadResult
    rss_bytes: int


@dataclass(slots=True)
class Row:
    """What the report shows for one system and format on one workload."""

    workload: str
    system: str
    label: str
    fmt: str
    throughput: dict[int, float] = field(default_factory=dict)  # concurrency -> median successful req/s
    p50_ms: dict[int, float] = field(default_factory=dict)
    p99_ms: dict[int, float] = field(default_factory=dict)
    errors: int = 0
    requests: int = 0
    rss_bytes: int = 0
    sparse: set[int] = field(
        default_factory=set
    )  # concurrencies where a run saw fewer than 2 answers per connection


@dataclass(slots=True)
class Results:
    """Everything one run measured, and what could not run."""

    command: str
    settings: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    raw: list[RawResult] = field(default_factory=list)
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # workload -> system -> reason
    describe: dict[str, dict[str, str]] = field(default_factory=dict)  # workload -> system -> settings text
    labels: dict[str, str] = field(default_factory=dict)
    startup_s: dict[str, dict[str, float]] = field(default_factory=dict)

    def rows(self, workload: str) -> list[Row]:
        """Return one row per (system, format) measured on ``workload``, medians over rounds."""
        groups: dict[tuple[str, str], list[Measurement]] = {}
        for m in self.measurements:
            if m.workload == workload:
                groups.setdefault((m.system, m.fmt), []).append(m)
        rows = []
        for (system, fmt), ms in groups.items():
            row = Row(workload, system, self.labels.get(system, system), fmt)
            for c in sorted({m.load.concurrency for m in ms}):
                at = [m.load for m in ms if m.load.concurrency == c]
                row.throughput[c] = statistics.median(r.throughput for r in at)
                row.p50_ms[c] = statistics.median(r.p50_ms for r in at)
                row.p99_ms[c] = statistics.median(r.p99_ms for r in at)
                if any(r.requests < 2 * c for r in at):
                    row.sparse.add(c)
            row.errors = sum(m.load.errors for m in ms)
            row.requests = sum(m.load.requests for m in ms)
            row.rss_bytes = max(m.rss_bytes for m in ms)
            rows.append(row)
        return rows

    def raw_for(self, workload: str) -> list[RawResult]:
        """Return one raw result per (batch, processes): medians over the repeated measurements."""
        groups: dict[tuple[int, int], list[RawResult]] = {}
        for r in self.raw:
            if r.workload == workload:
                groups.setdefault((r.batch, r.processes), []).append(r)
        return [
            RawResult(
                workload,
                batch,
                processes,
                rs[0].threads,
                statistics.median(r.samples_per_s for r in rs),
                statistics.median(r.p50_ms for r in rs),
                statistics.median(r.p99_ms for r in rs),
                len(rs),
            )
            for (batch, processes), rs in sorted(groups.items())
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "settings": self.settings,
            "failures": self.failures,
            "describe": self.describe,
            "startup_s": self.startup_s,
            "raw": [asdict(r) for r in self.raw],
            "measurements": [
                {
                    "workload": m.workload,
                    "system": m.system,
                    "format": m.fmt,
                    "round": m.round,
                    "rss_bytes": m.rss_bytes,
                    **m.load.to_dict(),
                }
                for m in self.measurements
            ],
        }
