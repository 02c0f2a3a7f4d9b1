"""Overload: closed-loop clients offer a slow model ten times what it serves while a thread watches the
queues.

The model takes 0.1 s per batch of 4 (40 requests/s at most), with a dispatcher queue of 8 and 8 worker
credits. Used by tests/test_reliability_overload.py (counts and order) and benchmarks/overload.py (figures).
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.load import HttpLoad, Outcome
from harness.models import slow_body, write_slow_model
from harness.procs import Processes, usage
from harness.stack import Stack
from harness.wire import dispatcher_status
from inference_worker.protocol import StatusReply

BATCH_SECONDS = 0.1
MAX_BATCH = 4
QUEUE = 8
CAPACITY_RPS = MAX_BATCH / BATCH_SECONDS


@dataclass
class Report:
    """What one overload run saw: every answer with when it came, the deepest queues, RSS before and after."""

    seconds: float
    answers: list[tuple[float, Outcome]]  # (time.monotonic() when the answer came, outcome)
    max_queued: int
    max_in_flight: int
    rss_before: dict[str, int]
    rss_after: dict[str, int]

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for _, o in self.answers]

    def by_status(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def spans(self, status: int) -> list[tuple[float, float]]:
        """(sent, answered) of every request answered with ``status``."""
        return [(end - o.seconds, end) for end, o in self.answers if o.status == status]

    def overtook_accepted(self) -> list[bool]:
        """For each 503: whether it came back while a request accepted before it was still waiting."""
        accepted = sorted(self.spans(200))
        result = []
        for sent, answered in self.spans(503):
            earlier = accepted[: bisect.bisect_left(accepted, (sent, float("-inf")))]
            result.append(any(end > answered for _, end in earlier))
        return result

    def answered_while_waiting(self) -> list[int]:
        """For each accepted request: how many other accepted requests were answered while it waited."""
        spans = self.spans(200)
        ends = sorted(end for _, end in spans)
        return [bisect.bisect_left(ends, end) - bisect.bisect_right(ends, sent) for sent, end in spans]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nan for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss(stack: Stack) -> dict[str, int]:
    """Resident memory of every process of the stack, by name."""
    result = {}
    for name, pid in stack.pids().items():
        u = usage(pid)
        if u is not None:
            result[name] = u.rss
    return result


def overload(stack: Stack, clients: int, seconds: float) -> Report:
    """Run ``clients`` closed-loop clients on the slow model for ``seconds``, watching the dispatcher."""
    peaks = {"queued": 0, "in_flight": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            status = dispatcher_status(stack.frontend, timeout=1.0) or StatusReply("")
            for versions in status.models.values():
                for entry in versions.values():
                    peaks["queued"] = max(peaks["queued"], int(entry.get("queued", 0)))
            for worker in status.workers:
                peaks["in_flight"] = max(peaks["in_flight"], int(worker.get("in_flight", 0)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    before = rss(stack)
    watcher.start()
    started = time.monotonic()
    with HttpLoad(
        stack.url,
        body=slow_body(),
        path="/v2/models/slow/infer",
        threads=clients,
        headers=stack.headers,
        timeout=60,
    ) as load:
        time.sleep(seconds)  # the load runs this long: a duration, not a wait for something
    elapsed = time.monotonic() - started
    done.set()
    watcher.join(timeout=10)
    return Report(elapsed, load.snapshot(), peaks["queued"], peaks["in_flight"], before, rss(stack))


def start(root: Path, gateway_processes: int, gateway_threads: int) -> Stack:
    """A stack of one worker serving the slow model, logging under ``root``; stop it when done."""
    repository = root / "repo"
    if not repository.exists():
        write_slow_model(repository, seconds=BATCH_SECONDS, max_batch_size=MAX_BATCH, max_queue_size=QUEUE)
    stack = Stack(Processes(root), root / f"run-{gateway_threads}", repository)
    try:
        return stack.start(("w0",), gateway_processes=gateway_processes, gateway_threads=gateway_threads)
    except BaseException:
        stack.stop()
        raise
