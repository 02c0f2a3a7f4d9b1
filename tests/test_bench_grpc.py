"""The gRPC-against-HTTP benchmark: one short run, as CI checks that ``python -m benchmarks.grpc_http`` still
works (both loads answered without errors, the report's table written)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import run

pytestmark = pytest.mark.processes


def test_one_short_round_answers_every_request_and_writes_the_table(tmp_path: Path) -> None:
    output = tmp_path / "grpc_http.md"
    args = ["--workloads", "digits", "--concurrency", "2", "--duration", "0.5", "--rounds", "1"]
    done = run([sys.executable, "-m", "benchmarks.grpc_http", *args, "--output", str(output)], timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = output.read_text().splitlines()
    [row] = [line for line in lines if line.startswith("| digits | 2 |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[2].split()[0].replace(",", "")) > 0 and float(cells[3].split()[0].replace(",", "")) > 0
