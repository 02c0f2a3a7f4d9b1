"""The raw model on its device: batches of 1 to 64 called in a loop, no HTTP, no processes in between.

``python -m benchmarks.gpu_raw --model PATH --workload resnet50 --device cuda --batches 1,8,64 --duration 3``
prints one JSON line: for each batch size, samples/s and the p50 / p99 of one call. On a GPU each call copies
its input from pinned host memory to the device and its output back, and synchronises: what a served request
needs at the least.
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

WARMUP_CALLS = 10
MIN_CALLS = 10


@dataclass(frozen=True, slots=True)
class RawPoint:
    """The model called with ``batch`` samples per call."""

    batch: int
    samples_per_s: float
    p50_ms: float
    p99_ms: float


def loop(
    model_path: Path, workload: str, device: str, batches: list[int], duration_s: float, threads: int
) -> list[dict[str, float]]:
    import numpy as np
    import torch

    from benchmarks.gpu_models import gpu_samples, load_model

    torch.set_num_threads(threads)
    model = load_model(model_path, device)
    pool = gpu_samples(workload)
    cuda = device.startswith("cuda")
    out = []
    with torch.inference_mode():
        for batch in batches:
            host = torch.from_numpy(np.stack([pool[i % len(pool)]["input"] for i in range(batch)]))
            if cuda:
                host = host.pin_memory()
            times: list[float] = []
            calls = 0
            start = time.perf_counter()
            while calls < WARMUP_CALLS + MIN_CALLS or time.perf_counter() - start < duration_s:
                t0 = time.perf_counter()
                result = model(host.to(device, non_blocking=True))
                result = result.to("cpu")  # synchronises on a GPU
                if calls >= WARMUP_CALLS:
                    times.append(time.perf_counter() - t0)
                elif calls == WARMUP_CALLS - 1:
                    start = time.perf_counter()
                calls += 1
            elapsed = time.perf_counter() - start
            times.sort()
            out.append(
                {
                    "batch": batch,
                    "samples_per_s": len(times) * batch / elapsed,
                    "p50_ms": times[len(times) // 2] * 1e3,
                    "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3,
                }
            )
    return out


def measure(
    model_path: Path, workload: str, device: str, batches: list[int], duration_s: float, threads: int
) -> list[RawPoint]:
    """Run :func:`loop` in a process of its own (its own CUDA context, like a worker's) and return its
    points."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_raw",
        "--model",
        str(model_path),
        "--workload",
        workload,
        "--device",
        device,
        "--batches",
        ",".join(str(b) for b in batches),
        "--duration",
        str(duration_s),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120 + duration_s * len(batches) * 3
    )
    if done.returncode != 0:
        raise RuntimeError(f"raw loop failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return [RawPoint(**p) for p in json.loads(done.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(json.dumps(loop(args.model, args.workload, args.device, batches, args.duration, args.threads)))


if __name__ == "__main__":
    main()
