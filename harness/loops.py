"""A dispatcher and one worker, each serving on a thread of the test's process: real loops, no processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from inference_worker.dispatcher import Dispatcher, DispatcherConfig
from inference_worker.status import ask_status
from inference_worker.worker import Worker, WorkerConfig


@dataclass
class Threads:
    """What :func:`serving_threads` started."""

    dispatcher: Dispatcher
    worker: Worker
    threads: list[threading.Thread]


@contextmanager
def serving_threads(
    context: zmq.Context[Any],
    repository: Path,
    frontend: str,
    backend: str,
    interval: float,
    liveness: int,
) -> Iterator[Threads]:
    """Serve ``repository`` with a dispatcher on ``frontend``/``backend`` and a worker ``w0``, each on a
    thread; yield once STATUS lists the worker ready; on exit drain the worker, then stop the dispatcher."""
    dispatcher = Dispatcher(DispatcherConfig(frontend, backend, interval, liveness, startup_grace=0), context)
    worker = Worker(
        WorkerConfig(repository, backend, "w0", heartbeat_interval=interval, heartbeat_liveness=liveness),
        context,
    )
    worker.load()
    worker.connect()
    threads = [
        threading.Thread(target=dispatcher.serve, daemon=True),
        threading.Thread(target=worker.serve, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        _wait_ready(context, frontend)
        yield Threads(dispatcher, worker, threads)
    finally:
        worker.stopping = max(worker.stopping, 1)
        threads[1].join(30)
        dispatcher.stopping = True
        threads[0].join(30)
        worker.close()
        dispatcher.close()


def _wait_ready(context: zmq.Context[Any], frontend: str, timeout: float = 30.0) -> None:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(frontend)
    try:
        end = time.monotonic() + timeout
        while (reply := ask_status(socket, 10.0)) is None or reply.ready_workers() != {"w0"}:
            assert time.monotonic() < end, "the worker never registered"
            time.sleep(0.01)
    finally:
        socket.close()
