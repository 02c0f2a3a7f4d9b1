"""Triton's trace extension across processes: the settings every gateway process shares, which requests each
traces, and the trace file their traces go to (settings and entries: :mod:`gateway.trace_settings`).

``torchgate serve --trace-config triton,file=PATH`` writes the settings document in the run directory's
``trace/`` folder (``TORCHGATE_TRACE_DIR``); a POST to ``/v2/trace/setting`` (or gRPC's ``TraceSetting``)
rewrites it under a lock, by a rename, and each process reads it again once it changed (one ``stat`` per
inference request while a trace file is configured, none otherwise). A process counts its own requests
against ``trace_rate``; ``trace_count`` is shared, taken under the lock. With ``log_frequency`` 0 each
trace is added to the trace file as it completes, under the lock, so that the file is one JSON array, as
Triton's is, after every trace; with N, each process writes every N of its traces to the next free
``<trace_file>.<index>`` (and what it holds at exit).
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from gateway import trace_settings
from gateway.errors import InvalidArgument
from gateway.trace import RequestTrace
from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode

log = logging.getLogger("torchgate.gateway")

SETTINGS = "settings.json"
LOCK = "lock"


class Tracing:
    """This process's view of a server's trace settings, its sampling counters and its unwritten traces."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._doc: dict[str, Any] = trace_settings.new_document("")
        self._counters: dict[str, int] = {}
        self._held: list[Any] = []  # with log_frequency N: this process's traces not yet written
        self._ids = itertools.count(1)
        self._id_base = (
            secrets.randbelow(1 << 20) << 32
        )  # ids unique across processes (below 2**53: JSON-safe)
        atexit.register(self.flush)

    @classmethod
    def create(cls, folder: str | os.PathLike[str], trace_file: str, settings: dict[str, Any]) -> None:
        """Write the document a server starts with (the previous run's settings are gone)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        _write_json(Path(folder) / SETTINGS, trace_settings.new_document(trace_file, settings))

    # -- settings ------------------------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """Return the settings document as it is now (read again if it changed since)."""
        path = self.folder / SETTINGS
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._doc
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            with self._lock:
                try:
                    self._doc = orjson.loads(path.read_bytes())
                    self._seen = seen
                except (OSError, orjson.JSONDecodeError) as exc:  # being replaced: the last one stays
                    log.warning(
                        "gateway: trace settings %s unreadable (%s); keeping the last read", path, exc
                    )
        return self._doc

    def setting(self, model: str) -> dict[str, Any]:
        """Return the settings of ``model`` (or the server's, when empty), as Triton answers them."""
        return trace_settings.response(self.document(), model)

    def update(self, model: str, doc: Any) -> dict[str, Any]:
        """Apply a trace setting request for ``model`` (or the server, when empty); return the settings."""
        update = trace_settings.parse_update(doc)
        if not (self.folder / SETTINGS).exists():  # no server started with a trace file here
            raise InvalidArgument(trace_settings.NO_FILE)
        with self._shared():
            current = self._read()
            try:
                _write_json(self.folder / SETTINGS, trace_settings.apply(current, model, update))
            except OSError as exc:  # a full disk: say so, and every process keeps the settings it had
                raise CodedError(
                    ErrorCode.INTERNAL, f"the trace settings could not be saved in {self.folder}: {exc}"
                ) from None
        return self.setting(model)

    # -- tracing -------------------------------------------------------------------------------------------

    def sample(self, model: str) -> int:
        """Return a new trace id if this request to ``model`` is traced, else 0."""
        doc = self.document()
        chosen = trace_settings.effective(doc, model)
        if not chosen.on:
            return 0
        key = model if model in doc["models"] and "trace_rate" in doc["models"][model] else ""
        with self._lock:
            seen = self._counters.get(key, 0) + 1
            self._counters[key] = 0 if seen >= chosen.rate else seen
        if seen < chosen.rate:
            return 0
        if chosen.count >= 0 and not self._take(chosen.counted_by):
            return 0
        return self._id_base + next(self._ids)

    def record(self, trace: RequestTrace) -> None:
        """Write a traced request's entries: who it was, and its timestamps."""
        assert trace.stamps is not None
        self.write(
            trace_settings.entries(trace.trace_id, trace.model, trace.version, trace.request_id, trace.stamps)
        )

    def write(self, entries: Sequence[Any]) -> None:
        """Record one trace's entries: in the trace file now (log_frequency 0), or once this process holds
        log_frequency traces, in a file of their own."""
        doc = self.document()
        trace_file = doc["trace_file"]
        frequency = doc["global"]["log_frequency"]
        if not trace_file:
            return
        with self._lock:
            if frequency:
                self._held.extend(entries)
                if len(self._held) < 2 * frequency:  # two entries per trace
                    return
                batch, self._held = self._held, []
            else:  # with any held while log_frequency was N
                batch, self._held = [*self._held, *entries], []
        try:
            if frequency:
                _write_new(trace_file, batch)
            else:
                with self._shared():
                    _append(trace_file, batch)
        except OSError as exc:
            log.warning("gateway: trace not written to %s: %s", trace_file, exc)

    def flush(self) -> None:
        """Write the traces this process holds (at exit, with log_frequency N)."""
        with self._lock:
            batch, self._held = self._held, []
        trace_file = self._doc["trace_file"]
        if batch and trace_file:
            try:
                _write_new(trace_file, batch)
            except OSError as exc:
                log.warning("gateway: %d traces not written to %s: %s", len(batch) // 2, trace_file, exc)

    def _take(self, counted_by: str) -> bool:
        with self._shared():
            current = self._read()
            taken = trace_settings.count_taken(current, counted_by)
            if taken is None:
                return False
            if taken != current:
                _write_json(self.folder / SETTINGS, taken)
        return True

    def _read(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = orjson.loads((self.folder / SETTINGS).read_bytes())
        except FileNotFoundError:  # no server wrote settings here: no trace file either
            return trace_settings.new_document("")
        return loaded

    @contextmanager
    def _shared(self) -> Iterator[None]:
        """Hold the server's trace lock: across processes (flock) and this process's threads."""
        with open(self.folder / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, doc: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".settings-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(doc))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append(trace_file: str, entries: Sequence[Any]) -> None:
    """Add entries to the JSON array in ``trace_file`` (caller holds the lock): the file is whole after."""
    items = b",".join(orjson.dumps(entry) for entry in entries)
    fd = os.open(trace_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        last = os.pread(fd, 1, size - 1) if size else b""
        if last == b"]":  # an array of traces: the new ones go before its end
            os.pwrite(fd, (b"," if size > 2 else b"") + items + b"]", size - 1)
        else:  # new (or not ours: left as it is, and a new array begun after it)
            os.pwrite(fd, b"[" + items + b"]", size)
    finally:
        os.close(fd)


def _write_new(trace_file: str, entries: Sequence[Any]) -> None:
    """Write entries as one JSON array to the first ``<trace_file>.<index>`` no process has taken."""
    data = orjson.dumps(list(entries))
    for index in itertools.count():
        try:
            fd = os.open(f"{trace_file}.{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return
