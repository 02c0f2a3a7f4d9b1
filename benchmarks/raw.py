"""The compute limit: the exported model called in a loop, no HTTP, in processes like the systems' workers.

``python -m benchmarks.raw --workload mlp --batch 1 --threads 1 --duration 5 --repository DIR`` prints one
JSON
line; :func:`measure` runs ``processes`` of them side by side and sums their throughput.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.settings import REPO_ROOT

WARMUP_CALLS = 5
MIN_CALLS = 10  # however long it takes: a median needs a few calls


@dataclass(frozen=True, slots=True)
class RawResult:
    """The raw model: ``processes`` loops with ``batch`` samples per call."""

    workload: str
    batch: int
    processes: int
    threads: int
    samples_per_s: float  # summed over the processes
    p50_ms: float  # per call, median over processes
    p99_ms: float
    repeats: int = 1  # measurements this result is the median of

    @property
    def label(self) -> str:
        kind = "unbatched" if self.batch == 1 else f"batched ({self.batch})"
        return (
            f"raw {kind}, {self.processes} "
            f"process{'es' if self.processes > 1 else ''} x {self.threads} "
            "threads"
        )


def loop(workload: str, batch: int, threads: int, duration_s: float, repository: Path) -> dict[str, float]:
    """Call the model on batches from the sample pool for ``duration_s``; return throughput and call
    latency."""
    import torch

    from benchmarks.models import collate, load_exported, samples

    torch.set_num_threads(threads)
    model = load_exported(repository, workload)
    pool = samples(workload)
    batches = [
        collate(workload, [pool[(i * batch + k) % len(pool)] for k in range(batch)])
        for i in range(max(1, len(pool)))
    ]
    times: list[float] = []
    with torch.inference_mode():
        for i in range(WARMUP_CALLS):
            model(*batches[i % len(batches)])
        start = time.perf_counter()
        i = 0
        while time.perf_counter() - start < duration_s or i < MIN_CALLS:
            t0 = time.perf_counter()
            model(*batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
            i += 1
        elapsed = time.perf_counter() - start
    times.sort()
    return {
        "samples_per_s": len(times) * batch / elapsed,
        "p50_ms": times[len(times) // 2] * 1e3,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
        "calls": len(times),
    }


def measure(
    workload: str, batch: int, processes: int, threads: int, duration_s: float, repository: Path
) -> RawResult:
    """Run ``processes`` raw loops at once (as many as the systems have model workers) and combine them."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.raw",
        "--workload",
        workload,
        "--batch",
        str(batch),
        "--threads",
        str(threads),
        "--duration",
        str(duration_s),
        "--repository",
        str(repository),
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        for _ in range(processes)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration_s + 300)
        if proc.returncode != 0:
            raise RuntimeError(f"raw loop failed ({proc.returncode}): {err.strip()[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    p50s = sorted(r["p50_ms"] for r in results)
    p99s = sorted(r["p99_ms"] for r in results)
    return RawResult(
        workload,
        batch,
        processes,
        threads,
        sum(r["samples_per_s"] for r in results),
        p50s[len(p50s) // 2],
        p99s[len(p99s) // 2],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repository", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(loop(args.workload, args.batch, args.threads, args.duration, args.repository)))


if __name__ == "__main__":
    main()
