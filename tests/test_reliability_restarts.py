"""Restarts under load: `supervisorctl restart all`, again and again, while clients keep sending.

    make soak            (or: .venv/bin/python -m pytest -m soak -s tests/test_reliability_restarts.py)

``TORCHGATE_RESTARTS`` sets how many restarts (default 5). While the servers are down a client's connections
are refused: it may send again, nothing ran. Anything else (a reset after its request went out, a 5xx) is a
request the servers took and did not answer, and fails the test. It prints what the clients saw per restart
(the table in docs/reliability.md).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from harness import HttpLoad, Outcome, Stack, copy_digits, short_dir, slow_body, write_slow_model

RESTARTS = int(os.environ.get("TORCHGATE_RESTARTS", "5"))
SLOTS = ("worker-cpu-0", "worker-cpu-1")

pytestmark = [pytest.mark.soak, pytest.mark.processes]


@pytest.fixture
def deployment() -> Iterator[Stack]:
    with short_dir() as base:
        repository = base / "repo"
        copy_digits(repository)
        write_slow_model(repository, seconds=0.1, max_batch_size=4, max_queue_size=64)
        options = ("--model-repository", str(repository), "--gpus", "none", "--cpu-workers", "2")
        gateway = ("--gateway-processes", "2", "--gateway-threads", "4")
        with Stack.at(base).serve(
            *options, "--worker-threads", "1", "--worker-startsecs", "2", *gateway
        ) as d:
            d.wait_serving(timeout=120)
            yield d


def kind(outcome: Outcome) -> str:
    """What a client saw: answered, refused (its connection was never taken), or something else."""
    if outcome.status == 200:
        return "answered"
    if outcome.status == 0 and "Connection refused" in outcome.body:
        return "refused"
    if outcome.status == 0:
        return "reset or dropped"
    return f"HTTP {outcome.status}"


@pytest.mark.timeout(120 + 90 * RESTARTS)
def test_restart_all_under_load_refuses_connections_and_drops_no_request(deployment: Stack) -> None:
    d = deployment
    rows, others = [], []
    for restart in range(RESTARTS):
        d.wait_healthy(*SLOTS, gateway_processes=2)
        with HttpLoad(d.url, body=slow_body(rows=2), path="/v2/models/slow/infer", threads=6) as load:
            load.wait_for_more(20)
            started = time.monotonic()
            result = d.ctl("restart", "all")
            assert result.returncode == 0, result.stdout + result.stderr
            load.wait_for_more(20, timeout=90)  # served again
        seen = Counter(kind(o) for _, o in load.snapshot())
        rows.append(
            f"| {restart + 1} | {time.monotonic() - started:.1f} s | "
            + ", ".join(f"{name} {count}" for name, count in sorted(seen.items()))
            + " |"
        )
        others += [o for _, o in load.snapshot() if kind(o) not in ("answered", "refused")]
    print("\n| restart | until served again | what the 6 clients saw |\n|---|---|---|\n" + "\n".join(rows))
    assert others == [], [o.describe() for o in others[:5]]
