"""Gunicorn hooks for prometheus-client's multiprocess mode: a clean folder at start (at a run's start under
`torchgate serve`), dead processes marked.

``gateway/gunicorn_conf.py`` exports these hooks; they do nothing unless ``PROMETHEUS_MULTIPROC_DIR`` is set.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from gateway.metrics import KEEP_ENV, multiproc_dir
from inference_worker import lifeline

log = logging.getLogger("torchgate.gateway")


def clear(folder: str) -> None:
    """Empty ``folder`` (made with mode 0700 if missing): counters of an earlier run must not be summed in."""
    path = Path(folder)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def start(folder: str) -> None:
    """Empty ``folder`` as :func:`clear` does, unless the run's counters are kept there (``KEEP_ENV``: the
    folder was emptied when the run began, and this process starts again within it)."""
    if os.environ.get(KEEP_ENV) == "1":
        Path(folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        clear(folder)


def on_starting(server: Any) -> None:
    """Gunicorn hook, in the arbiter before any worker exists: start the metrics folder empty (or as the run
    left it)."""
    lifeline.die_with_supervisor()  # its worker processes follow the arbiter on their own
    folder = multiproc_dir()
    if folder:
        start(folder)
        log.info("gateway[%d]: metrics shared through %s", os.getpid(), folder)


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook, in the arbiter when a worker process exits: drop its live gauges."""
    folder = multiproc_dir()
    if folder:
        multiprocess.mark_process_dead(worker.pid, folder)  # type: ignore[no-untyped-call]
