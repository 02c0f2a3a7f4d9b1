"""Prometheus families for what only the workers and the dispatcher know, built from one STATUS answer; no
I/O.

The dispatcher's ``stats`` rows are cumulative per (worker slot, model, version) and keep counting across
worker restarts (:class:`inference_worker.stats.StatsBook`, kept in a file under ``torchgate serve``), so
these counters never go backwards, across the dispatcher's restarts too. Durations are reported in
microseconds under Triton's names.

``nv_inference_pending_request_count`` is what waits in the dispatcher's queue for a worker with credit;
``torchgate_batch_size`` is a histogram of the batch sizes the workers ran (``le`` powers of two), and
``torchgate_batch_executions_total{size}`` the exact count per size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from inference_worker.protocol import StatusReply

ROW = ["model", "version", "worker"]
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# (family name, field of a stats row, scale, help)
ROW_COUNTERS: tuple[tuple[str, str, float, str], ...] = (
    ("nv_inference_count", "inference_count", 1.0, "Inferences performed (one per sample of a batch)"),
    ("nv_inference_exec_count", "execution_count", 1.0, "Model executions (batches) performed"),
    (
        "nv_inference_queue_duration_us",
        "queue_ns",
        1e-3,
        "Cumulative time requests waited in a worker's batch queue, in microseconds",
    ),
    (
        "nv_inference_compute_input_duration_us",
        "compute_input_ns",
        1e-3,
        "Cumulative time spent preparing batch inputs, in microseconds",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "compute_infer_ns",
        1e-3,
        "Cumulative time spent running the model, in microseconds",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "compute_output_ns",
        1e-3,
        "Cumulative time spent extracting batch outputs, in microseconds",
    ),
    ("torchgate_worker_request_success", "success", 1.0, "Requests a worker answered successfully"),
)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _labels(row: dict[str, Any]) -> list[str]:
    return [str(row.get("model", "")), str(row.get("version", "")), str(row.get("worker", ""))]


def row_families(rows: Iterable[dict[str, Any]]) -> list[Metric]:
    """Return the per-(model, version, worker) counters and batch sizes of the dispatcher's ``stats`` rows."""
    rows = [r for r in rows if isinstance(r, dict)]
    families: list[Metric] = []
    for name, field, scale, doc in ROW_COUNTERS:
        family = CounterMetricFamily(name, doc, labels=ROW)
        for row in rows:
            family.add_metric(_labels(row), _number(row.get(field)) * scale)
        families.append(family)
    failures = CounterMetricFamily(
        "torchgate_worker_request_failure", "Requests a worker failed, by reason", labels=[*ROW, "reason"]
    )
    executions = CounterMetricFamily(
        "torchgate_batch_executions", "Batches the workers ran, by exact size", labels=[*ROW, "size"]
    )
    histogram = HistogramMetricFamily(
        "torchgate_batch_size", "Size of the batches the workers ran", labels=ROW
    )
    for row in rows:
        for reason, count in sorted((row.get("failure") or {}).items()):
            failures.add_metric([*_labels(row), str(reason)], _number(count))
        sizes = {int(k): _number(v) for k, v in (row.get("batch_sizes") or {}).items() if str(k).isdigit()}
        for size, count in sorted(sizes.items()):
            executions.add_metric([*_labels(row), str(size)], count)
        buckets = [(str(float(b)), sum(c for s, c in sizes.items() if s <= b)) for b in BATCH_BOUNDS]
        buckets.append(("+Inf", sum(sizes.values())))
        histogram.add_metric(_labels(row), buckets, sum_value=sum(s * c for s, c in sizes.items()))
    return [*families, failures, executions, histogram]


def model_families(models: dict[str, Any]) -> list[Metric]:
    """Return workers ready and requests pending per model version."""
    ready = GaugeMetricFamily(
        "torchgate_workers_ready", "Workers ready to serve a model version", labels=["model", "version"]
    )
    pending = GaugeMetricFamily(
        "nv_inference_pending_request_count",
        "Requests waiting in the dispatcher's queue for a worker",
        labels=["model", "version"],
    )
    for model, versions in sorted(models.items()):
        for version, entry in sorted((versions or {}).items()):
            if isinstance(entry, dict):
                ready.add_metric([str(model), str(version)], _number(entry.get("ready")))
                pending.add_metric([str(model), str(version)], _number(entry.get("queued")))
    return [ready, pending]


def worker_families(workers: Iterable[dict[str, Any]]) -> list[Metric]:
    """Return each connected worker's load, its resident memory and, for GPU workers, its device memory."""
    in_flight = GaugeMetricFamily(
        "torchgate_worker_in_flight",
        "Requests a worker holds, from the dispatcher or down its direct lane",
        labels=["worker", "device", "state"],
    )
    capacity = GaugeMetricFamily(
        "torchgate_worker_capacity", "Requests a worker can hold at once", labels=["worker", "device"]
    )
    used = GaugeMetricFamily(
        "nv_gpu_memory_used_bytes",
        "Device memory allocated by a GPU worker's tensors",
        labels=["worker", "device"],
    )
    reserved = GaugeMetricFamily(
        "torchgate_gpu_memory_reserved_bytes",
        "Device memory a GPU worker's caching allocator holds",
        labels=["worker", "device"],
    )
    resident = GaugeMetricFamily(
        "torchgate_worker_resident_bytes",
        "A worker process's resident memory, by its last heartbeat",
        labels=["worker", "device"],
    )
    for w in workers:
        if not isinstance(w, dict):
            continue
        name, device = str(w.get("worker", "")), str(w.get("device", ""))
        held = _number(w.get("in_flight")) + _number(w.get("direct_requests"))
        in_flight.add_metric([name, device, str(w.get("state", ""))], held)
        capacity.add_metric([name, device], _number(w.get("capacity")))
        if _number(w.get("rss_bytes")) > 0:
            resident.add_metric([name, device], _number(w.get("rss_bytes")))
        memory = w.get("device_memory")
        if isinstance(memory, dict):
            used.add_metric([name, device], _number(memory.get("used_bytes")))
            reserved.add_metric([name, device], _number(memory.get("reserved_bytes")))
    return [in_flight, capacity, used, reserved, resident]


def dispatcher_families(counters: dict[str, Any]) -> list[Metric]:
    """Return the dispatcher's own counters (they restart from zero with the dispatcher)."""
    families: list[Metric] = []
    for key in ("requests", "rejected", "expired", "resent", "lost", "cancelled"):
        family = CounterMetricFamily(
            f"torchgate_dispatcher_{key}",
            f"Requests the dispatcher {key}" if key != "requests" else "Requests the dispatcher accepted",
        )
        family.add_metric([], _number(counters.get(key)))
        families.append(family)
    pending = GaugeMetricFamily(
        "torchgate_dispatcher_pending", "Requests queued or in flight at the dispatcher"
    )
    pending.add_metric([], _number(counters.get("pending")))
    families.append(pending)
    return families


def families(status: StatusReply | None) -> list[Metric]:
    """Return every worker-side family of one STATUS answer; None (no answer) gives only ``up`` = 0."""
    up = GaugeMetricFamily(
        "torchgate_dispatcher_up", "Whether the dispatcher answered this scrape's status query"
    )
    up.add_metric([], 0.0 if status is None else 1.0)
    if status is None:
        return [up]
    return [
        up,
        *row_families(status.stats),
        *model_families(status.models),
        *worker_families(status.workers),
        *dispatcher_families(status.dispatcher),
    ]
