"""Load generation without wrk: keep-alive HTTP/1.1 connections, one thread each, for hosts that lack wrk.

The same contract as :func:`benchmarks.load.run_wrk` (fixed connections and duration, a pool of bodies sent in
turn, non-2xx counted as errors), in Python: it costs the host far more CPU per request than wrk, so it is the
fallback (CPU checks, a host without wrk), never what a comparison on a busy host should rest on.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from benchmarks.load import LoadResult
from benchmarks.payloads import HttpRequest


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def run_python_load(
    url: str, requests: Sequence[HttpRequest], concurrency: int, duration_s: float, timeout_s: float
) -> LoadResult:
    """Send ``requests`` in turn on ``concurrency`` connections for ``duration_s``; return what wrk would."""
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    non2xx = [0] * concurrency
    failures = [0] * concurrency

    def connection(index: int, clock: Clock) -> None:
        conn: http.client.HTTPConnection | None = None
        clock.wait_start()
        i = index
        while clock.going():
            req = requests[i % len(requests)]
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
                t0 = time.perf_counter()
                conn.request("POST", req.path, body=req.body, headers=req.headers)
                response = conn.getresponse()
                response.read()
                latencies[index].append(time.perf_counter() - t0)
                if not 200 <= response.status < 300:
                    non2xx[index] += 1
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                failures[index] += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    elapsed = drive(concurrency, duration_s, timeout_s, connection)
    return summarize(concurrency, latencies, sum(non2xx), sum(failures), elapsed)


class Clock:
    """When the connections of one load start (together) and stop."""

    def __init__(self, concurrency: int) -> None:
        self.barrier = threading.Barrier(concurrency + 1)
        self.end = 0.0

    def wait_start(self) -> None:
        """Wait until every connection is ready (each calls this once, after connecting)."""
        self.barrier.wait()

    def going(self) -> bool:
        """Whether the load's time is still running."""
        return time.monotonic() < self.end


def drive(
    concurrency: int, duration_s: float, timeout_s: float, connection: Callable[[int, Clock], None]
) -> float:
    """Run ``connection(index, clock)`` on ``concurrency`` threads for ``duration_s`` from the moment all are
    ready; return the seconds it took."""
    clock = Clock(concurrency)
    threads = [threading.Thread(target=connection, args=(i, clock), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    started = time.monotonic()
    clock.end = started + duration_s
    clock.barrier.wait()
    for t in threads:
        t.join(timeout=duration_s + timeout_s + 30)
    return time.monotonic() - started


def summarize(
    concurrency: int, latencies: list[list[float]], refused: int, failures: int, elapsed: float
) -> LoadResult:
    """Return what wrk would report from each connection's latencies (seconds), the answers that were errors
    (non-2xx) and the calls that got no answer."""
    values = sorted(v for per in latencies for v in per)
    mean = sum(values) / len(values) if values else 0.0
    return LoadResult(
        concurrency=concurrency,
        requests=len(values),
        non2xx=refused,
        socket_errors=failures,
        duration_s=elapsed,
        p50_ms=_percentile(values, 0.50) * 1e3,
        p90_ms=_percentile(values, 0.90) * 1e3,
        p99_ms=_percentile(values, 0.99) * 1e3,
        max_ms=(values[-1] if values else 0.0) * 1e3,
        mean_ms=mean * 1e3,
    )
