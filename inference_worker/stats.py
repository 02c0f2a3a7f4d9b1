"""Statistics: a worker's counters per model version, and the dispatcher's book of them across restarts.

Each worker incarnation counts per model version (:class:`ModelStats`) and reports the cumulative counters in
its heartbeats; the dispatcher keeps the last report of every incarnation (:class:`StatsBook`), so a restarted
slot's counters continue from where they were (no negative rates). Given a file (``--stats-file``, in the
run directory under ``torchgate serve``), the book is kept there too, so that a restarted dispatcher still
counts the incarnations that ended before it started (live ones report their own counters again).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str, str]  # slot name, model, version
SAVE_INTERVAL = 1.0  # seconds between two writes of a book's file, at most one a second
log = logging.getLogger("torchgate.dispatcher")


@dataclass
class ModelStats:
    """Cumulative counters of one model version in one worker incarnation (Triton's statistics)."""

    success: int = 0
    failure: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    inference_count: int = 0
    execution_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    request_ns: int = 0  # per request: its queue time plus its batch's compute time
    last_inference: int = 0  # unix milliseconds of the last successful batch
    batch_sizes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    batch_compute_ns: dict[int, list[int]] = field(default_factory=dict)  # size -> [input, infer, output] ns

    def record_batch(self, samples: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """Count one batch that ran."""
        self.execution_count += 1
        self.batch_sizes[samples] += 1
        per_size = self.batch_compute_ns.setdefault(samples, [0, 0, 0])
        per_size[0] += input_ns
        per_size[1] += infer_ns
        per_size[2] += output_ns
        self.last_inference = int(time.time() * 1000)

    def record_success(
        self, samples: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """Count one request answered; as Triton, each request counts its batch's compute time."""
        self.success += 1
        self.inference_count += samples
        self.queue_ns += queue_ns
        self.compute_input_ns += input_ns
        self.compute_infer_ns += infer_ns
        self.compute_output_ns += output_ns
        self.request_ns += queue_ns + input_ns + infer_ns + output_ns

    def to_wire(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "failure": dict(self.failure),
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "queue_ns": self.queue_ns,
            "compute_input_ns": self.compute_input_ns,
            "compute_infer_ns": self.compute_infer_ns,
            "compute_output_ns": self.compute_output_ns,
            "request_ns": self.request_ns,
            "last_inference": self.last_inference,
            "batch_sizes": {str(size): count for size, count in self.batch_sizes.items()},
            "batch_compute_input_ns": {str(size): ns[0] for size, ns in self.batch_compute_ns.items()},
            "batch_compute_infer_ns": {str(size): ns[1] for size, ns in self.batch_compute_ns.items()},
            "batch_compute_output_ns": {str(size): ns[2] for size, ns in self.batch_compute_ns.items()},
        }


def add_counters(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Add the counters of ``more`` to ``into``, maps of counters key by key; a ``last_`` time stamp: the
    latest.

    The one way counters from several workers or incarnations are merged (the dispatcher, the gateway's
    stats).
    """
    for name, value in more.items():
        if isinstance(value, dict):
            add_counters(into.setdefault(name, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            # a "last_" field is a time stamp: the latest wins; every other number is a counter
            into[name] = (
                max(into.get(name, 0), value) if name.startswith("last_") else into.get(name, 0) + value
            )


class StatsBook:
    """The last cumulative report of every worker incarnation ever seen, summed per (slot, model, version).

    Each incarnation's counters only grow, so their sum only grows, across restarts and re-registrations.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._last: dict[tuple[str, str], dict[Key, dict[str, Any]]] = {}
        self._path = path
        self._saved = ""  # what the file holds
        self._save_after = 0.0
        if path is not None:
            self._load(path)

    def _load(self, path: str | os.PathLike[str]) -> None:
        """Read the incarnations an earlier dispatcher of this run kept; a missing or unreadable file: none
        (logged)."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            doc = json.loads(text)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("dispatcher: statistics of earlier incarnations not read from %s: %s", path, exc)
            return
        for entry in doc.get("incarnations", []) if isinstance(doc, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("entries"), list):
                slot, incarnation = entry.get("slot"), entry.get("incarnation")
                if isinstance(slot, str) and isinstance(incarnation, str):
                    self.report(slot, incarnation, entry["entries"], save=False)
        self._saved = text

    def save(self, force: bool = False) -> None:
        """Write the book to its file (atomically), if it changed, at most once per SAVE_INTERVAL unless
        ``force``."""
        now = time.monotonic()
        if self._path is None or (not force and now < self._save_after):
            return
        self._save_after = now + SAVE_INTERVAL
        text = json.dumps(
            {
                "incarnations": [
                    {
                        "slot": slot,
                        "incarnation": incarnation,
                        "entries": [
                            {"model": model, "version": version, **values}
                            for (_, model, version), values in counters.items()
                        ],
                    }
                    for (slot, incarnation), counters in self._last.items()
                ]
            }
        )
        if text == self._saved:
            return
        temporary = f"{os.fspath(self._path)}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(temporary, self._path)
        except OSError as exc:
            log.warning("dispatcher: statistics not kept in %s: %s", self._path, exc)
            return
        self._saved = text

    def report(self, slot: str, incarnation: str, entries: list[dict[str, Any]], save: bool = True) -> None:
        """Record a heartbeat's cumulative counters for one worker incarnation (and keep the book in its
        file)."""
        counters: dict[Key, dict[str, Any]] = {}
        for entry in entries:
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("model"), str)
                and isinstance(entry.get("version"), str)
            ):
                counters[(slot, entry["model"], entry["version"])] = {
                    k: v for k, v in entry.items() if k not in ("model", "version")
                }
        self._last[(slot, incarnation)] = counters
        if save:
            self.save()

    def totals(self) -> dict[Key, dict[str, Any]]:
        """Return the counters of every (slot, model, version) ever seen."""
        result: dict[Key, dict[str, Any]] = {}
        for counters in self._last.values():
            for key, values in counters.items():
                add_counters(result.setdefault(key, {}), values)
        return result

    def to_wire(self) -> list[dict[str, Any]]:
        """Return the totals as a list of maps, one per (worker slot, model, version)."""
        return [
            {"worker": slot, "model": model, "version": version, **counters}
            for (slot, model, version), counters in sorted(self.totals().items())
        ]
