"""The dynamic batching policy, without I/O: which queued requests run together, and when.

Requests queue per model version and per *batch key* (the datatypes and non-batch shapes of their inputs), so
requests whose shapes differ are never batched together. A queue runs when it holds ``max_batch_size``
samples, when it can fill a preferred batch size, or when its oldest request has waited
``max_queue_delay_us``; a model with ``max_batch_size`` 0 runs each request alone, at once.

With priority levels (Triton's ``priority_levels``; a request's ``priority`` parameter, 1 the highest), a
queue keeps its requests in level order, each level first come first served: a batch takes the highest
first, and of the queues due the one whose head has the highest level runs first. The delay still counts
from the oldest request queued.

The delay is an upper bound, as in Triton. When requests arrive further apart than the delay (a moving average
of the gaps between arrivals says the next one would come too late to join), a queue runs at once instead of
waiting for nobody: at concurrency 1 the delay then costs no latency, and under load batches still fill.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

GAP_WEIGHT = 4  # the moving average of arrival gaps gives each new gap 1/GAP_WEIGHT of the weight


def priority_level(asked: int, levels: int, default: int) -> int:
    """Return the level a request runs at, as Triton sets it: the one it asked for (``priority``, 1 the
    highest), or the model's default when it asked for none (0), for one past the model's levels, or the model
    has none (then every request is at level 0)."""
    if not levels:
        return 0
    return asked if 1 <= asked <= levels else default


@dataclass(slots=True)
class Pending:
    """One request waiting in the worker: where it came from, what it holds, and when it arrived."""

    seq: int
    model: tuple[str, str]
    batch_key: Hashable
    samples: int
    arrived_ns: int
    deadline: float
    payload: Any = None
    request_id: str = ""
    level: int = 0  # its priority level (:func:`priority_level`): lower runs first


@dataclass(slots=True)
class _Queue:
    items: deque[Pending] = field(default_factory=deque)
    samples: int = 0
    reordered: bool = False  # a request went ahead of earlier ones (a higher level): the head may be newer

    def oldest_ns(self) -> int:
        """When the request that has waited longest arrived."""
        if self.reordered:
            return min(item.arrived_ns for item in self.items)
        return self.items[0].arrived_ns


class Batcher:
    """Queues of one model version, and the choice of the next batch to run."""

    def __init__(
        self, max_batch_size: int, max_queue_delay_us: int, preferred_batch_sizes: tuple[int, ...] = ()
    ) -> None:
        self.max_batch_size = max_batch_size
        self.delay_ns = max_queue_delay_us * 1000
        # As Triton: a queue that can fill a preferred size runs at once, as the largest preferred size it can
        # fill.
        self.preferred = sorted(p for p in preferred_batch_sizes if 0 < p <= max_batch_size)
        self._queues: dict[Hashable, _Queue] = {}
        self._last_arrival_ns: int | None = None
        self._gap_ns: float | None = None  # moving average of the time between two arrivals

    def __len__(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def add(self, item: Pending) -> None:
        if self._last_arrival_ns is not None:
            # An idle spell counts as two delays at most, so that the estimate recovers within a few arrivals.
            gap = min(max(0, item.arrived_ns - self._last_arrival_ns), 2 * self.delay_ns)
            self._gap_ns = gap if self._gap_ns is None else self._gap_ns + (gap - self._gap_ns) / GAP_WEIGHT
        self._last_arrival_ns = item.arrived_ns
        queue = self._queues.setdefault(item.batch_key, _Queue())
        queue.samples += item.samples
        if not queue.items or queue.items[-1].level <= item.level:
            queue.items.append(item)
            return
        at = next(i for i, queued in enumerate(queue.items) if queued.level > item.level)
        queue.items.insert(at, item)  # after every request of its level or a higher one
        queue.reordered = True

    def expire(self, now_unix: float) -> list[Pending]:
        """Remove and return every queued request whose deadline has passed."""
        expired: list[Pending] = []
        for key, queue in list(self._queues.items()):
            if any(item.deadline <= now_unix for item in queue.items):
                keep = deque(item for item in queue.items if item.deadline > now_unix)
                expired.extend(item for item in queue.items if item.deadline <= now_unix)
                queue.items, queue.samples = keep, sum(item.samples for item in keep)
            if not queue.items:
                del self._queues[key]
        return expired

    def withdraw(self, seq: int) -> Pending | None:
        """Remove and return the queued request ``seq`` (its client went away); None if it is not queued."""
        for key, queue in self._queues.items():
            at = next((i for i, item in enumerate(queue.items) if item.seq == seq), None)
            if at is not None:
                item = queue.items[at]
                del queue.items[at]
                queue.samples -= item.samples
                if not queue.items:
                    del self._queues[key]
                return item
        return None

    def next_batch(self, now_ns: int, flush: bool = False) -> list[Pending] | None:
        """Return the next batch due at ``now_ns`` (all queues due if ``flush``), or None."""
        due = [
            (q.items[0].level, q.oldest_ns(), key)
            for key, q in self._queues.items()
            if flush or self._is_due(q, now_ns)
        ]
        if not due:
            return None
        *_, key = min(due, key=lambda entry: entry[:2])
        return self._take(key)

    def next_wakeup_ns(self) -> int | None:
        """Return when the oldest queued request's delay runs out, if anything is queued."""
        heads = [q.oldest_ns() for q in self._queues.values()]
        return min(heads) + self.delay_ns if heads else None

    def _is_due(self, queue: _Queue, now_ns: int) -> bool:
        if self.max_batch_size == 0 or queue.samples >= self.max_batch_size:
            return True
        if self.preferred and queue.samples >= self.preferred[0]:
            return True
        head = queue.oldest_ns()
        if now_ns - head >= self.delay_ns:
            return True
        # The next request is expected after the delay runs out: it would not join this batch, so do not wait.
        return self._gap_ns is not None and queue.items[-1].arrived_ns + self._gap_ns > head + self.delay_ns

    def _take(self, key: Hashable) -> list[Pending]:
        queue = self._queues[key]
        batch = [queue.items.popleft()]
        samples = batch[0].samples
        if self.max_batch_size > 0:
            limit = self.max_batch_size
            if self.preferred and queue.samples < self.max_batch_size:
                limit = max([p for p in self.preferred if p <= queue.samples] or [self.max_batch_size])
            while queue.items and samples + queue.items[0].samples <= limit:
                item = queue.items.popleft()
                samples += item.samples
                batch.append(item)
        queue.samples -= samples
        if not queue.items:
            del self._queues[key]
        return batch
