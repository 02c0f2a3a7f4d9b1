"""The handler latency benchmark: one short run, as CI checks that ``python -m benchmarks.handler_latency``
still works."""

from __future__ import annotations

import re
import sys

import pytest

from harness import run

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]


def test_the_handler_latency_benchmark_runs_and_reports() -> None:
    done = run(
        [sys.executable, "-m", "benchmarks.handler_latency", "--requests", "20", "--warm-up", "5"], 240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"20 requests: median [0-9.]+ ms, p90 [0-9.]+ ms", done.stdout), done.stdout
