"""MiniLM from raw sentences: torchgate with padded batching, the same model unbatched, and
sentence-transformers.

    python -m benchmarks.strings [--concurrency 1,8,32] [--duration 10] [--rounds 1] [--write
    docs/benchmarks.md]

Three ways to embed the same pool of sentences (6 to 120 words, so their token lengths differ):

- ``padded``: the shipped ``examples/repository/minilm`` (tokenized by its handler, requests of different
lengths
  padded into one batch, in length buckets), one Open Inference Protocol JSON request per sentence;
- ``unbatched``: the same model folder without ``[padding]``: requests of different lengths never batch
together,
  which is how torchgate ran a text model before;
- ``sentence-transformers``: ``SentenceTransformer.encode(pool, batch_size=B)`` called directly, in this
  process, with B equal to the concurrency (no HTTP, no tokenization in another process).

Each torchgate variant is served by ``torchgate serve`` (one gateway process, one CPU worker with one torch
thread; sentence-transformers also gets one torch thread) and loaded with wrk at each concurrency. Average
batch size is the worker's own count (inference_count / execution_count over the run, from the statistics
endpoint). The machine is shared: both servers stay up and the three ways run in turn for each round and
concurrency; compare ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import statistics
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.load import run_wrk, write_script
from benchmarks.payloads import HttpRequest
from benchmarks.procs import http_status, launch, wait_ready
from harness.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "strings"
TORCHGATE = ROOT / ".venv" / "bin" / "torchgate"
BEGIN, END = "<!-- strings:begin -->", "<!-- strings:end -->"
VARIANTS = ("padded", "unbatched")


def sentences(count: int = 64) -> list[str]:
    """Windows of English text from the model's README, 6 to 120 words long, in a fixed shuffled order."""
    from examples.fetch_minilm import package_folder

    words = [w for w in (package_folder() / "README.md").read_text().split() if w.isascii() and w.isalpha()]
    rng = np.random.default_rng(7)
    lengths = np.linspace(6, 120, count).round().astype(int)
    rng.shuffle(lengths)
    return [" ".join(words[(s := int(rng.integers(0, len(words) - 130))) : s + n]) for n in lengths]


def repository(variant: str) -> Path:
    """Write the example model folder (``[padding]`` dropped for ``unbatched``) into its own repository."""
    from examples.fetch_minilm import fetch

    repo = WORK / variant / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    folder = repo / "minilm"
    shutil.copytree(ROOT / "examples" / "repository" / "minilm", folder, ignore=shutil.ignore_patterns("1"))
    if variant == "unbatched":
        config = (folder / "config.toml").read_text()
        config = re.sub(r"\n\[padding\].*?(?=\n\[\[input\]\])", "\n", config, flags=re.S)
        (folder / "config.toml").write_text(config)
    fetch(folder)
    return repo


def batch_counts(url: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{url}/v2/models/minilm/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def serve(variant: str) -> tuple[Any, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_dir = WORK / variant / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        str(TORCHGATE),
        "serve",
        "--run-dir",
        str(run_dir),
        "--model-repository",
        str(repository(variant)),
        "--port",
        str(port),
        "--gpus",
        "none",
        "--cpu-workers",
        "1",
        "--worker-threads",
        "1",
    ]
    launched = launch(variant, cmd, WORK / variant / "torchgate.log", url, cwd=ROOT)
    wait_ready(launched, lambda: http_status(url + "/v2/health/ready", timeout=2) == 200, 180)
    return launched, url


def requests_for(pool: list[str]) -> list[HttpRequest]:
    def body(sentence: str) -> bytes:
        doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [sentence]}]}
        return json.dumps(doc).encode()

    return [
        HttpRequest("/v2/models/minilm/infer", body(s), {"Content-Type": "application/json"}) for s in pool
    ]


def worker_process(launched: Any) -> psutil.Process:
    """Return the model worker under ``torchgate serve``."""
    for child in psutil.Process(launched.proc.pid).children(recursive=True):
        if "inference_worker.worker" in " ".join(child.cmdline()):
            return child
    raise RuntimeError("no worker process under torchgate serve")


def cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure_torchgate(
    url: str, worker: psutil.Process, script: Path, concurrency: int, duration: float
) -> dict[str, float]:
    run_wrk(url, script, concurrency, 2.0, 60)  # warm-up
    before, cpu_before = batch_counts(url), cpu_of(worker)
    result = run_wrk(url, script, concurrency, duration, 60)
    after, cpu_after = batch_counts(url), cpu_of(worker)
    executions = max(1, after[1] - before[1])
    sentences_done = max(1, after[0] - before[0])
    return {
        "rps": result.throughput,
        "batch": (after[0] - before[0]) / executions,
        "p50_ms": result.p50_ms,
        "errors": result.errors,
        "cpu_ms": (cpu_after - cpu_before) / sentences_done * 1000,
    }


@functools.cache
def reference_model() -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    from examples.fetch_minilm import package_folder

    torch.set_num_threads(1)
    return SentenceTransformer(str(package_folder()), device="cpu")


def measure_sentence_transformers(pool: list[str], batch_size: int, duration: float) -> dict[str, float]:
    model = reference_model()
    model.encode(pool[:batch_size], batch_size=batch_size)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        model.encode(pool, batch_size=batch_size)
        done += len(pool)
    return {
        "rps": done / (time.perf_counter() - start),
        "batch": float(batch_size),
        "p50_ms": 0.0,
        "errors": 0,
    }


def cpu_seconds(run: Any, repeat: int = 3) -> float:
    """Return the least CPU time (this process) of ``repeat`` calls: other processes' load hardly counts."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def measure_compute(pool: list[str], batch_size: int) -> list[tuple[str, float]]:
    """Sentences per CPU second, in this process on one thread: the pipeline's batching against encode."""
    import torch

    from inference_worker import strings
    from inference_worker.compute import BatchTimes
    from inference_worker.pipeline import Pipeline
    from inference_worker.protocol import TensorMeta
    from inference_worker.repository import load_model_config

    torch.set_num_threads(1)
    pipeline = Pipeline(load_model_config(repository("padded") / "minilm"), "1", torch.device("cpu"))
    pipeline.warm_up()
    admitted = []
    for sentence in pool:
        blob = strings.serialize([sentence.encode()])
        admitted.append(pipeline.admit([(TensorMeta("text", "BYTES", (1, 1)), memoryview(blob))], 1))
    buckets: dict[Any, list[Any]] = {}
    for request in admitted:
        buckets.setdefault(pipeline.batch_key(request), []).append(request)

    def one_by_one() -> None:
        for request in admitted:
            pipeline.run([request], BatchTimes())

    def padded(groups: list[list[Any]]) -> Any:
        def run() -> None:
            for group in groups:
                for i in range(0, len(group), batch_size):
                    pipeline.run(group[i : i + batch_size], BatchTimes())

        return run

    model = reference_model()
    rows = [
        ("torchgate pipeline, one request per batch", one_by_one),
        (
            f"torchgate pipeline, padded batches of {batch_size} in length buckets (as served)",
            padded(list(buckets.values())),
        ),
        (f"torchgate pipeline, padded batches of {batch_size}, no buckets", padded([admitted])),
        ("sentence-transformers encode, batch_size=1", lambda: model.encode(pool, batch_size=1)),
        (
            f"sentence-transformers encode, batch_size={batch_size}",
            lambda: model.encode(pool, batch_size=batch_size),
        ),
    ]
    return [(name, len(pool) / cpu_seconds(run)) for name, run in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--write", type=Path, default=None, help="put the table into this markdown file")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    pool = sentences()
    script = write_script(requests_for(pool), WORK / "wrk")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    load_before = os.getloadavg()[0]
    servers = {variant: serve(variant) for variant in VARIANTS}  # both up, so that runs interleave
    workers = {variant: worker_process(launched) for variant, (launched, _) in servers.items()}
    try:
        for _ in range(args.rounds):
            for c in concurrencies:
                row = measure_sentence_transformers(pool, c, args.duration)
                results.setdefault(("sentence-transformers", c), []).append(row)
                print(f"sentence-transformers batch={c}: {row}", flush=True)
                for variant, (_, url) in servers.items():
                    row = measure_torchgate(url, workers[variant], script, c, args.duration)
                    results.setdefault((variant, c), []).append(row)
                    print(f"{variant} c={c}: {row}", flush=True)
    finally:
        for launched, _ in servers.values():
            launched.stop()
    load_after = os.getloadavg()[0]
    compute = measure_compute(pool, 8)
    table = render(results, concurrencies, args, compute, (load_before, load_after))
    print(table)
    if args.write is not None:
        write(args.write, table)


def render(
    results: dict[tuple[str, int], list[dict[str, float]]],
    concurrencies: list[int],
    args: Any,
    compute: list[tuple[str, float]],
    load: tuple[float, float],
) -> str:
    def median(key: tuple[str, int], field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    lines = [
        BEGIN,
        "## MiniLM from raw sentences: padded batching (issue 15)",
        "",
        "Generated by `benchmarks/strings.py`; rerun with:",
        "",
        "```",
        f"python -m benchmarks.strings --concurrency {args.concurrency} --duration {args.duration:g} "
        f"--rounds {args.rounds} --write docs/benchmarks.md",
        "```",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on "
        f"{platform.machine()}, 2 shared cores, CPU "
        "only. all-MiniLM-L6-v2 (`examples/repository/minilm`) embeds 64 sentences of 6 to 120 words, one "
        "sentence per request (Open Inference Protocol JSON, BYTES input), "
        "through `torchgate serve` with one "
        "gateway process and one CPU worker of one torch thread. `padded`: the shipped config (requests of "
        "different lengths padded into one batch of up to 8, length buckets 16/32/64/128 tokens, 2 ms batch "
        "delay); "
        "`unbatched`: the same folder without `[padding]` (requests of different lengths never batch, as "
        "before this issue); `sentence-transformers`: `encode(sentences, batch_size=c)` called directly in "
        "one process with one torch thread (no HTTP). Average batch = sentences per model execution as the "
        "worker counts them; worker CPU = CPU seconds the worker process spent per sentence (psutil), which "
        "the other work on the machine hardly changes. The machine is shared with other work (load average "
        f"{load[0]:.1f} when the run began and {load[1]:.1f} when it ended, "
        "on 2 cores): req/s swing with it, "
        "so compare within a row and lean on the CPU figures.",
        "",
        "| concurrency (or batch size) | padded req/s | padded avg batch | padded worker CPU ms/sentence | "
        "unbatched req/s | unbatched avg batch | unbatched worker CPU "
        "ms/sentence | padded / unbatched req/s | "
        "sentence-transformers sentences/s | padded / sentence-transformers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in concurrencies:
        padded, unbatched = median(("padded", c), "rps"), median(("unbatched", c), "rps")
        st = median(("sentence-transformers", c), "rps")
        lines.append(
            f"| {c} | {padded:.1f} | {median(('padded', c), 'batch'):.1f} | "
            f"{median(('padded', c), 'cpu_ms'):.0f} | {unbatched:.1f} | "
            f"{median(('unbatched', c), 'batch'):.1f} | {median(('unbatched', c), 'cpu_ms'):.0f} | "
            f"{padded / unbatched:.2f}x | {st:.1f} | {padded / st:.2f}x |"
        )
    errors = sum(r["errors"] for rows in results.values() for r in rows)
    lines += [
        "",
        f"Errors (non-2xx or socket) over all runs: {errors:.0f}.",
        "",
        "The model's own work, without HTTP and without the other processes' load: sentences per CPU second "
        "of one process on one torch thread (the least of three passes over the same 64 sentences; "
        "`time.process_time`, so what other work on the machine takes hardly counts):",
        "",
        "| how | sentences per CPU second | vs one by one |",
        "|---|---|---|",
    ]
    base = compute[0][1]
    lines += [f"| {name} | {rate:.1f} | {rate / base:.2f}x |" for name, rate in compute]
    lines.append(END)
    return "\n".join(lines)


def write(path: Path, table: str) -> None:
    """Replace the block between the markers in ``path`` (or append it)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + table + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + table + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
