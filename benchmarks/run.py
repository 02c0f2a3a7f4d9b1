"""Run the benchmark: ``python -m benchmarks.run [--quick] [--workloads mlp,minilm,conv] [--systems ...]``.

For each workload: export the model into a torchgate model repository, start every system on it, warm each
up, measure the raw model, then run wrk at each concurrency against each system, interleaved (rounds, then
concurrencies, then formats, then systems in a rotating order) so drift on a shared machine cancels out.
Writes ``docs/benchmarks.md`` and ``docs/benchmarks.png`` after every workload, so an interrupted run still
leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from benchmarks.load import LoadError, LoadResult, run_wrk, write_script
from benchmarks.models import (
    WORKLOAD_SPECS,
    WORKLOADS,
    Sample,
    collate,
    load_exported,
    samples,
    write_repository,
)
from benchmarks.payloads import FORMATS
from benchmarks.procs import Launched, StartError
from benchmarks.raw import measure
from benchmarks.report import write_markdown, write_plot
from benchmarks.results import Measurement, Results
from benchmarks.settings import DOCS_DIR, BenchSettings
from benchmarks.systems import ALL_SYSTEMS, StartContext, System
from harness.procs import free_port

DEFAULT_SYSTEMS = ("torchgate", "seed", "torchserve", "litserve", "empty_flask")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short runs, one round: a few minutes in all")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: mlp, minilm, conv")
    parser.add_argument(
        "--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma-separated, from {', '.join(ALL_SYSTEMS)}"
    )
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: json, binary")
    parser.add_argument(
        "--concurrency", default=None, help="comma-separated connection counts (default 1,8,32,128)"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None, help="measurements per point (median kept)")
    parser.add_argument(
        "--batch-delay-ms",
        type=float,
        default=None,
        help="max batch delay for every batching system (default 1 ms, TorchServe's minimum)",
    )
    parser.add_argument(
        "--model-workers", type=int, default=None, help="model-holding processes of every system (default 2)"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads per model worker (default 1)"
    )
    parser.add_argument(
        "--http-threads",
        type=int,
        default=None,
        help="gunicorn threads per process of every Flask-based system (default 32)",
    )
    parser.add_argument(
        "--http-processes",
        type=int,
        default=None,
        help="gunicorn processes of every Flask-based system, LitServe API servers (default 1)",
    )
    parser.add_argument(
        "--torchgate-defaults",
        action="store_true",
        help="torchgate sized by `torchgate serve` itself (the other systems keep the common sizes)",
    )
    parser.add_argument("--seed-processes", type=int, default=None, help="the seed app's gunicorn processes")
    parser.add_argument("--seed-threads", type=int, default=None, help="threads per seed app process")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-model loops")
    parser.add_argument("--output", type=Path, default=DOCS_DIR / "benchmarks.md")
    parser.add_argument("--plot", type=Path, default=DOCS_DIR / "benchmarks.png")
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> BenchSettings:
    s = BenchSettings.quick_mode() if args.quick else BenchSettings()
    if args.concurrency:
        s = replace(s, concurrencies=tuple(int(c) for c in args.concurrency.split(",")))
    if args.duration:
        s = replace(s, duration_s=args.duration)
    if args.rounds:
        s = replace(s, rounds=args.rounds)
    if args.batch_delay_ms is not None:
        s = replace(s, max_batch_delay_ms=args.batch_delay_ms)
    if args.model_workers is not None:
        s = replace(s, model_workers=args.model_workers)
    if args.torch_threads is not None:
        s = replace(s, torch_threads=args.torch_threads)
    if args.http_threads is not None:
        s = replace(s, http_threads=args.http_threads)
    if args.http_processes is not None:
        s = replace(s, http_processes=args.http_processes)
    if args.torchgate_defaults:
        s = replace(s, torchgate_defaults=True)
    if args.seed_processes is not None or args.seed_threads is not None:
        s = replace(s, seed_http_processes=args.seed_processes, seed_http_threads=args.seed_threads)
    return s


def ensure_wrk() -> None:
    """Install wrk with apt-get when it is missing and we may (root); otherwise say how."""
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk missing: apt-get install -y wrk")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: install it (apt-get install -y wrk) and rerun")


def choose(names: str, known: Collection[str], what: str) -> tuple[str, ...]:
    chosen = tuple(n.strip() for n in names.split(",") if n.strip())
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(known)})")
    return chosen


def expected_output(workload: str, repository: Path, sample: Sample) -> np.ndarray:
    """Return the exported model's own (first) output for one sample: every system must answer it."""
    import torch

    with torch.inference_mode():
        output = load_exported(repository, workload)(*collate(workload, [sample]))
    return np.asarray(output[0].numpy().reshape(-1), dtype=np.float32)


class Bench:
    """One benchmark run: the systems, their scripts, the measurements."""

    def __init__(
        self,
        settings: BenchSettings,
        systems: tuple[str, ...],
        formats: tuple[str, ...],
        results: Results,
        raw: bool,
    ) -> None:
        self.s, self.formats, self.results, self.raw = settings, formats, results, raw
        self.systems: dict[str, System] = {name: ALL_SYSTEMS[name]() for name in systems}
        for name, system in self.systems.items():
            results.labels[name] = system.label

    def start_all(self, workload: str, repository: Path) -> dict[str, tuple[Launched, StartContext]]:
        """Launch every system at once, then wait for each to be ready (start-up times overlap)."""
        pool = samples(workload)
        launched: dict[str, tuple[Launched, StartContext, float]] = {}
        failures = self.results.failures.setdefault(workload, {})
        for name, system in self.systems.items():
            reason = system.unavailable()
            if reason:
                log(f"{workload}: {name} skipped: {reason}")
                failures[name] = f"skipped: {reason}"
                continue
            ctx = StartContext(
                self.s, workload, repository, free_port(), self.s.work_dir / "systems" / workload / name
            )
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            log(f"{workload}: starting {name} on port {ctx.port}")
            try:
                launched[name] = (system.launch(ctx), ctx, time.monotonic())
            except (StartError, OSError, subprocess.SubprocessError) as exc:
                log(f"{workload}: {name} failed to start: {exc}")
                failures[name] = f"failed to start: {str(exc).splitlines()[0]}"
        running: dict[str, tuple[Launched, StartContext]] = {}
        expected = expected_output(workload, repository, pool[0])
        for name, (proc, ctx, t0) in launched.items():
            system = self.systems[name]
            try:
                formats = self.formats_of(system, workload)
                probes = [system.request(workload, fmt, pool[0]) for fmt in formats]
                system.await_ready(ctx, proc, probes, expected, formats)
            except (StartError, OSError, subprocess.SubprocessError) as exc:
                log(f"{workload}: {name} failed to start: {exc}")
                failures[name] = f"failed to start: {str(exc).splitlines()[0]}"
                continue
            except BaseException:  # interrupted: nothing launched may outlive the runner
                for other, _, _ in launched.values():
                    other.stop(grace_s=5)
                raise
            elapsed = time.monotonic() - t0
            self.results.startup_s.setdefault(workload, {})[name] = elapsed
            self.results.describe.setdefault(workload, {})[name] = system.describe(self.s, workload)
            log(f"{workload}: {name} ready in {elapsed:.1f} s")
            running[name] = (proc, ctx)
        return running

    def formats_of(self, system: System, workload: str) -> list[str]:
        return [f for f in system.formats(workload) if f in self.formats]

    def scripts(
        self, workload: str, running: dict[str, tuple[Launched, StartContext]]
    ) -> dict[tuple[str, str], Path]:
        pool = samples(workload)
        out = {}
        for name in running:
            system = self.systems[name]
            for fmt in self.formats_of(system, workload):
                folder = self.s.work_dir / "scripts" / workload / f"{name}_{fmt}"
                out[(name, fmt)] = write_script([system.request(workload, fmt, s) for s in pool], folder)
        return out

    def one_run(
        self, launched: Launched, script: Path, concurrency: int, duration_s: float
    ) -> tuple[int, LoadResult]:
        peak = [launched.rss_bytes()]

        def sample() -> None:
            peak[0] = max(peak[0], launched.rss_bytes())

        result = run_wrk(launched.url, script, concurrency, duration_s, self.s.request_timeout_s, sample)
        sample()
        return peak[0], result

    def settle(self, workload: str, name: str, launched: Launched) -> None:
        """Let ``name`` finish the backlog of the run that just ended before anything else is measured."""
        idle, waited = launched.wait_idle(self.s.idle_timeout_s)
        if not idle:
            log(f"{workload}: {name} still busy {waited:.0f} s after its run; going on")
        elif waited > 3:
            log(f"{workload}: {name} took {waited:.1f} s to serve its backlog")

    def measure_raw(self, workload: str, repository: Path) -> None:
        s = self.s
        plans = [(1, 1), (1, s.model_workers), (s.batch_size(workload), s.model_workers)]
        for batch, processes in plans:
            try:
                r = measure(workload, batch, processes, s.torch_threads, s.raw_duration_s, repository)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                log(f"{workload}: raw loop failed: {exc}")
                continue
            self.results.raw.append(r)
            log(f"{workload}: {r.label}: {r.samples_per_s:,.1f} samples/s, p50 {r.p50_ms:.2f} ms per call")

    def run_workload(self, workload: str, repository: Path) -> None:
        running = self.start_all(workload, repository)
        try:
            scripts = self.scripts(workload, running)
            for (name, fmt), script in scripts.items():
                log(f"{workload}: warm-up {name} {fmt}")
                try:
                    run_wrk(running[name][0].url, script, 8, self.s.warmup_s, self.s.request_timeout_s)
                except LoadError as exc:
                    log(f"{workload}: warm-up {name} {fmt} failed: {exc}")
                self.settle(workload, name, running[name][0])
            total = len(scripts) * len(self.s.concurrencies) * self.s.rounds
            done = 0
            for rnd in range(self.s.rounds):
                if self.raw:
                    self.measure_raw(workload, repository)
                for ci, c in enumerate(self.s.concurrencies):
                    order = [key for fmt in FORMATS for key in scripts if key[1] == fmt]
                    shift = (rnd + ci) % max(1, len(order))
                    for name, fmt in order[shift:] + order[:shift]:
                        launched = running[name][0]
                        done += 1
                        try:
                            rss, result = self.one_run(
                                launched, scripts[(name, fmt)], c, self.s.duration(workload)
                            )
                        except LoadError as exc:
                            log(f"[{done}/{total}] {workload} c={c} {fmt} {name}: wrk failed: {exc}")
                            continue
                        finally:
                            self.settle(workload, name, launched)
                        self.results.measurements.append(Measurement(workload, name, fmt, rnd, result, rss))
                        log(
                            f"[{done}/{total}] {workload} round {rnd + 1} c={c} {fmt} {name}: "
                            f"{result.throughput:,.1f} req/s, p50 {result.p50_ms:.2f} ms, "
                            f"p99 {result.p99_ms:.2f} ms, errors {result.errors}, {rss / 2**20:,.0f} MB"
                        )
            if self.raw and not self.s.quick:
                self.measure_raw(workload, repository)  # once more at the end: raw brackets the HTTP runs
        finally:
            for name, (launched, _) in running.items():
                log(f"{workload}: stopping {name}")
                launched.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    settings = build_settings(args)
    workloads = choose(args.workloads, WORKLOADS, "workloads")
    systems = choose(args.systems, ALL_SYSTEMS, "systems")
    formats = choose(args.formats, FORMATS, "formats")
    ensure_wrk()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.run" + ("" if not argv else " " + shlex.join(argv))
    results = Results(
        command=command,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
    )
    log(f"{command}: workloads {', '.join(workloads)}; systems {', '.join(systems)}")
    repository = write_repository(settings, workloads, log=log)
    bench = Bench(settings, systems, formats, results, raw=not args.no_raw)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for workload in workloads:
        log(f"== workload {workload}: {WORKLOAD_SPECS[workload].title}")
        bench.run_workload(workload, repository)
        (settings.work_dir / "results.json").write_text(json.dumps(results.to_dict(), indent=1))
        plotted = write_plot(results, args.plot, settings.concurrencies, workloads)
        write_markdown(
            results, args.output, args.plot if plotted else None, settings.concurrencies, workloads
        )
        log(f"wrote {args.output} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
