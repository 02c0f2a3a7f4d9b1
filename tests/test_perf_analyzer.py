"""Triton's own load generator, perf_analyzer, run unchanged against `torchgate serve`: over HTTP (binary
tensors) and gRPC, streaming, batches of several samples, and system shared memory; every request it sends is
answered, and the server-side statistics it reads back count them (harness/perf_analyzer.py installs it)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest

from harness import Stack
from harness import perf_analyzer as pa

pytestmark = pytest.mark.xdist_group("dev-shm")  # looks at all of /dev/shm: never beside another such test
TIMEOUT = 120.0  # one perf_analyzer run, at most
# bounded runs: windows of a fixed number of requests, any spread between them accepted as stable
BOUNDED = ["--measurement-mode", "count_windows", "--measurement-request-count", "100", "-s", "100"]


@pytest.fixture
def served(extensions_server: tuple[Stack, int]) -> tuple[Stack, int]:
    why = pa.missing()
    if why:
        pytest.skip(why)
    return extensions_server


def _successes(url: str) -> int:
    with urllib.request.urlopen(f"{url}/v2/models/digits/stats", timeout=10) as answer:
        stats = json.loads(answer.read())["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"])


def _run(*args: str) -> str:
    command, env = pa.command()
    done = subprocess.run(
        [*command, "-m", "digits", *BOUNDED, *args], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.processes
@pytest.mark.parametrize(
    "how",
    [
        ["--concurrency-range", "2"],  # HTTP, binary tensors
        ["-i", "grpc", "--concurrency-range", "2", "-b", "4"],
        ["-i", "grpc", "--streaming", "--concurrency-range", "2"],
        ["--shared-memory", "system", "--output-shared-memory-size", "64", "--concurrency-range", "2"],
    ],
    ids=["http", "grpc-batch-4", "grpc-streaming", "http-system-shm"],
)
def test_perf_analyzer_measures_torchgate(served: tuple[Stack, int], how: list[str]) -> None:
    stack, grpc_port = served
    url = f"127.0.0.1:{grpc_port}" if "grpc" in how else stack.url.removeprefix("http://")
    before = _successes(stack.url)
    output = _run("-u", url, *how)
    throughput = [float(x) for x in re.findall(r"Throughput: ([0-9.]+) infer/sec", output)]
    assert throughput and all(x > 0 for x in throughput), output
    # the statistics it read from the server (Triton's statistics extension) count what it sent
    counted = [int(x) for x in re.findall(r"Successful request count: (\d+)", output)]
    assert counted and all(x > 0 for x in counted), output
    assert _successes(stack.url) - before >= sum(counted)
    assert "Failed" not in output and "error" not in output.lower(), output
    assert "Unable to unregister" not in output  # it unregisters system and CUDA regions when it ends
