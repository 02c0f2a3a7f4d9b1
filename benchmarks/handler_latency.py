"""One connection's latency through a handler: ``digits_image`` (an 8x8 PNG through its handler's preprocess)
against the tree this runs from.

    python -m benchmarks.handler_latency [--requests 400] [--warm-up 50]

Starts its own stack (a dispatcher, one CPU worker, a gateway) on a copy of the ``digits_image`` example,
sends ``--warm-up`` requests, then ``--requests`` more one after another on one kept-alive connection, and
prints the median and p90. Compare two trees by running each from its own checkout, in turn, more than once
(``cd TREE && PYTHONPATH=TREE python -m benchmarks.handler_latency``): the box's drift between runs is larger
than most changes.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

from harness import ROOT, Stack, copy_digits


def measure(requests_count: int, warm_up: int) -> list[float]:
    """Return each timed request's seconds."""
    with tempfile.TemporaryDirectory(prefix="tg-handler-") as scratch:
        root = Path(scratch)
        repository = root / "repo"
        copy_digits(repository)
        example = ROOT / "examples" / "repository" / "digits_image"
        shutil.copytree(example, repository / "digits_image", ignore=shutil.ignore_patterns("1"))
        (repository / "digits_image" / "1").mkdir()
        shutil.copyfile(
            repository / "digits" / "1" / "model.pt2", repository / "digits_image" / "1" / "model.pt2"
        )
        image = io.BytesIO()
        Image.new("L", (8, 8), 128).save(image, format="PNG")
        png = image.getvalue()
        with Stack.at(root, repository) as stack, requests.Session() as session:
            stack.start(gateway_threads=4)
            url = f"{stack.url}/predictions/digits_image"
            times = []
            for i in range(warm_up + requests_count):
                began = time.perf_counter()
                response = session.post(url, data=png, timeout=30)
                if i >= warm_up:
                    times.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise SystemExit(f"digits_image answered {response.status_code}: {response.text}")
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warm-up", type=int, default=50)
    args = parser.parse_args()
    times = sorted(measure(args.requests, args.warm_up))
    p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
    print(
        f"digits_image, 1 connection, {len(times)} requests: median {statistics.median(times) * 1e3:.2f} ms, "
        f"p90 {p90 * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
