"""Write ``docs/benchmarks-gpu.md`` from one GPU benchmark run: figures, the issue-11 targets, the recipe."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.gpu import Report, Run

RECIPE = """\
## How to run it on the offline GPU host (one call)

The GPU host has Python 3.12, torch 2.11 (CUDA 13.0), torchvision, numpy, msgpack, werkzeug, click, psutil and
nvidia-smi, but not flask, gunicorn, pyzmq, supervisor, orjson, LitServe or wrk, and no network
(`/work/shared/gpu/README.md`). So, here, once (network needed; `.gpu/` is git-ignored, ~15 MB):

    bash benchmarks/gpu_wheelhouse.sh            # .gpu/whl, .gpu/litserve, .gpu/deb (wrk)

then, with the device tool, one command that carries `.gpu/` and brings the results back in `$OUT`:

    run(command="bash benchmarks/gpu_host.sh", carry=[".gpu"], timeout_s=600)

`benchmarks/gpu_host.sh` installs the wheels into `/tmp/tg-site` (LitServe's into `/tmp/tg-litserve`, apart,
as its pinned fastapi must not shadow anything), unpacks wrk, checks the host (`python3 -m benchmarks.gpu`
says what is missing and stops), runs `python3 -m benchmarks.gpu --mode gpu` bounded by `timeout`, and copies
`docs/benchmarks-gpu.md`, `results.json` and the systems' logs to `$OUT`. Read them here, then commit
`docs/benchmarks-gpu.md` from `$OUT`. A run takes about 5-6 minutes (two models, four systems, two
concurrencies, 10 s per load run, the raw model at batch 1 to 64); `GPU_BENCH_ARGS` passes more flags (say
`--workers-per-gpu 2`, `--concurrency 1,64,256`).
"""


def _rate(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _ms(v: float | None) -> str:
    return "–" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _find(runs: list[Run], workload: str, system: str, fmt: str, c: int) -> Run | None:
    for r in runs:
        if (r.workload, r.system, r.fmt, r.concurrency) == (workload, system, fmt, c):
            return r
    return None


def _raw(report: Report, workload: str, batch: int) -> dict[str, float] | None:
    for p in report.raw.get(workload, []):
        if int(p["batch"]) == batch:
            return p
    return None


def targets(report: Report) -> list[tuple[str, str, str]]:
    """Return (target, measured, verdict) for each issue-11 target this run can judge."""
    out: list[tuple[str, str, str]] = []
    concurrencies = report.plan["sizes"]["concurrencies"]
    high = max(concurrencies)

    def verdict(ok: bool) -> str:
        return "holds" if ok else "does not hold"

    raw64, raw1 = _raw(report, "resnet50", 64), _raw(report, "resnet50", 1)
    tg = _find(report.runs, "resnet50", "torchgate", "binary", high)
    if tg and raw64:
        ratio = tg.load["throughput"] / raw64["samples_per_s"]
        out.append(
            (
                f"ResNet-50 binary c={high}: served >= 0.8x raw batch 64",
                f"{_rate(tg.load['throughput'])} / {_rate(raw64['samples_per_s'])} = {ratio:.2f}x",
                verdict(ratio >= 0.8),
            )
        )
    if tg and tg.gpu_busy is not None:
        out.append(
            (f"ResNet-50 binary c={high}: GPU busy >= 85%", f"{tg.gpu_busy:.0f}%", verdict(tg.gpu_busy >= 85))
        )
    if tg and tg.processes.get("worker"):
        per = tg.cores.get("worker", 0.0) / tg.processes["worker"]
        out.append(
            (
                f"ResNet-50 binary c={high}: each worker <= 1.5 CPU cores",
                f"{per:.2f} cores per worker ({tg.processes['worker']} workers)",
                verdict(per <= 1.5),
            )
        )
    one = _find(report.runs, "resnet50", "torchgate", "binary", 1)
    if one and raw1:
        out.append(
            (
                "ResNet-50 binary c=1: p50 <= raw batch-1 + 2 ms",
                f"{_ms(one.load['p50_ms'])} vs {_ms(raw1['p50_ms'])} + 2 ms",
                verdict(one.load["p50_ms"] <= raw1["p50_ms"] + 2),
            )
        )
    seed = _find(report.runs, "digits", "seed", "json", 1)
    for fmt in ("binary", "json"):
        d = _find(report.runs, "digits", "torchgate", fmt, 1)
        if d and seed:
            out.append(
                (
                    f"digits c=1 ({fmt}): p50 <= the seed's way + 0.5 ms",
                    f"{_ms(d.load['p50_ms'])} vs {_ms(seed.load['p50_ms'])} + 0.5 ms",
                    verdict(d.load["p50_ms"] <= seed.load["p50_ms"] + 0.5),
                )
            )
    return out


def _cores(run: Run) -> str:
    parts = []
    for name, cores in sorted(run.cores.items(), key=lambda kv: -kv[1]):
        if cores < 0.005:
            continue
        n = run.processes.get(name, 1)
        parts.append(f"{name} {cores:.2f}" + (f" ({n})" if n > 1 else ""))
    return ", ".join(parts)


def workload_section(report: Report, workload: str) -> list[str]:
    out = [f"## {workload}", "", f"Model: {report.models.get(workload, '?')}.", ""]
    raw = report.raw.get(workload, [])
    if raw:
        how = (
            "The raw model on the GPU, called in a loop (input copied from pinned "
            "memory, output back, synchronised):"
            if report.mode == "gpu"
            else "The raw model on the CPU (1 thread), called in a loop:"
        )
        out += [
            how,
            "",
            "| batch | samples/s | p50 ms per call | p99 ms per call |",
            "|---:|---:|---:|---:|",
        ]
        out += [
            f"| {int(p['batch'])} | {_rate(p['samples_per_s'])} | {_ms(p['p50_ms'])} | {_ms(p['p99_ms'])} |"
            for p in raw
        ]
        out.append("")
    runs = [r for r in report.runs if r.workload == workload]
    best = max((p["samples_per_s"] for p in raw), default=None)
    if runs:
        out += [
            "Served, one sample per request (÷ raw: requests/s over the raw model's best samples/s; batch: "
            "torchgate's average batch and its workers' queue / input staging / compute time per request; "
            "cores: CPU cores used per process class over the run, (n) processes):",
            "",
            "| system | format | conns | req/s | ÷ raw | p50 ms | p99 ms | errors "
            "| batch (queue / input / infer ms) | GPU busy | CPU cores |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
        ]
        for r in sorted(runs, key=lambda r: (r.concurrency, r.system != "torchgate", r.system, r.fmt)):
            b = r.batch
            batch = (
                f"{b['batch']:.1f} ({b['queue_ms']:.2f} / {b['input_ms']:.2f} / {b['infer_ms']:.2f})"
                if b
                else "–"
            )
            ratio = f"{r.load['throughput'] / best:.2f}" if best else "–"
            busy = f"{r.gpu_busy:.0f}%" if r.gpu_busy is not None else "–"
            out.append(
                f"| {r.system} | {r.fmt} | {r.concurrency} | {_rate(r.load['throughput'])} | {ratio} | "
                f"{_ms(r.load['p50_ms'])} | {_ms(r.load['p99_ms'])} | "
                f"{r.load['errors']} / {r.load['requests']} | "
                f"{batch} | {busy} | {_cores(r)} |"
            )
        out.append("")
    described = report.describe.get(workload, {})
    if described:
        out += ["Settings:", ""] + [f"- {name}: {text}" for name, text in described.items()] + [""]
    skipped = report.skipped.get(workload, {})
    if skipped:
        out += ["Not measured:", ""] + [f"- {name}: {why}" for name, why in skipped.items()] + [""]
    return out


def render(report: Report) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = report.host
    if report.mode == "gpu":
        head = [
            "# torchgate on one GPU (issue 11)",
            "",
            f"Measured {when} on {host.get('gpu', '?')} ({host.get('cores')} "
            f"cores), Python {host.get('python')}, "
            f"torch {host.get('torch')}; load from {report.load_tool}. Command: `{report.command}`.",
        ]
    else:
        head = [
            "# GPU benchmark: CPU check run (no GPU figures)",
            "",
            "A small, short run of the GPU benchmark on a CPU-only machine "
            f"({when}, {host.get('cores')} cores, "
            f"torch {host.get('torch')}, load from {report.load_tool}), to check "
            "that it works: the figures below "
            f"are not GPU figures and not comparable to them. Command: `{report.command}`.",
            "",
            "**No GPU figure has been measured with this benchmark yet.** On a "
            "GPU host, the recipe at the end "
            "runs it in one call and writes this page anew with the GPU figures and issue 11's targets.",
        ]
    out = head + [""]
    checks = targets(report)
    if checks:
        title = (
            "Issue 11's targets"
            if report.mode == "gpu"
            else "Issue 11's targets, computed on this CPU run (not the targets' conditions)"
        )
        out += [f"## {title}", "", "| target | measured | verdict |", "|---|---|---|"]
        out += [f"| {t} | {m} | {v} |" for t, m, v in checks] + [""]
    for workload in report.models:
        out += workload_section(report, workload)
    out += [RECIPE]
    return "\n".join(out)


def write_report(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report))


__all__ = ["RECIPE", "render", "targets", "write_report"]
