"""Ask the dispatcher which worker slots are ready (through the one STATUS client)."""

from __future__ import annotations

import time
from pathlib import Path

from inference_worker.protocol import StatusReply, WorkerStatus
from inference_worker.status import STATUS_TIMEOUT, query_status

__all__ = ["WorkerStatus", "model_states", "query_status", "wait_until_ready", "worker_statuses"]


def worker_statuses(endpoint: str, timeout: float = STATUS_TIMEOUT) -> dict[str, WorkerStatus]:
    """Return the dispatcher's workers keyed by slot name."""
    return {w.name: w for w in query_status(endpoint, timeout).worker_list()}


def wait_until_ready(
    endpoint: str, name: str, timeout: float, pid: int | None = None, interval: float = 0.2
) -> WorkerStatus:
    """Poll the dispatcher until slot ``name`` is ready (as process ``pid`` when given)."""
    deadline = time.monotonic() + timeout
    last = "not registered"
    while True:
        remaining = deadline - time.monotonic()
        try:
            worker = worker_statuses(endpoint, timeout=max(0.1, min(STATUS_TIMEOUT, remaining))).get(name)
        except TimeoutError:
            worker, last = None, "dispatcher did not answer"
        if worker is not None:
            if worker.ready and (pid is None or worker.pid in (None, pid)):
                return worker
            last = f"state {worker.state!r}, pid {worker.pid}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{name} not ready in the dispatcher after {timeout:.0f} s ({last})")
        time.sleep(interval)


def model_states(status: StatusReply, repository: Path, only: list[str]) -> list[str]:
    """Return one line per model version: READY on how many workers, or UNAVAILABLE and why."""
    from inference_worker.repository import scan_repository

    try:
        models, errors = scan_repository(repository, only or None)
    except ValueError as exc:
        return [f"model repository {repository}: {exc}"]
    reasons: dict[tuple[str, str | None], dict[str, list[str]]] = {}  # (model, version) -> reason -> workers
    for entry in status.unavailable:
        if isinstance(entry, dict):
            key = (str(entry.get("model")), entry.get("version"))
            names = reasons.setdefault(key, {}).setdefault(str(entry.get("reason")), [])
            if entry.get("worker"):
                names.append(str(entry["worker"]))
    lines = []
    for name in sorted(set(models) | set(errors)):
        if name in errors:
            lines.append(f"model {name}: UNAVAILABLE: {errors[name]}")
            continue
        for version in sorted(models[name].versions, key=int):
            count = status.ready_count(name, version)
            if count:
                lines.append(f"model {name} version {version}: READY on {count} worker(s)")
            else:
                why = (
                    reasons.get((name, version)) or reasons.get((name, None)) or ["no ready worker serves it"]
                )
                lines.append(f"model {name} version {version}: UNAVAILABLE: {'; '.join(why)}")
    return lines
