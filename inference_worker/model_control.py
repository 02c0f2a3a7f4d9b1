"""Model control in the dispatcher: load, reload or unload one model across its worker slots, one slot at a
time.

No I/O: the dispatcher feeds in what happens (a job asked for, a worker's answer, a worker lost, the clock)
and sends what :meth:`ModelControl.next_step` returns. One job runs at a time; each slot in turn stops taking
new work, finishes what it holds, loads (or drops) the model, announces itself again and answers; the next
slot starts only then, so the model's other slots keep serving throughout. A load stops at the first slot that
fails (that slot keeps the versions it had), as a rolling restart does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from inference_worker.routing import WorkerState

LOAD, UNLOAD = "load", "unload"
ACTIONS = (LOAD, UNLOAD)
MAX_JOBS = 16  # jobs waiting behind the running one; more are refused
SLOT_TIMEOUT = 600.0  # seconds one slot may take to load a model before the job fails


@dataclass(slots=True)
class ControlJob:
    """One load or unload asked for by a gateway, and how far it has come."""

    id: str  # the gateway's correlation id
    gateway: bytes
    action: str
    model: str
    pending: deque[bytes] = field(default_factory=deque)  # worker identities still to do
    current: bytes | None = None
    current_name: str = ""
    started: float = 0.0  # monotonic time the current slot was asked
    done: list[str] = field(default_factory=list)  # slot names that finished
    error: str = ""
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """What the dispatcher does next: ask ``worker`` to act, or answer the gateway that asked (``job``)."""

    job: ControlJob
    worker: bytes | None = None  # None: the job is over; answer it


def targets(action: str, model: str, workers: dict[bytes, WorkerState]) -> list[bytes]:
    """Return the workers a job acts on, by slot name: for a load, every slot configured for the model (or for
    every model); for an unload, every slot that serves it."""
    chosen = []
    for identity, worker in workers.items():
        if worker.draining:
            continue
        serves = any(m == model for m, _ in worker.signatures)
        if serves or (action == LOAD and (not worker.assigned or model in worker.assigned)):
            chosen.append(identity)
    return sorted(chosen, key=lambda identity: workers[identity].name)


class ModelControl:
    """The running job, the ones waiting, and the models unloaded on request."""

    def __init__(self, slot_timeout: float = SLOT_TIMEOUT) -> None:
        self.slot_timeout = slot_timeout
        self.active: ControlJob | None = None
        self.waiting: deque[ControlJob] = deque()
        self.unloaded: set[str] = set()
        self.failures: dict[str, list[dict[str, Any]]] = {}  # slot -> what it last reported it cannot load

    def note_ready(
        self, slot: str, failures: list[Any], signatures: dict[tuple[str, str], dict[str, Any]]
    ) -> tuple[dict[tuple[str, str], dict[str, Any]], list[str]]:
        """Record what a registering slot could not load; return the signatures to route by, without the
        models unloaded on request, and those models (the slot is to be told to unload them)."""
        self.failures[slot] = [
            {"model": str(f.get("model")), "version": f.get("version"), "reason": str(f.get("reason", ""))}
            for f in failures
            if isinstance(f, dict)
        ]
        stale = sorted({m for m, _ in signatures if m in self.unloaded})
        return {key: sig for key, sig in signatures.items() if key[0] not in stale}, stale

    def unavailable(self) -> list[dict[str, Any]]:
        """Return why models are not served: each slot's load failures, and the models unloaded on request."""
        entries = [{**f, "worker": slot} for slot, failures in self.failures.items() for f in failures]
        entries += [
            {"model": model, "version": None, "worker": "", "reason": "unloaded"}
            for model in sorted(self.unloaded)
        ]
        return entries

    def submit(self, job: ControlJob) -> bool:
        """Queue a job; False when too many wait already."""
        if len(self.waiting) >= MAX_JOBS:
            return False
        self.waiting.append(job)
        return True

    def busy(self, identity: bytes) -> bool:
        """Whether this worker is the one loading or unloading now (it takes no new work meanwhile)."""
        return self.active is not None and self.active.current == identity

    def next_step(self, workers: dict[bytes, WorkerState], now: float) -> Step | None:
        """Return the next thing to do, or None while a slot is still at work (or nothing is asked)."""
        job = self.active
        if job is not None and job.current is not None:
            if now - job.started <= self.slot_timeout:
                return None
            job.error = f"{job.current_name} did not finish within {self.slot_timeout:.0f}s"
            return self._finish()
        if job is None:
            if not self.waiting:
                return None
            job = self.active = self.waiting.popleft()
            job.pending = deque(targets(job.action, job.model, workers))
            if job.action == LOAD:
                self.unloaded.discard(job.model)
                if not job.pending:
                    job.error = (
                        f"no worker slot is configured to serve model {job.model!r} "
                        "(its slots start with --model, or from its instance_group)"
                    )
                    return self._finish()
            else:
                self.unloaded.add(job.model)
        while job.pending:
            identity = job.pending.popleft()
            worker = workers.get(identity)
            if worker is None or worker.draining:
                continue  # gone or going since the job started: its replacement loads from disk anyway
            job.current, job.current_name, job.started = identity, worker.name, now
            return Step(job, identity)
        return self._finish()

    def on_reply(self, identity: bytes, ok: bool, error: str) -> None:
        """Record a worker's answer to the step it was asked to take."""
        job = self.active
        if job is None or job.current != identity:
            return  # a late answer to a job that already failed over a timeout
        if ok:
            job.done.append(job.current_name)
        else:
            job.error = f"{job.current_name}: {error}"
            job.pending.clear()
        job.current = None

    def on_lost(self, identity: bytes) -> None:
        """A worker left; if it was at work for the job, the job fails there."""
        job = self.active
        if job is not None and job.current == identity:
            self.on_reply(identity, False, f"the worker left during the {job.action}")

    def _finish(self) -> Step:
        job = self.active
        assert job is not None
        job.finished, job.current = True, None
        self.active = None
        return Step(job)
