"""Bookkeeping of answered requests (metrics, access lines), run when a request thread would otherwise wait.

At one connection a request's latency is the CPU spent on its critical path: counting a request and writing
its access line before its answer leaves adds to it, and doing so right after the answer still delays the
client's next request, which arrives within tens of microseconds. So the gateway defers that work here, and a
request thread runs what is pending once it waits anyway: while the dispatcher answers its next request
(:class:`gateway.client.DispatcherClient`'s ``idle`` hook), when no next request came within ``GRACE`` seconds
of an answer, and before it goes back to the event loop (:mod:`gateway.admission`). ``/metrics`` runs it
first. Work is run oldest first, by whichever thread of the process gets to it. Under any other server (a test
client, a plain gthread worker) the request's WSGI environ lacks ``ENVIRON_KEY`` and the work is done at once.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable

log = logging.getLogger("torchgate.gateway")

ENVIRON_KEY = "torchgate.afterwork"  # set (True) by a server that runs the pending work: the front door
GRACE = 0.001  # seconds an answering thread waits for the connection's next request before running the work

_pending: deque[Callable[[], None]] = deque()  # append and popleft are atomic: no lock


def defer(job: Callable[[], None]) -> None:
    """Run ``job`` later, on the next :func:`run_pending` of this process."""
    _pending.append(job)


def defer_or_run(environ: dict[str, object], job: Callable[[], None]) -> None:
    """Defer ``job`` if the server answering the request with ``environ`` runs pending work, else run it."""
    if environ.get(ENVIRON_KEY):
        _pending.append(job)
    else:
        job()


def run_pending() -> None:
    """Run every deferred job, oldest first; a job that fails is logged and the rest still run."""
    if not _pending:  # the common case, asked on every request: no exception raised for it
        return
    while True:
        try:
            job = _pending.popleft()
        except IndexError:
            return
        try:
            job()
        except Exception:
            log.exception("gateway: a request's bookkeeping failed")


def pending() -> int:
    """Return how many jobs wait."""
    return len(_pending)


os.register_at_fork(after_in_child=_pending.clear)  # a forked child never runs its parent's jobs
