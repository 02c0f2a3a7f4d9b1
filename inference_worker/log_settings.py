"""Triton's logging extension: the log settings every process of a server follows, changed while it serves.

``torchgate serve`` writes the settings to one small JSON file in the run directory at every start, and gives
its path to every process (``TORCHGATE_LOG_SETTINGS``): gateways, the gRPC server, dispatcher and workers.
``POST /v2/logging`` (or gRPC's ``LogSettings``) rewrites the file under a lock; each process reads it again
within :data:`WATCH_SECONDS` of a change, from a thread of its own, and applies it to its loggers:

- ``log_info``, ``log_warning``, ``log_error``: lines of that level are written or not (the access lines are
  INFO lines);
- ``log_verbose_level``: above 0, DEBUG lines too (each inference request's inputs in the gateway, each
  batch's sizes and times in the workers);
- ``log_file`` is where the lines go, "" for stderr (which supervisord writes to ``RUN/logs/``): as in Triton,
  it cannot be changed over the network; ``log_format`` is the format chosen at start (``default``: text,
  ``json`` with ``TORCHGATE_LOG_FORMAT=json``) and cannot be changed either.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode

ENV = "TORCHGATE_LOG_SETTINGS"
WATCH_SECONDS = 0.25
DEFAULTS: dict[str, Any] = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}
SWITCHES = {"log_info": logging.INFO, "log_warning": logging.WARNING, "log_error": logging.ERROR}
ACCESS_LOGGER = "torchgate.access"  # the gateway's access lines, written without a handler's filters

log = logging.getLogger("torchgate.logs")


def log_format_name() -> str:
    """Return the format this process writes its lines in, in the logging extension's words."""
    return "json" if os.environ.get("TORCHGATE_LOG_FORMAT", "text").lower() == "json" else "default"


def parse_update(doc: Any) -> dict[str, Any]:
    """Check a POSTed log setting (Triton's JSON; gRPC's values as they came): return each named setting's
    new value (a None is no change, as in Triton)."""
    if not isinstance(doc, Mapping):
        raise _invalid("a log setting request's body must be a JSON object")
    update: dict[str, Any] = {}
    for name, value in doc.items():
        if value is None:
            continue
        if name == "log_file":
            raise _invalid("log file location can not be updated through network protocol")
        if name in SWITCHES:
            if not isinstance(value, bool):
                raise _invalid(f"{name} must be true or false, got {value!r}")
            update[name] = value
        elif name == "log_verbose_level":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:  # a uint32
                top = 2**32 - 1
                raise _invalid(f"log_verbose_level must be a whole number from 0 to {top}, got {value!r}")
            update[name] = value
        elif name == "log_format":
            if value not in ("default", "ISO8601", "json"):
                raise _invalid(f"invalid argument for --log_format, got: {value}")
            if value != log_format_name():
                raise _invalid(
                    f"the log format is chosen at start ({log_format_name()} here: "
                    "TORCHGATE_LOG_FORMAT=text or json) and cannot be changed over the network"
                )
        else:
            raise _invalid(f"unknown log setting {name!r}; the settings are {', '.join(DEFAULTS)}")
    return update


def read(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Return the settings in ``path`` over the defaults (the defaults alone without a readable file)."""
    try:
        loaded = orjson.loads(Path(path).read_bytes()) if path else {}
    except (OSError, orjson.JSONDecodeError):
        return {**DEFAULTS, "log_format": log_format_name()}
    chosen = {**DEFAULTS, **{k: v for k, v in loaded.items() if k in DEFAULTS}}
    chosen["log_format"] = log_format_name()
    return chosen


def write(path: str | os.PathLike[str], settings: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``settings`` in one step (a start's defaults, or a changed set)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".log-settings-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps({k: settings[k] for k in DEFAULTS if k in settings}))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update(path: str | os.PathLike[str], doc: Any) -> dict[str, Any]:
    """Apply a log setting request to the server's settings and to this process at once; return them."""
    changes = parse_update(doc)
    with _locked(Path(path)):
        settings = {**read(path), **changes}
        try:
            write(path, settings)
        except OSError as exc:  # a full disk: say so, and every process keeps the settings it had
            raise CodedError(
                ErrorCode.INTERNAL, f"the log settings could not be saved in {path}: {exc}"
            ) from None
    apply(settings)
    return settings


class LevelGate(logging.Filter):
    """Drop the records of the levels switched off (the records' own loggers decide the rest)."""

    def __init__(self) -> None:
        super().__init__()
        self.off: frozenset[int] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno not in self.off


GATE = LevelGate()


def apply(settings: Mapping[str, Any]) -> None:
    """Make this process's loggers follow ``settings``."""
    off = frozenset(level for name, level in SWITCHES.items() if not settings.get(name, True))
    verbose = settings.get("log_verbose_level", 0) > 0
    GATE.off = off
    logging.getLogger("torchgate").setLevel(logging.DEBUG if verbose else logging.NOTSET)  # ours only
    for handler in logging.getLogger().handlers:
        if GATE not in handler.filters:
            handler.addFilter(GATE)
    # the access lines are formatted without a handler (gateway/access_log.py): their logger says
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING if logging.INFO in off else logging.NOTSET)


class Watcher:
    """A thread that applies the settings file each time it changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self.check()
        threading.Thread(target=self._run, name="log-settings", daemon=True).start()

    def check(self) -> None:
        """Apply the file if it changed since it was last applied."""
        try:
            st = os.stat(self.path)
        except OSError:
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            self._seen = seen
            apply(read(self.path))

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            try:
                self.check()
            except Exception:  # a bug here must not end the watch
                log.exception("log settings: %s could not be applied", self.path)


_watched: dict[str, Watcher] = {}
_watched_lock = threading.Lock()


def watch(path: str | os.PathLike[str] | None) -> None:
    """Follow the settings at ``path`` in this process (once per process; nothing when ``path`` is empty)."""
    if not path:
        return
    with _watched_lock:
        key = f"{os.getpid()}:{path}"  # a forked child watches with a thread of its own
        if key not in _watched:
            _watched[key] = Watcher(path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _invalid(message: str) -> CodedError:
    return CodedError(ErrorCode.INVALID_ARGUMENT, message)
