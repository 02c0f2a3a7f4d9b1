"""The GPU benchmark's CPU mode: one short run, as CI checks that ``python -m benchmarks.gpu`` still works."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from harness import run

pytestmark = [pytest.mark.timeout(600), pytest.mark.processes, pytest.mark.xdist_group("dev-shm")]


@pytest.mark.processes
def test_cpu_mode_serves_every_system_and_writes_the_report(tmp_path: Path) -> None:
    output = tmp_path / "report.md"
    before = set(os.listdir("/dev/shm"))
    done = run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu",
            "--mode",
            "cpu",
            "--workloads",
            "resnet50",
            "--systems",
            "torchgate,seed",
            "--formats",
            "binary,json,shm",  # shm: the client's shared memory, each answer checked in its region
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--load",
            "python",
            "--trace-rate",
            "1",  # every torchgate request traced: where its time went, in the report
            "--work-dir",
            str(tmp_path / "work"),
            "--output",
            str(output),
        ],
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    runs = {(r["system"], r["fmt"]): r for r in results["runs"]}
    assert set(runs) == {
        ("torchgate", "binary"),
        ("torchgate", "json"),
        ("torchgate", "shm"),
        ("seed", "json"),
    }, results["skipped"]
    assert set(os.listdir("/dev/shm")) <= before  # the benchmark's regions are unlinked
    for one in runs.values():
        assert one["load"]["requests"] > 0 and one["load"]["errors"] == 0, one
    tg = runs[("torchgate", "binary")]
    assert tg["batch"]["batch"] >= 1.0  # the worker's own statistics were read
    assert tg["spans"]["traces"] == tg["load"]["requests"] and tg["spans"]["compute infer"] > 0
    assert runs[("seed", "json")]["spans"] is None
    assert tg["processes"]["worker"] == 1 and tg["processes"]["dispatcher"] == 1
    assert [p["batch"] for p in results["raw"]["resnet50"]] == [1, 8]
    text = output.read_text()
    assert "CPU check run" in text and "| torchgate | binary | 2 |" in text and "| seed | json | 2 |" in text
    assert "Where torchgate's requests spent their time" in text and "| binary | 2 |" in text
    assert "bash benchmarks/gpu_host.sh" in text  # the GPU host's recipe travels with every report


def test_gpu_mode_without_cuda_says_what_is_missing(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    done = run(
        [sys.executable, "-m", "benchmarks.gpu", "--mode", "gpu", "--work-dir", str(tmp_path)], timeout=120
    )
    assert done.returncode != 0
    assert "sees no CUDA device" in done.stderr and "--mode cpu" in done.stderr
    assert not (tmp_path / "results.json").exists()
