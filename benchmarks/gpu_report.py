"""Write ``docs/benchmarks-gpu.md`` from one GPU benchmark run: figures, the issue-11 targets, the recipe."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.trace_summary import ORDER

if TYPE_CHECKING:
    from benchmarks.gpu import Report, Run

RECIPE = """\
## How to run it on the offline GPU host (one call)

The GPU host has Python 3.12, torch 2.11 (CUDA 13.0), torchvision, numpy, msgpack, werkzeug, click, psutil,
pytest and nvidia-smi, but not flask, gunicorn, pyzmq, supervisor, orjson, LitServe or wrk, and no network
(`/work/shared/gpu/README.md`). So, here, once (network needed; `.gpu/` is git-ignored, ~6 MB):

    bash benchmarks/gpu_wheelhouse.sh            # .gpu/whl, .gpu/litserve, .gpu/deb (wrk)

It downloads pyproject.toml's dependencies with theirs, for CPython 3.12 on manylinux x86-64, less what the
host has (a dependency added later comes along by itself); LitServe 0.2.19's pinned set with anyio, sniffio
and h11; wrk's Debian packages. Then, with the device tool, one command that carries `.gpu/` and brings the
results back in `$OUT`:

    run(command="bash benchmarks/gpu_host.sh", carry=[".gpu"], timeout_s=600)

`benchmarks/gpu_host.sh` installs the wheels into `/tmp/tg-site` (LitServe's into `/tmp/tg-litserve`, apart,
so that its pinned fastapi shadows nothing), unpacks wrk (and drops it for the Python load if it does not
run), puts `torchgate` and `supervisorctl` wrappers on PATH (`TORCHGATE_TEST_BIN` for the tests), runs the
tests that need CUDA (`-m gpu`: tests/test_pipeline.py, tests/test_pinned.py, tests/test_deploy_supervisor.py,
bounded to 90 s, what they started ended after), then `python3 -m benchmarks.gpu --mode gpu` (it checks the
host first and says what is missing), bounded so that the whole script ends within 580 s (`GPU_HOST_SECONDS`).
`$OUT` gets 7 files: host.txt (nvidia-smi, torch, the tests' verdict), gpu-tests.log, install.log, bench.log,
benchmarks-gpu.md and results.json (written after each model, and when a run is cut short: it keeps what was
measured), logs.tgz (the systems' logs). Commit `docs/benchmarks-gpu.md` from `$OUT`. A run should take about
7 minutes, an estimate: no GPU host has run it yet (two models, three systems, torchgate in three formats:
binary, JSON and `shm`, its tensors in a local client's shared memory, regions registered once per request
body and answers of concurrent sends sharing one output region; two concurrencies, 10 s per load run, the raw
model at batch 1 to 64); `GPU_BENCH_ARGS` passes more flags (say `--workers-per-gpu 2`, `--concurrency
1,64,256`, `--formats binary,json`), `GPU_TESTS=0` skips the tests.

Dry run (not on a GPU: no GPU host has run it yet), 2026-11-30 on the 2-core CPU box: `bash
benchmarks/gpu_wheelhouse.sh`, then `PYTHON=<venv> OUT=/tmp/h4-out GPU_BENCH_ARGS="--mode cpu" bash
benchmarks/gpu_host.sh`, where `<venv>` is a fresh CPython 3.12.1 venv holding only what the GPU host has
(torch 2.11.0+cu130 and torchvision 0.26.0 from PyPI, CUDA unavailable; numpy, msgpack, werkzeug, jinja2,
click, prometheus-client, psutil, safetensors, requests, pytest, pytest-timeout, hypothesis) and no flask,
gunicorn, pyzmq, supervisor or orjson. The wheels installed and imported; the GPU tests were collected and
skipped (no CUDA); torchgate (binary and JSON), the seed's way and LitServe each served both models (16 load
runs, no error); exit 0 in 233 s with the 7 files in `$OUT` (the run that was cut short first had left
LitServe's processes behind: the script now ends what is left under its work folder). Cut short on purpose
(`GPU_HOST_SECONDS=230 GPU_TESTS=0`): exit 124 after 174 s of a 230 s budget, the systems stopped, no process
left, the report and results.json keeping the 8 runs measured. Found and fixed on the way: LitServe did not
start (anyio missing from its set), the wrk check failed under pipefail, the tests' clean-up killed itself.
Not dry-run: anything CUDA does (the GPU worker's streams, the pinned registration, NVML/nvidia-smi sampling),
the host's own glibc and wrk's libraries there.
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
    """Cores per process class, then (with the processes' count) the CPU milliseconds per answered request."""
    parts = []
    rate = run.load["throughput"]
    for name, cores in sorted(run.cores.items(), key=lambda kv: -kv[1]):
        if cores < 0.005:
            continue
        n = run.processes.get(name, 1)
        per = f"{1000 * cores / rate:.2f} ms/req" if rate > 0 else ""
        detail = "; ".join(part for part in (f"{n}" if n > 1 else "", per) if part)
        parts.append(f"{name} {cores:.2f}" + (f" ({detail})" if detail else ""))
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
            "cores: CPU cores used per process class over the run (n processes; CPU ms per answered "
            "request)):",
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
    out += spans_table(report, runs)
    described = report.describe.get(workload, {})
    if described:
        out += ["Settings:", ""] + [f"- {name}: {text}" for name, text in described.items()] + [""]
    skipped = report.skipped.get(workload, {})
    if skipped:
        out += ["Not measured:", ""] + [f"- {name}: {why}" for name, why in skipped.items()] + [""]
    return out


def spans_table(report: Report, runs: list[Run]) -> list[str]:
    """Return the table of where torchgate's traced requests spent their time, run by run (none: [])."""
    traced = sorted((r for r in runs if r.spans), key=lambda r: (r.concurrency, r.fmt))
    if not traced:
        return []
    names = [n for n in ORDER if n != "request" and any(n in (r.spans or {}) for r in traced)]
    out = [
        "Where torchgate's requests spent their time: each span's median over the requests traced in the "
        f"run (one in {report.plan.get('trace_rate')}; Triton's trace extension, read as `torchgate "
        "trace-summary` reads it), in microseconds:",
        "",
        "| format | conns | traced | " + " | ".join(names) + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for r in traced:
        spans = r.spans or {}
        cells = [f"{spans[n]:.0f}" if n in spans else "–" for n in names]
        out.append(
            f"| {r.fmt} | {r.concurrency} | {spans.get('traces', 0):.0f} | " + " | ".join(cells) + " |"
        )
    return [*out, ""]


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
