"""Write ``docs/benchmarks.md`` and the throughput / latency plot from one run's results."""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.models import WORKLOAD_SPECS
from benchmarks.raw import RawResult
from benchmarks.results import Results, Row

ORDER = ("torchgate", "seed", "torchserve", "litserve", "empty_flask")
REFERENCE = "torchgate"


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _sorted(rows: list[Row]) -> list[Row]:
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r.system, 99), r.fmt != "json", r.fmt))


def _reference(rows: list[Row], fmt: str) -> Row | None:
    for row in rows:
        if row.system == REFERENCE and row.fmt == fmt:
            return row
    return None


def _ratio(row: Row, ref: Row | None, c: int) -> str:
    if ref is None or row.system == REFERENCE or c not in ref.throughput or c not in row.throughput:
        return ""
    if row.throughput[c] <= 0:
        return "∞" if ref.throughput[c] > 0 else ""
    return f"{ref.throughput[c] / row.throughput[c]:.2f}"


def workload_section(results: Results, workload: str, concurrencies: tuple[int, ...]) -> list[str]:
    """Return the markdown of one workload: throughput, ratios, latency, raw compute, failures, settings."""
    spec = WORKLOAD_SPECS[workload]
    rows = _sorted(results.rows(workload))
    out = [f"## {spec.title}", ""]
    if rows:
        head = " | ".join(f"c={c}" for c in concurrencies)
        out += [
            "Throughput (successful requests/s, median of rounds), errors over all runs, peak memory (RSS of "
            "the whole process tree), and **torchgate ÷ system** throughput on the same format "
            "(> 1: torchgate ahead).",
            "",
            f"| system | format | {head} | errors / requests | memory MB | "
            f"{' | '.join(f'tg÷ c={c}' for c in concurrencies)} |",
            "|---|---|" + "---:|" * (2 * len(concurrencies) + 2),
        ]
        for row in rows:
            ref = _reference(rows, row.fmt) or _reference(rows, "json")
            rates = " | ".join(
                _fmt_rate(row.throughput.get(c)) + ("*" if c in row.sparse else "") for c in concurrencies
            )
            ratios = " | ".join(_ratio(row, ref, c) for c in concurrencies)
            out.append(
                f"| {row.label} | {row.fmt} | {rates} | {row.errors} / {row.requests} | "
                f"{row.rss_bytes / 2**20:,.0f} | {ratios} |"
            )
        if any(row.sparse for row in rows):
            out += [
                "",
                "\\* fewer than two answers per connection in a run: the system could not keep up within the "
                "run's duration (requests still queued when wrk stopped are not counted); a lower bound.",
            ]
        out += [
            "",
            "Latency p50 / p99 (ms, from wrk's latency distribution):",
            "",
            f"| system | format | {head} |",
            "|---|---|" + "---:|" * len(concurrencies),
        ]
        for row in rows:
            cells = " | ".join(
                f"{_fmt_ms(row.p50_ms.get(c))} / {_fmt_ms(row.p99_ms.get(c))}" for c in concurrencies
            )
            out.append(f"| {row.label} | {row.fmt} | {cells} |")
        out.append("")
    raw = results.raw_for(workload)
    if raw:
        out += [
            "The raw model in a loop, no HTTP (the compute limit; same torch threads as a worker; measured "
            "before each round and, except in quick mode, after the last; medians):",
            "",
            "| loop | samples/s | p50 per call ms | p99 per call ms |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {r.label} | {_fmt_rate(r.samples_per_s)} | {_fmt_ms(r.p50_ms)} | {_fmt_ms(r.p99_ms)} |"
            for r in raw
        ]
        out.append("")
    failures = results.failures.get(workload, {})
    if failures:
        out += ["Not measured:", ""]
        out += [f"- {results.labels.get(name, name)}: {reason}" for name, reason in failures.items()]
        out.append("")
    described = results.describe.get(workload, {})
    if described:
        out += ["Settings:", ""]
        out += [f"- {results.labels.get(name, name)}: {text}" for name, text in described.items()]
        startup = results.startup_s.get(workload, {})
        if startup:
            out.append(
                "- start-up to ready (s, all launched at once): "
                + ", ".join(f"{results.labels.get(n, n)} {t:.1f}" for n, t in startup.items())
            )
        out.append("")
    return out


def _best(rows: list[Row], system: str, c: int, fmt: str | None = None) -> float | None:
    values = [
        r.throughput[c]
        for r in rows
        if r.system == system and c in r.throughput and (fmt is None or r.fmt == fmt)
    ]
    return max(values) if values else None


def _raw(raw: list[RawResult], batched: bool, processes: int | None = None) -> RawResult | None:
    for r in raw:
        if (r.batch > 1) == batched and (processes is None or r.processes == processes):
            return r
    return None


def targets_section(results: Results, concurrencies: tuple[int, ...]) -> list[str]:
    """Check issue 7's targets against what was measured; say 'not measured' where data is missing."""
    out = ["## Targets (issue 7), checked against this run", ""]
    rivals = ("torchserve", "litserve", "seed")
    for workload in WORKLOAD_SPECS:
        rows = results.rows(workload)
        if not rows:
            continue
        if not any(r.system == REFERENCE for r in rows):
            out.append(
                f"- {workload}: torchgate ahead of the others at c≥8: **not "
                "measured** (torchgate did not run)"
            )
            continue
        misses, checked = [], 0
        for c in (c for c in concurrencies if c >= 8):
            for rival in rivals:
                for fmt in ("json", "binary"):
                    theirs, ours = _best(rows, rival, c, fmt), _best(rows, REFERENCE, c, fmt)
                    if theirs is None or ours is None:
                        continue
                    checked += 1
                    if ours <= theirs:
                        misses.append(f"{rival} {fmt} c={c} ({_fmt_rate(theirs)} vs {_fmt_rate(ours)} req/s)")
        verdict = (
            "holds" if not misses and checked else ("not measured" if not checked else "**does not hold**")
        )
        out.append(
            f"- {workload}: torchgate ahead of TorchServe, LitServe and the seed app at c≥8, same format "
            f"({checked} comparisons): {verdict}" + (": behind " + "; ".join(misses) if misses else "")
        )
    mlp_rows, mlp_raw = results.rows("mlp"), _raw(results.raw_for("mlp"), False, 1)
    tg = [r for r in mlp_rows if r.system == REFERENCE and 1 in r.p50_ms]
    if tg and mlp_raw:
        for row in tg:
            added = row.p50_ms[1] - mlp_raw.p50_ms
            out.append(
                f"- mlp, {row.fmt}: added p50 latency at c=1 over the raw model's call "
                f"({_fmt_ms(row.p50_ms[1])} − {_fmt_ms(mlp_raw.p50_ms)} ms) = {added:.2f} ms: "
                f"{'holds' if added <= 1.0 else '**does not hold**'} (target ≤ 1 ms)"
            )
    else:
        out.append("- mlp: added latency at c=1 ≤ 1 ms: **not measured**")
    mini_rows, mini_raw = results.rows("minilm"), _raw(results.raw_for("minilm"), True)
    tg_32 = _best(mini_rows, REFERENCE, 32)
    if tg_32 is not None and mini_raw is not None:
        share = tg_32 / mini_raw.samples_per_s
        out.append(
            f"- minilm: torchgate at c=32 reaches {share:.0%} of the raw batched model's throughput "
            f"({_fmt_rate(tg_32)} vs {_fmt_rate(mini_raw.samples_per_s)}/s): "
            f"{'holds' if share >= 0.8 else '**does not hold**'} (target ≥ 80%)"
        )
    else:
        out.append("- minilm: ≥ 80% of the raw batched throughput at c=32: **not measured**")
    out.append("")
    return out


def write_markdown(
    results: Results,
    path: Path,
    plot: Path | None,
    concurrencies: tuple[int, ...],
    workloads: tuple[str, ...],
) -> None:
    """Write the whole report to ``path``."""
    s = results.settings
    out = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py`; do not edit by hand. Beside it: the backend core alone, without "
        "HTTP ([benchmarks-wire.md](benchmarks-wire.md), `python -m benchmarks.wire`), torchgate against the "
        "seed's app with greedy batching ([benchmarks-seed.md](benchmarks-seed.md)), overload "
        "([reliability.md](reliability.md)), and where the time goes, with "
        "the profiles behind each change to "
        "the hot path ([performance.md](performance.md)). Rerun with:",
        "",
        "```",
        results.command,
        "```",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node() or 'this host'}: "
        f"{platform.processor() or platform.machine()}, {_cores()} cores, "
        f"Python {platform.python_version()}, "
        f"torch {_torch_version()}, CPU only. The machine is shared and noisy: every system runs on the same "
        "model and load, interleaved (for each round, for each concurrency, for each format, every system in "
        "a rotating order), and the tables show medians over rounds. Compare ratios, not absolute figures.",
        "",
        "Method: each system is started once per workload as real processes "
        "on a free port, waits for its own "
        "readiness signal plus one successful request, gets a warm-up run, and is killed as a process tree "
        "afterwards. Load: `wrk -t1 -c<concurrency> -d<duration> --latency` with a Lua script that cycles "
        "through a fixed pool of request bodies and counts non-2xx answers as errors. Memory: peak total RSS "
        "of the system's process tree (psutil, sampled every 0.5 s during the "
        "runs; pages shared between processes count in each "
        "of them).",
        "",
        f"Common settings: HTTP {s['http_processes']} process x {s['http_threads']} threads; "
        f"{s['model_workers']} model workers x {s['torch_threads']} torch threads; max batch size "
        f"{s['max_batch_size']}; max batch delay {s['max_batch_delay_ms']} ms; queue {s['queue_size']}; "
        f"{s['duration_s']} s per run on (a), x{s['duration_factor']} per workload, {s['rounds']} round(s), "
        f"warm-up {s['warmup_s']} s; after every run the runner waits until the system is idle again "
        f"(< 0.3 cores for 1 s) so that no backlog spills into the next measurement; "
        f"concurrency {', '.join(map(str, concurrencies))}.",
        "",
        "To run it: `make bench` (two rounds, about 40 minutes) or `make "
        "bench-quick` (one short round at c=1 and "
        "c=32, about 7 minutes here); or "
        "`python -m benchmarks.run [--quick] [--workloads mlp,minilm,conv] "
        "[--systems torchgate,seed,torchserve,"
        "litserve,empty_flask] [--formats json,binary] [--concurrency "
        "1,8,32,128] [--duration S] [--rounds N] "
        "[--batch-delay-ms MS]`. It needs wrk (installed with apt-get when "
        "missing and run as root), Java 11+ for "
        "TorchServe and the `bench` extra; models, model stores, run directories and logs go to "
        "`benchmarks/.work/`.",
        "",
        'Formats: `json` is the seed\'s `{"input": ...}` for the seed app, '
        "TorchServe and LitServe, and an Open "
        "Inference Protocol JSON request for torchgate (and the empty Flask "
        "app, which only reads it); `binary` "
        "is Triton's binary tensor extension with binary outputs for "
        "torchgate and raw tensor bytes in and out "
        "for TorchServe. Every system runs the same exported `model.pt2` (`torch.export`).",
        "",
    ]
    if plot is not None and plot.exists():
        out += [f"![throughput and latency against concurrency]({plot.name})", ""]
    out += targets_section(results, concurrencies)
    for workload in workloads:
        out += workload_section(results, workload, concurrencies)
    kept = ""
    if path.exists():  # sections other benchmarks keep in this file (benchmarks/strings.py)
        old = path.read_text()
        if "<!-- strings:begin -->" in old and "<!-- strings:end -->" in old:
            start, end = old.index("<!-- strings:begin -->"), old.index("<!-- strings:end -->")
            kept = "\n" + old[start : end + len("<!-- strings:end -->")] + "\n"
    path.write_text("\n".join(out).rstrip() + "\n" + kept)


def write_plot(
    results: Results, path: Path, concurrencies: tuple[int, ...], workloads: tuple[str, ...]
) -> bool:
    """Plot throughput and p50/p99 latency against concurrency, one row per workload; return False if
    empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [w for w in workloads if results.rows(w)]
    if not measured:
        return False
    fig, axes = plt.subplots(len(measured), 2, figsize=(13, 4.2 * len(measured)), squeeze=False)
    for i, workload in enumerate(measured):
        rows = _sorted(results.rows(workload))
        ax_t, ax_l = axes[i]
        for k, row in enumerate(rows):
            cs = [c for c in concurrencies if c in row.throughput]
            color = f"C{k % 10}"
            name = f"{row.label} ({row.fmt})"
            ax_t.plot(cs, [row.throughput[c] for c in cs], "o-", color=color, label=name)
            ax_l.plot(cs, [row.p50_ms[c] for c in cs], "o-", color=color, label=f"{name} p50")
            ax_l.plot(cs, [row.p99_ms[c] for c in cs], "x--", color=color, label=f"{name} p99")
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(concurrencies), [str(c) for c in concurrencies])
            ax.set_xlabel("concurrency")
            ax.grid(True, alpha=0.3)
        ax_t.set_ylabel("requests/s")
        ax_t.set_title(f"{WORKLOAD_SPECS[workload].title}: throughput")
        ax_l.set_yscale("log")
        ax_l.set_ylabel("latency ms (solid p50, dashed p99)")
        ax_l.set_title("latency")
        ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _torch_version() -> str:
    try:
        import torch

        return str(torch.__version__)
    except ImportError:
        return "?"
