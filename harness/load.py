"""HTTP load: client threads sending requests back to back, every outcome kept in order.

By default each thread POSTs one fixed body; a ``sender`` makes each thread's requests itself (say, random
inputs) and may check each answer (:func:`call` with ``check``): a 200 with a wrong answer is no success.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from harness.models import DIGITS_BODY


@dataclass(frozen=True, slots=True)
class Outcome:
    """One HTTP request: status (0 when no HTTP answer came), seconds taken, the body's start, headers."""

    status: int
    seconds: float
    body: str
    headers: dict[str, str]
    wrong: str = ""  # a 200 whose answer the sender's check refused, and why

    @property
    def ok(self) -> bool:
        """A 200 with a right answer."""
        return self.status == 200 and not self.wrong

    def describe(self) -> str:
        """Say what came back, for an assertion message."""
        return f"{self.status} after {self.seconds:.2f}s: {self.wrong or self.body[:200]}"


def call(
    send: Callable[[], requests.Response], check: Callable[[requests.Response], str] | None = None
) -> Outcome:
    """Time one request; a transport failure is status 0 with the exception as body.

    ``check`` says what is wrong with a 200 answer ('' when it is right).
    """
    start = time.monotonic()
    try:
        response = send()
        seconds = time.monotonic() - start
        wrong = check(response) if check is not None and response.status_code == 200 else ""
        return Outcome(response.status_code, seconds, response.text[:1000], dict(response.headers), wrong)
    except requests.RequestException as exc:
        return Outcome(0, time.monotonic() - start, f"{type(exc).__name__}: {exc}", {})


Sender = Callable[[requests.Session], Outcome]


@dataclass
class HttpLoad:
    """Client threads POSTing ``body`` to ``url + path`` until stopped; a context manager."""

    url: str
    body: dict[str, Any] = field(default_factory=lambda: DIGITS_BODY)
    path: str = "/v2/models/digits/infer"
    threads: int = 2
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    # makes thread i's sender (default: POST ``body`` to ``url + path``)
    sender: Callable[[int], Sender] | None = None
    # (time.monotonic() when the answer came, outcome), in the order the answers came
    outcomes: list[tuple[float, Outcome]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> HttpLoad:
        return self.start()

    def start(self) -> HttpLoad:
        """Start the client threads (``with HttpLoad(...)`` does, and stops them at the end)."""
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Let each thread finish its request and stop."""
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=self.timeout + 10)
        assert not any(t.is_alive() for t in self._workers), "a load thread did not finish"

    def _post(self, session: requests.Session) -> Outcome:
        return call(
            lambda: session.post(
                self.url + self.path, json=self.body, headers=self.headers, timeout=self.timeout
            )
        )

    def _run(self, index: int) -> None:
        send = self.sender(index) if self.sender is not None else self._post
        with requests.Session() as session:
            while not self._stop.is_set():
                outcome = send(session)
                with self._lock:
                    self.outcomes.append((time.monotonic(), outcome))

    def snapshot(self) -> list[tuple[float, Outcome]]:
        """Return the outcomes so far."""
        with self._lock:
            return list(self.outcomes)

    @property
    def ok(self) -> int:
        """How many requests got a 200 (with a right answer) so far."""
        return sum(1 for _, o in self.snapshot() if o.ok)

    def failures(self) -> list[Outcome]:
        """Every outcome that is not a 200."""
        return [o for _, o in self.snapshot() if o.status != 200]

    def wrong(self) -> list[str]:
        """Why each 200 with a wrong answer was wrong."""
        return [o.wrong for _, o in self.snapshot() if o.wrong]

    def between(self, start: float, end: float) -> tuple[int, list[str]]:
        """Requests answered in [start, end) (``time.monotonic()``): how many, and each failure described."""
        window = [o for t, o in self.snapshot() if start <= t < end]
        return len(window), [o.describe() for o in window if not o.ok]

    def wait_for_more(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` more requests succeeded (so the load really ran across a change)."""
        target = self.ok + count
        end = time.monotonic() + timeout
        while self.ok < target:
            if time.monotonic() > end:
                raise AssertionError(
                    f"{count} more successful requests did not come in {timeout}s; "
                    f"failures: {[o.describe() for o in self.failures()[-5:]]}"
                )
            time.sleep(0.05)
