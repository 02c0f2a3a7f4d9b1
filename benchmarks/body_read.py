"""Reading one request body, gunicorn's way against gateway.body: ``python -m benchmarks.body_read [--sizes
...]``.

A socket pair, a thread sending the body, and gunicorn's own ``wsgi.input`` (``Body`` over ``LengthReader``
over
``SocketUnreader``): the reading thread's CPU time (``time.thread_time``) and wall time for ``Body.read(n)``
against :func:`gateway.body.read_body`, medians of 10 reads, three interleaved rounds.
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

SIZES = {"600K": 600 * 1024, "16M": 16 << 20}


def one(payload: bytes, fast: bool) -> tuple[float, float]:
    """Return (CPU ms, wall ms) of reading ``payload`` once."""
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=b.sendall, args=(payload,))
        sender.start()
        stream = Body(LengthReader(SocketUnreader(a), len(payload)))
        c0, w0 = time.thread_time(), time.perf_counter()
        data = read_body(stream, len(payload)) if fast else stream.read(len(payload))
        c1, w1 = time.thread_time(), time.perf_counter()
        sender.join(timeout=30)
    if data is None or len(data) != len(payload):
        raise RuntimeError("short read")
    return (c1 - c0) * 1e3, (w1 - w0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    args = parser.parse_args()
    print("| body | reader | CPU ms (3 rounds) | wall ms (3 rounds) |\n|---|---|---|---|")
    for label in args.sizes.split(","):
        payload = os.urandom(SIZES[label])
        rows: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(3):
            for fast in (False, True):
                runs = [one(payload, fast) for _ in range(10)]
                rows[fast].append(
                    (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
                )
        for fast, name in ((False, "gunicorn Body.read"), (True, "gateway.body.read_body")):
            cpu = ", ".join(f"{c:.2f}" for c, _ in rows[fast])
            wall = ", ".join(f"{w:.2f}" for _, w in rows[fast])
            print(f"| {label}iB | {name} | {cpu} | {wall} |")


if __name__ == "__main__":
    main()
