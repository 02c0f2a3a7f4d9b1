"""The region-use benchmark: one short run, as CI checks that ``python -m benchmarks.region_use`` still
works."""

from __future__ import annotations

import re
import sys

import pytest

from harness import run

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]


def test_the_region_use_benchmark_runs_and_reports() -> None:
    done = run([sys.executable, "-m", "benchmarks.region_use", "--object-mib", "1", "--uses", "200"], 100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"region read of 1024 bytes \(object 1 MiB\): [0-9.]+ us", done.stdout), done.stdout
    assert re.search(r"region read of 614400 bytes \(object 1 MiB\): [0-9.]+ us", done.stdout), done.stdout
    assert re.search(r"gRPC admission: [0-9.]+ us", done.stdout), done.stdout
