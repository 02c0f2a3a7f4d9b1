"""How far a starting host has come: which slots still load, which gave up, and whether any model serves. No
I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.supervisor_rpc import EXITED, FATAL, STOPPED
from inference_worker.protocol import StatusReply

GAVE_UP = frozenset({FATAL, EXITED})
_ERROR_LINE = re.compile(r"cannot load|ERROR|Error|error:")


@dataclass(frozen=True, slots=True)
class Progress:
    """One look at a starting host."""

    loading: tuple[str, ...]  # slots running (or starting) that serve no model through the dispatcher yet
    failed: tuple[str, ...]  # slots supervisord gave up on (FATAL) or that exited for good (EXITED)
    ready_models: tuple[str, ...]  # models at least one registered worker serves
    unavailable: dict[str, str] = field(default_factory=dict)  # model -> why it is not served

    @property
    def settled(self) -> bool:
        """Every slot is either registered with the dispatcher or given up on."""
        return not self.loading

    @property
    def nothing_serves(self) -> bool:
        return self.settled and not self.ready_models


def assess(
    processes: dict[str, dict[str, Any]],
    worker_slots: set[str],
    status: StatusReply | None,
    expected: list[str],
) -> Progress:
    """Judge the slots ``worker_slots`` (supervisord ``processes``) against a dispatcher STATUS_REPLY."""
    status = status or StatusReply("")
    # A worker that loaded nothing registers only to say why, then leaves and exits (supervisord retries it or
    # gives up): until then it is not settled, however briefly the dispatcher lists it.
    serving = {
        str(e["worker"]) for e in status.workers if isinstance(e, dict) and "worker" in e and e.get("models")
    }
    loading, failed = [], []
    for name in sorted(worker_slots):
        state = str((processes.get(name) or {}).get("statename", STOPPED))
        if state in GAVE_UP:
            failed.append(name)
        elif state != STOPPED and name not in serving:
            loading.append(name)
    ready = sorted(name for name in status.models if status.model_ready(name))
    unavailable: dict[str, str] = {}
    for entry in status.unavailable:
        if isinstance(entry, dict) and entry.get("model") not in ready:
            unavailable.setdefault(str(entry.get("model")), str(entry.get("reason", "")))
    for name in expected:
        if name not in ready and name not in unavailable:
            unavailable[name] = "its slots are not serving" if failed else "no worker has loaded it yet"
    return Progress(tuple(loading), tuple(failed), tuple(ready), unavailable)


def last_error(log: Path, max_bytes: int = 64 * 1024) -> str:
    """Return the last line of a slot's log that reads like an error (the reason it gave up), or ''."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if _ERROR_LINE.search(line)]
    return lines[-1] if lines else ""
