"""Overload: offer a slow model ten times what it can serve and measure what the clients and the processes
see.

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
from pathlib import Path

from harness.load import Outcome
from harness.overload import CAPACITY_RPS, MAX_BATCH, QUEUE, Report, overload, percentile, start


def rows(report: Report) -> list[tuple[str, str]]:
    """The figures of one run, as (measure, value) rows."""
    ok, busy = report.by_status(200), report.by_status(503)
    other = [o for o in report.outcomes if o.status not in (200, 503)]
    rows = [
        ("offered (requests/s)", f"{len(report.outcomes) / report.seconds:.0f}"),
        ("accepted (200/s)", f"{len(ok) / report.seconds:.1f}  (model capacity {CAPACITY_RPS:.0f}/s)"),
        ("503 share", f"{len(busy) / max(1, len(report.outcomes)):.1%}"),
        ("other statuses", str(len(other))),
        ("503 with Retry-After", f"{sum(1 for o in busy if o.headers.get('Retry-After'))}/{len(busy)}"),
        ("accepted latency p50 / p99 / max (s)", _percentiles(ok)),
        ("503 latency p50 / p99 / max (s)", _percentiles(busy)),
        ("deepest dispatcher queue seen", f"{report.max_queued} (max_queue_size {QUEUE})"),
        ("most requests in flight on the worker", f"{report.max_in_flight} (credits {2 * MAX_BATCH})"),
    ]
    for name in report.rss_before:
        after = report.rss_after.get(name, 0)
        rows.append(
            (
                f"RSS {name} before -> after (MiB)",
                f"{report.rss_before[name] / 2**20:.0f} -> {after / 2**20:.0f}",
            )
        )
    return rows


def _percentiles(outcomes: list[Outcome]) -> str:
    seconds = [o.seconds for o in outcomes]
    if not seconds:
        return "-"
    return f"{percentile(seconds, 0.5):.3f} / {percentile(seconds, 0.99):.3f} / {max(seconds):.3f}"


def table(title: str, rows: list[tuple[str, str]]) -> str:
    lines = [f"### {title}", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=40)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tg-overload-") as tmp:
        root = Path(tmp)
        with start(root, gateway_processes=2, gateway_threads=32) as stack:
            overload(stack, 8, 2.0)  # warm up: first allocations, imports, connection pools
            report = overload(stack, args.clients, args.seconds)
        title = f"{args.clients} clients for {args.seconds:.0f} s, gateway 2 x 32 threads"
        print(table(title, rows(report)))
        with start(root, gateway_processes=1, gateway_threads=2) as narrow:
            report = overload(narrow, args.clients, args.seconds)
        title = f"{args.clients} clients for {args.seconds:.0f} s, gateway 1 x 2 threads, default queue (8)"
        print(table(title, rows(report)))


if __name__ == "__main__":
    main()
