"""What one use of a client's shared-memory region costs a gateway process (Triton's system shared-memory
extension, gateway/client_shm.py), in-process: ``ClientRegions.read`` of a slice of a registered object, the
checks that the object is still the one registered included, and, to compare, what the gRPC server's
admission of a call costs (``gateway.grpc_calls.Admission``).

    python -m benchmarks.region_use [--object-mib 16] [--uses 20000]

The object is written whole first (as a client that wrote its inputs). Compare two trees by running each from
its own checkout, in turn, more than once (``cd TREE && PYTHONPATH=TREE python -m benchmarks.region_use``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from gateway.client_shm import ClientRegions
from gateway.codec import RegionSlice

SLICES = (1 << 10, 600 << 10)  # a small tensor and a 3x224x224 FP32 image


def per_call(call: Callable[[], object], count: int) -> float:
    """Return the microseconds one ``call()`` takes, over ``count`` calls."""
    began = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - began) / count * 1e6


def region_reads(object_bytes: int, uses: int) -> dict[int, float]:
    """Return slice bytes -> microseconds per read of that slice of a written object."""
    key = f"/tg-bench-{os.getpid()}"
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, object_bytes)
        os.pwrite(fd, b"\1" * object_bytes, 0)
        with tempfile.TemporaryDirectory() as folder:
            regions = ClientRegions(folder)
            regions.register("bench", key, 0, object_bytes)
            results = {}
            for size in SLICES:
                where = RegionSlice("bench", size, 0)
                regions.read(where, object_bytes, "input")  # mapped, and its pages checked, once
                count = max(10, uses if size <= 1 << 10 else uses // 10)
                results[size] = per_call(lambda w=where: regions.read(w, object_bytes, "input"), count)
            regions.unregister("bench")
            return results
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm{key}")


def admission(uses: int) -> float | None:
    """Return the microseconds the gRPC server's admission of one call takes (None: a tree without it)."""
    try:
        from gateway.grpc_calls import Admission
    except ImportError:
        return None
    gate = Admission(64, 16)

    def one() -> None:
        with gate.held("/bench"):
            pass

    return per_call(one, uses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object-mib", type=int, default=16, help="size of the registered object")
    parser.add_argument("--uses", type=int, default=20000, help="reads of 1 KiB (a tenth as many of 600 KiB)")
    args = parser.parse_args()
    for size, micros in region_reads(args.object_mib << 20, args.uses).items():
        print(f"region read of {size} bytes (object {args.object_mib} MiB): {micros:.1f} us")
    held = admission(args.uses)
    print("gRPC admission: " + (f"{held:.2f} us" if held is not None else "not in this tree"))


if __name__ == "__main__":
    main()
