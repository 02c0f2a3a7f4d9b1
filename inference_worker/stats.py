"""Counters gathered from workers' heartbeats that keep counting across worker restarts.

Each worker incarnation reports cumulative counters per model version; the dispatcher keeps the last report
of every incarnation, so a restarted slot's counters continue from where they were (no negative rates).
"""

from __future__ import annotations

from typing import Any

Key = tuple[str, str, str]  # slot name, model, version


def add_counters(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Add the counters of ``more`` to ``into``, maps of counters key by key; a ``last_`` time stamp: the latest.

    The one way counters from several workers or incarnations are merged (the dispatcher, the gateway's stats).
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

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], dict[Key, dict[str, Any]]] = {}

    def report(self, slot: str, incarnation: str, entries: list[dict[str, Any]]) -> None:
        """Record a heartbeat's cumulative counters for one worker incarnation."""
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
