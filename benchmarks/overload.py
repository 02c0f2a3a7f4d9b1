"""Overload: offer a slow model ten times what it can serve and measure what the clients and the processes see.

    .venv/bin/python -m benchmarks.overload [--seconds 10] [--clients 40]

Starts a real stack (gunicorn gateway, dispatcher, one CPU worker) on a model that takes 0.1 s per batch of 4
(40 requests/s at most), with a dispatcher queue of 8 and 8 worker credits. Closed-loop clients send back to
back, ignoring Retry-After. Prints the offered and accepted rates, the 503 share, latency percentiles, the
deepest queue and worker load the dispatcher reported, and every process's RSS before and after. A second
scenario gives the gateway only 2 threads, so its own bounded wait for a thread is what refuses.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from tests.backend import write_slow_model
from tests.conftest import Processes, dispatcher_status
from tests.stack import HttpLoad, Outcome, Stack, slow_body, usage

BATCH_SECONDS = 0.1
MAX_BATCH = 4
QUEUE = 8
CAPACITY_RPS = MAX_BATCH / BATCH_SECONDS


@dataclass
class Report:
    """What one overload run measured."""

    seconds: float
    outcomes: list[Outcome]
    max_queued: int
    max_in_flight: int
    rss_before: dict[str, int]
    rss_after: dict[str, int]

    def by_status(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def rows(self) -> list[tuple[str, str]]:
        ok, busy = self.by_status(200), self.by_status(503)
        other = [o for o in self.outcomes if o.status not in (200, 503)]
        rows = [
            ("offered (requests/s)", f"{len(self.outcomes) / self.seconds:.0f}"),
            ("accepted (200/s)", f"{len(ok) / self.seconds:.1f}  (model capacity {CAPACITY_RPS:.0f}/s)"),
            ("503 share", f"{len(busy) / max(1, len(self.outcomes)):.1%}"),
            ("other statuses", str(len(other))),
            ("503 with Retry-After", f"{sum(1 for o in busy if o.headers.get('Retry-After'))}/{len(busy)}"),
            ("accepted latency p50 / p99 / max (s)", _percentiles(ok)),
            ("503 latency p50 / p99 / max (s)", _percentiles(busy)),
            ("deepest dispatcher queue seen", f"{self.max_queued} (max_queue_size {QUEUE})"),
            ("most requests in flight on the worker", f"{self.max_in_flight} (credits {2 * MAX_BATCH})"),
        ]
        for name in self.rss_before:
            after = self.rss_after.get(name, 0)
            rows.append(
                (
                    f"RSS {name} before -> after (MiB)",
                    f"{self.rss_before[name] / 2**20:.0f} -> {after / 2**20:.0f}",
                )
            )
        return rows


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _percentiles(outcomes: list[Outcome]) -> str:
    seconds = [o.seconds for o in outcomes]
    if not seconds:
        return "-"
    return f"{percentile(seconds, 0.5):.3f} / {percentile(seconds, 0.99):.3f} / {max(seconds):.3f}"


def rss(stack: Stack) -> dict[str, int]:
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
        with zmq.Context() as context:
            while not done.is_set():
                status = dispatcher_status(context, stack.frontend, timeout_ms=1000) or {}
                for versions in (status.get("models") or {}).values():
                    for entry in versions.values():
                        peaks["queued"] = max(peaks["queued"], int(entry.get("queued", 0)))
                for worker in status.get("workers") or []:
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
        time.sleep(seconds)
    elapsed = time.monotonic() - started
    done.set()
    watcher.join(timeout=10)
    return Report(
        elapsed, [o for _, o in load.snapshot()], peaks["queued"], peaks["in_flight"], before, rss(stack)
    )


def start(root: Path, processes: Processes, gateway_processes: int, gateway_threads: int) -> Stack:
    repository = root / "repo"
    if not repository.exists():
        write_slow_model(repository, seconds=BATCH_SECONDS, max_batch_size=MAX_BATCH, max_queue_size=QUEUE)
    return Stack(processes, root / f"run-{gateway_threads}", repository).start(
        {"w0": []}, gateway_processes=gateway_processes, gateway_threads=gateway_threads
    )


def table(title: str, rows: list[tuple[str, str]]) -> str:
    lines = [f"### {title}", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=40)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tg-overload-") as tmp:
        root = Path(tmp)
        processes = Processes(root)
        try:
            stack = start(root, processes, gateway_processes=2, gateway_threads=32)
            overload(stack, 8, 2.0)  # warm up: first allocations, imports, connection pools
            report = overload(stack, args.clients, args.seconds)
            print(
                table(
                    f"{args.clients} clients for {args.seconds:.0f} s, gateway 2 x 32 threads", report.rows()
                )
            )
            processes.kill_all()
            processes.started.clear()
            narrow = start(root, processes, gateway_processes=1, gateway_threads=2)
            report = overload(narrow, args.clients, args.seconds)
            print(
                table(
                    f"{args.clients} clients for {args.seconds:.0f} s, gateway 1 x 2 threads, default queue (8)",
                    report.rows(),
                )
            )
        finally:
            processes.kill_all()


if __name__ == "__main__":
    main()
