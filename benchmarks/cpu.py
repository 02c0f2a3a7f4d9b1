"""CPU time per request of every process of a system, under the same wrk load as ``benchmarks.run``.

    python -m benchmarks.cpu [--workload mlp] [--systems torchgate,seed] [--formats json,binary]
                             [--concurrency 32] [--duration 8] [--rounds 2] [--batch-delay-ms 0]
                             [--torchgate-defaults | --gateway-processes N --model-workers N
                                                     --torch-threads N]

When throughput stops growing, this says which process ran out of CPU and what a request costs each one. For
every system, format and round it prints requests/s, then, for each process of the system's tree, the CPU
milliseconds (user + system) it spent per answered request and its share of one core. Systems are started and
loaded exactly as ``benchmarks.run`` starts and loads them, one after the other, interleaved across rounds.
``--torchgate-defaults`` starts torchgate as ``torchgate serve`` sizes itself on this machine (gateway
processes and threads, CPU workers, torch threads), not with the benchmark's shared sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import replace

import psutil

from benchmarks.load import LoadError, run_wrk
from benchmarks.models import WORKLOADS, write_repository
from benchmarks.results import Results
from benchmarks.run import Bench, choose, ensure_wrk, log
from benchmarks.settings import BenchSettings
from benchmarks.systems import ALL_SYSTEMS


def label(process: psutil.Process) -> str:
    """A short name: the ``--name`` of gunicorn and workers, else the ``-m`` module, else the executable."""
    try:
        cmd = process.cmdline()
    except psutil.Error:
        return "?"
    for flag in ("--name", "-m"):
        if flag in cmd[:-1]:
            return cmd[cmd.index(flag) + 1]
    return process.name()


def cpu_by_process(processes: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    seconds = {}
    for p in processes:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            seconds[p.pid] = (f"{label(p)} [{p.pid}]", times.user + times.system)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mlp", choices=WORKLOADS)
    parser.add_argument("--systems", default="torchgate,seed")
    parser.add_argument("--formats", default="json,binary")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--torchgate-defaults", action="store_true", help="torchgate sized by `torchgate serve` itself"
    )
    parser.add_argument("--gateway-processes", type=int, default=None, help="torchgate's (default 1)")
    parser.add_argument("--model-workers", type=int, default=None, help="torchgate's CPU workers (default 2)")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="per torchgate CPU worker (default 1)"
    )
    parser.add_argument("--seed-processes", type=int, default=None, help="the seed app's gunicorn processes")
    parser.add_argument("--seed-threads", type=int, default=None, help="threads per seed app process")
    args = parser.parse_args(argv)
    ensure_wrk()
    settings = replace(
        BenchSettings(),
        max_batch_delay_ms=args.batch_delay_ms,
        rounds=args.rounds,
        seed_http_processes=args.seed_processes,
        seed_http_threads=args.seed_threads,
        torchgate_defaults=args.torchgate_defaults,
    )
    if args.torchgate_defaults and (args.gateway_processes or args.model_workers or args.torch_threads):
        parser.error("--torchgate-defaults leaves the sizes to torchgate: give no size with it")
    sizes = {"gateway_processes": args.gateway_processes, "model_workers": args.model_workers}
    sizes["torch_threads"] = args.torch_threads
    settings = replace(settings, **{k: v for k, v in sizes.items() if v is not None})
    systems = choose(args.systems, ALL_SYSTEMS, "systems")
    formats = choose(args.formats, ("json", "binary"), "formats")
    repository = write_repository(settings, (args.workload,), log=log)
    bench = Bench(
        settings, systems, formats, Results(command="python -m benchmarks.cpu", settings={}), raw=False
    )
    running = bench.start_all(args.workload, repository)
    try:
        scripts = bench.scripts(args.workload, running)
        for (name, _), script in scripts.items():
            run_wrk(running[name][0].url, script, 8, settings.warmup_s, settings.request_timeout_s)
            bench.settle(args.workload, name, running[name][0])
        for rnd in range(args.rounds):
            for (name, fmt), script in scripts.items():
                launched = running[name][0]
                before, started = cpu_by_process(launched.tree()), time.monotonic()
                try:
                    result = run_wrk(
                        launched.url, script, args.concurrency, args.duration, settings.request_timeout_s
                    )
                except LoadError as exc:
                    log(f"{name} {fmt}: wrk failed: {exc}")
                    continue
                elapsed, after = time.monotonic() - started, cpu_by_process(launched.tree())
                bench.settle(args.workload, name, launched)
                answered = max(1, result.ok)
                print(
                    f"\nround {rnd + 1}, {name} {fmt}, c={args.concurrency}: {result.throughput:,.0f} req/s, "
                    f"p50 {result.p50_ms:.2f} ms, errors {result.errors}"
                )
                total = 0.0
                for pid, (what, seconds) in sorted(after.items(), key=lambda kv: kv[1][0]):
                    used = seconds - before.get(pid, (what, seconds))[1]
                    total += used
                    if used > 0:
                        print(
                            f"  {used / answered * 1000:7.3f} ms/request {used / elapsed:6.0%} of "
                            f"a core  {what}"
                        )
                print(f"  {total / answered * 1000:7.3f} ms/request {total / elapsed:6.0%} of a core  total")
    finally:
        for launched, _ in running.values():
            launched.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
