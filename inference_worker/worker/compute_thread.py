"""The compute threads: a launcher starts each batch, a finisher waits for it, so the session keeps
heartbeating while batches compute, and on a GPU the next batch's copy in is queued while one computes.

On the CPU, launching a batch computes it and finishing only splits the outputs; on a GPU, launching queues
the copy in, the model and the copy out on streams and returns, and finishing waits for the batch's event.
The main thread submits batches and polls :attr:`ComputeThread.wake_fd`, readable whenever a batch is done;
:attr:`ComputeThread.current` says what was launched last and is not finished (for the heartbeat).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from inference_worker.protocol import Computing
from inference_worker.worker.app import Batch

log = logging.getLogger("torchgate.worker")

L = TypeVar("L")
R = TypeVar("R")


class ComputeThread(Generic[L, R]):
    """Run ``finish(batch, launch(batch))`` for each submitted batch, in order, on two threads."""

    def __init__(
        self,
        launch: Callable[[Batch], L],
        finish: Callable[[Batch, L], R],
        overlap: bool = True,
        setup: Callable[[], None] = lambda: None,
    ) -> None:
        """``overlap``: finish on a thread of its own, so the next launch need not wait (a GPU's asynchronous
        launches); without it the launcher finishes each batch itself, one thread hand-off fewer (the CPU)."""
        self._launch, self._finish, self._overlap, self._setup = launch, finish, overlap, setup
        self._jobs: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._launched: queue.SimpleQueue[tuple[Batch, Any] | None] = queue.SimpleQueue()
        self._done: deque[tuple[Batch, R | BaseException]] = deque()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.pending = 0  # submitted, not yet collected
        self.current: Computing | None = None
        self._threads = [
            threading.Thread(target=self._launcher, name="torchgate-launch", daemon=True),
            threading.Thread(target=self._finisher, name="torchgate-finish", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

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
        for thread in self._threads:
            thread.join(timeout)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _launcher(self) -> None:
        self._setup()
        while (batch := self._jobs.get()) is not None:
            model, version = batch.key
            self.current = Computing(batch.number, time.time(), model, version, batch.samples)
            try:
                launched: Any = self._launch(batch)
            except BaseException as exc:  # a bug here must not leave the batch unanswered
                log.exception("worker: launching batch %d raised", batch.number)
                launched = exc
            if self._overlap:
                self._launched.put((batch, launched))
            else:
                self._complete(batch, launched)
        self._launched.put(None)

    def _finisher(self) -> None:
        self._setup()
        while (item := self._launched.get()) is not None:
            self._complete(*item)

    def _complete(self, batch: Batch, launched: Any) -> None:
        result: R | BaseException = launched
        if not isinstance(launched, BaseException):
            try:
                result = self._finish(batch, launched)
            except BaseException as exc:
                log.exception("worker: finishing batch %d raised", batch.number)
                result = exc
        current = self.current
        if current is not None and current.batch == batch.number:
            self.current = None
        self._done.append((batch, result))
        os.write(self._write_fd, b"x")
