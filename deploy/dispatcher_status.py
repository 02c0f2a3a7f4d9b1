"""Ask the dispatcher which worker slots are ready (a STATUS message on its frontend socket)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from inference_worker.protocol import Kind, ProtocolError, decode, encode

STATUS_TIMEOUT = 2.0
READY_STATE = "ready"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker as the dispatcher sees it."""

    name: str
    state: str
    pid: int | None
    models: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return self.state.lower() == READY_STATE


def parse_workers(fields: dict[str, Any]) -> list[WorkerStatus]:
    """Read the ``workers`` list of a STATUS_REPLY, tolerating fields this module does not use."""
    raw = fields.get("workers")
    if not isinstance(raw, list):
        raise ProtocolError("STATUS_REPLY without a 'workers' list")
    workers = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("worker"), str):
            raise ProtocolError("STATUS_REPLY worker entry without a 'worker' name")
        pid = entry.get("pid")
        models = entry.get("models", [])
        names = (
            tuple(
                m if isinstance(m, str) else str(m.get("name")) for m in models if isinstance(m, str | dict)
            )
            if isinstance(models, list)
            else ()
        )
        workers.append(
            WorkerStatus(
                entry["worker"], str(entry.get("state", "")), pid if isinstance(pid, int) else None, names
            )
        )
    return workers


def query_status(
    endpoint: str, timeout: float = STATUS_TIMEOUT, context: zmq.Context[Any] | None = None
) -> dict[str, Any]:
    """Send one STATUS to the dispatcher's frontend and return the STATUS_REPLY fields; TimeoutError if none."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        request_id = uuid.uuid4().hex
        sock.send_multipart(encode(Kind.STATUS, {"id": request_id}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000)):
                raise TimeoutError(
                    f"no STATUS_REPLY from the dispatcher at {endpoint} within {timeout:.1f} s"
                )
            message = decode(sock.recv_multipart())
            if message.kind is Kind.STATUS_REPLY and message.get("id") == request_id:
                return message.fields
    finally:
        sock.close(linger=0)


def worker_statuses(endpoint: str, timeout: float = STATUS_TIMEOUT) -> dict[str, WorkerStatus]:
    """Return the dispatcher's workers keyed by slot name."""
    return {w.name: w for w in parse_workers(query_status(endpoint, timeout))}


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


def model_states(fields: dict[str, Any], repository: Path, only: list[str]) -> list[str]:
    """Return one line per model version: READY on how many workers, or UNAVAILABLE and why."""
    from inference_worker.repository import scan_repository

    try:
        models, errors = scan_repository(repository, only or None)
    except ValueError as exc:
        return [f"model repository {repository}: {exc}"]
    served = fields.get("models") or {}
    reasons: dict[tuple[str, str | None], dict[str, list[str]]] = {}  # (model, version) -> reason -> workers
    for entry in fields.get("unavailable") or []:
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
            entry = (served.get(name) or {}).get(version) or {}
            count = int(entry.get("ready", 0)) if isinstance(entry, dict) else 0
            if count:
                lines.append(f"model {name} version {version}: READY on {count} worker(s)")
            else:
                why = (
                    reasons.get((name, version)) or reasons.get((name, None)) or ["no ready worker serves it"]
                )
                lines.append(f"model {name} version {version}: UNAVAILABLE: {'; '.join(why)}")
    return lines
