"""The compute thread: runs one batch at a time, so the worker's session keeps heartbeating while it computes.

The main thread submits batches and polls :attr:`ComputeThread.wake_fd`, which becomes readable whenever a
batch is done; :attr:`ComputeThread.current` says what is computing now (for the heartbeat).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from inference_worker.protocol import Computing
from inference_worker.worker.app import Batch

log = logging.getLogger("torchgate.worker")

R = TypeVar("R")


class ComputeThread(Generic[R]):
    """One thread that runs ``run(batch)`` for each submitted batch, in order."""

    def __init__(self, run: Callable[[Batch], R]) -> None:
        self._run = run
        self._jobs: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._done: deque[tuple[Batch, R | BaseException]] = deque()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.pending = 0  # submitted, not yet collected
        self.current: Computing | None = None
        self._thread = threading.Thread(target=self._loop, name="torchgate-compute", daemon=True)
        self._thread.start()

    @property
    def wake_fd(self) -> int:
        """A file descriptor that is readable while a finished batch waits to be collected."""
        return self._read_fd

    def submit(self, batch: Batch) -> None:
        self.pending += 1
        self._jobs.put(batch)

    def collect(self) -> list[tuple[Batch, R | BaseException]]:
        """Return the batches finished since the last call, each with its result (or the exception it
        raised)."""
        try:
            os.read(self._read_fd, 4096)
        except BlockingIOError:
            pass
        finished = []
        while self._done:
            finished.append(self._done.popleft())
        self.pending -= len(finished)
        return finished

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batches already submitted; wait up to ``timeout`` seconds."""
        self._jobs.put(None)
        self._thread.join(timeout)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _loop(self) -> None:
        while (batch := self._jobs.get()) is not None:
            model, version = batch.key
            self.current = Computing(batch.number, time.time(), model, version, batch.samples)
            result: R | BaseException
            try:
                result = self._run(batch)
            except BaseException as exc:  # a bug here must not leave the batch unanswered
                log.exception("worker: batch %d raised", batch.number)
                result = exc
            self.current = None
            self._done.append((batch, result))
            os.write(self._write_fd, b"x")
