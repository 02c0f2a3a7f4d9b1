"""What the response cache buys: ``python -m benchmarks.response_cache [--concurrency 1,4] [--rounds 2]``.

Starts ``torchgate serve`` on two copies of the ``digits`` model, one with ``[response_cache] enable = true``
(the server has a cache: ``--cache-config local,size=64 MiB``), and has Triton's own load generator,
``perf_analyzer`` (``make perf-analyzer``), send both the same request again and again over HTTP, in turns, at
each concurrency: the cached copy's requests after the first are answered by the gateway alone. Prints, per
model and concurrency, the throughput and the client's p50 and p99, with the server's count of cache hits.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from benchmarks.procs import http_status, launch, wait_ready
from benchmarks.settings import REPO_ROOT
from harness import perf_analyzer
from harness.procs import DEFAULT_REPOSITORY, free_port

MODELS = ("digits", "digits_cached")


def repository(folder: Path) -> Path:
    """Write ``digits`` and ``digits_cached`` (the same model, its answers cached) into ``folder``."""
    shutil.copytree(DEFAULT_REPOSITORY / "digits", folder / "digits")
    shutil.copytree(DEFAULT_REPOSITORY / "digits", folder / "digits_cached")
    config = folder / "digits_cached" / "config.toml"
    text = config.read_text().replace('name = "digits"', 'name = "digits_cached"')
    config.write_text(text + "\n[response_cache]\nenable = true\n")
    return folder


def hits(url: str, model: str) -> int:
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as answer:
        stats = json.loads(answer.read())["model_stats"][0]["inference_stats"]
    return int(stats["cache_hit"]["count"])


def measure(url: str, model: str, concurrency: int) -> dict[str, float]:
    """Run perf_analyzer on ``model`` at ``concurrency``; return its throughput, p50 and p99 (ms)."""
    command, env = perf_analyzer.command()
    done = subprocess.run(
        [*command, "-m", model, "-u", url.removeprefix("http://"), "--concurrency-range", str(concurrency)]
        + ["--measurement-interval", "3000", "-s", "100", "--max-trials", "3"],  # three windows, any spread
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])

    def figure(pattern: str) -> float:
        found = re.search(pattern, done.stdout)
        if found is None:
            raise RuntimeError(f"no {pattern!r} in perf_analyzer's output:\n{done.stdout[-2000:]}")
        return float(found.group(1))

    return {
        "throughput": figure(r"Throughput: ([0-9.]+) infer/sec"),
        "p50_ms": figure(r"p50 latency: (\d+) usec") / 1e3,
        "p99_ms": figure(r"p99 latency: (\d+) usec") / 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    why = perf_analyzer.missing()
    if why:
        raise SystemExit(why)
    root = Path(tempfile.mkdtemp(prefix="tgcache-"))
    port = free_port()
    cmd = [sys.executable, "-m", "deploy.cli", "serve", "--run-dir", str(root / "run")]
    cmd += ["--model-repository", str(repository(root / "repo")), "--port", str(port), "--gpus", "none"]
    cmd += ["--cache-config", f"local,size={64 << 20}"]
    proc = launch("torchgate", cmd, root / "torchgate.log", f"http://127.0.0.1:{port}", cwd=REPO_ROOT)
    rows: list[tuple[int, int, str, dict[str, float], int]] = []
    try:
        wait_ready(proc, lambda: http_status(proc.url + "/v2/health/ready", timeout=2) == 200, 180)
        for round_ in range(1, args.rounds + 1):
            for c in (int(x) for x in args.concurrency.split(",")):
                for model in MODELS if round_ % 2 else reversed(MODELS):
                    before = hits(proc.url, model)
                    figures = measure(proc.url, model, c)
                    rows.append((round_, c, model, figures, hits(proc.url, model) - before))
                    print(f"round {round_} c={c} {model}: {figures}", file=sys.stderr, flush=True)
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n`python -m benchmarks.response_cache --concurrency {args.concurrency} --rounds {args.rounds}` "
        "(perf_analyzer over HTTP, the same request each time)\n"
    )
    print("| round | conns | model | infer/s | p50 | p99 | cache hits |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for round_, c, model, f, hit in rows:
        print(
            f"| {round_} | {c} | {model} | {f['throughput']:,.0f} | {f['p50_ms']:.2f} ms | "
            f"{f['p99_ms']:.2f} ms | {hit:,} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
