"""Soak: steady load for at least five minutes; RSS and open file descriptors of every process stay flat.

    make soak            (or: .venv/bin/python -m pytest -m soak -s tests/test_reliability_soak.py)

``TORCHGATE_SOAK_SECONDS`` changes the duration (default 300). The test prints a table of every process's
RSS and descriptors over time (the one in docs/reliability.md) and fails if any grew from the first quarter of
the run to the last beyond 20 % + slack, or if any request failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from harness import DIGITS_BODY, HttpLoad, Stack, Usage, copy_digits, usage

SECONDS = float(os.environ.get("TORCHGATE_SOAK_SECONDS", "300"))
SAMPLE_EVERY = 5.0
RSS_SLACK = 8 * 2**20
FD_SLACK = 4

pytestmark = [pytest.mark.soak, pytest.mark.processes]


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("soak")
    copy_digits(root / "repo")
    with Stack.at(root, root / "repo") as stack:
        yield stack.start(("w0", "w1"), gateway_processes=2, gateway_threads=8)


def quarter_max(series: list[Usage], field: str, last: bool) -> int:
    quarter = max(1, len(series) // 4)
    part = series[-quarter:] if last else series[:quarter]
    return max(getattr(u, field) for u in part)


def table(samples: dict[str, list[Usage]], times: list[float], requests_done: list[int]) -> str:
    names = sorted(samples)
    picks = sorted({0, len(times) // 4, len(times) // 2, 3 * len(times) // 4, len(times) - 1})
    head = "| process | " + " | ".join(f"t={times[i]:.0f}s" for i in picks) + " |"
    lines = [head, "|---|" + "---|" * len(picks)]
    for name in names:
        cells = [f"{samples[name][i].rss / 2**20:.1f} MiB, {samples[name][i].fds} fds" for i in picks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| requests answered | " + " | ".join(str(requests_done[i]) for i in picks) + " |")
    return "\n".join(lines)


@pytest.mark.timeout(SECONDS + 240)
def test_rss_and_descriptors_stay_flat_under_steady_load(stack: Stack) -> None:
    assert SECONDS >= 60, "a soak shorter than a minute shows nothing"
    pids = stack.pids()
    samples: dict[str, list[Usage]] = {name: [] for name in pids}
    times: list[float] = []
    done: list[int] = []
    start = time.monotonic()
    with HttpLoad(stack.url, body=DIGITS_BODY, threads=4) as load:
        load.wait_for_more(50)  # warmed up
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < SECONDS:
            for name, pid in pids.items():
                current = usage(pid)
                assert current is not None, f"{name} (pid {pid}) died"
                samples[name].append(current)
            times.append(elapsed)
            done.append(load.ok)
            time.sleep(SAMPLE_EVERY)
    report = table(samples, times, done)
    print(f"\nsoak: {SECONDS:.0f}s, {load.ok} requests answered, {len(load.failures())} failed\n{report}")
    if path := os.environ.get("TORCHGATE_SOAK_REPORT"):
        with open(path, "w") as handle:
            handle.write(report + "\n")
    assert load.failures() == [], [o.describe() for o in load.failures()[:5]]
    assert stack.pids() == pids, "a process was restarted"
    for name, series in samples.items():
        first, last = quarter_max(series, "rss", False), quarter_max(series, "rss", True)
        assert last <= first * 1.2 + RSS_SLACK, f"{name}: RSS {first / 2**20:.1f} -> {last / 2**20:.1f} MiB"
        first, last = quarter_max(series, "fds", False), quarter_max(series, "fds", True)
        assert last <= first + FD_SLACK, f"{name}: descriptors {first} -> {last}"
