"""Reading one request body, gunicorn's way against gateway.body: ``python -m benchmarks.body_read [--sizes
...]``.

A socket pair, a thread sending the body, and gunicorn's own ``wsgi.input`` (``Body`` over ``LengthReader``
over
``SocketUnreader``): the reading thread's CPU time (``time.thread_time``) and wall time for ``Body.read(n)``
against :func:`gateway.body.read_body`, medians of 10 reads, three interleaved rounds. Then, for a body whose
tensors travel in shared memory: read into a buffer and copied into a segment (the gateway before), against
read straight into the segment (``read_body(..., into=...)``), the segment used again as the gateway's pool
does.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader

from gateway.body import read_body
from inference_worker import shm

SIZES = {"600K": 600 * 1024, "16M": 16 << 20}


def one(payload: bytes, how: str, segment: shm.Segment | None = None) -> tuple[float, float]:
    """Return (CPU ms, wall ms) of reading ``payload`` once: "gunicorn", "buffer", "copy" (a buffer, then
    into ``segment``) or "segment" (straight into ``segment``)."""
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=b.sendall, args=(payload,))
        sender.start()
        stream = Body(LengthReader(SocketUnreader(a), len(payload)))
        into = memoryview(segment.memory)[shm.HEADER : shm.HEADER + len(payload)] if segment else None
        c0, w0 = time.thread_time(), time.perf_counter()
        if how == "gunicorn":
            data: object = stream.read(len(payload))
        elif how == "segment":
            data = read_body(stream, len(payload), into)
        else:
            data = read_body(stream, len(payload))
            if how == "copy" and into is not None and data is not None:
                into[:] = data  # type: ignore[index]
        c1, w1 = time.thread_time(), time.perf_counter()
        sender.join(timeout=30)
    if data is None or len(data) != len(payload):  # type: ignore[arg-type]
        raise RuntimeError("short read")
    return (c1 - c0) * 1e3, (w1 - w0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    args = parser.parse_args()
    print("| body | reader | CPU ms (3 rounds) | wall ms (3 rounds) |\n|---|---|---|---|")
    names = {
        "gunicorn": "gunicorn Body.read",
        "buffer": "gateway.body.read_body",
        "copy": "read_body, then copied into a segment",
        "segment": "read_body into the segment",
    }
    for label in args.sizes.split(","):
        payload = os.urandom(SIZES[label])
        segment = shm.Segment.create(shm.HEADER + len(payload))
        rows: dict[str, list[tuple[float, float]]] = {how: [] for how in names}
        for _ in range(3):
            for how in names:
                runs = [one(payload, how, segment) for _ in range(10)]
                rows[how].append(
                    (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
                )
        segment.close()
        for how, name in names.items():
            cpu = ", ".join(f"{c:.2f}" for c, _ in rows[how])
            wall = ", ".join(f"{w:.2f}" for _, w in rows[how])
            print(f"| {label}iB | {name} | {cpu} | {wall} |")


if __name__ == "__main__":
    main()
