"""The gateway's own Prometheus metrics, shared by every gunicorn process, and the text of ``GET /metrics``.

Each gateway process counts the requests it answered. Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` names a
folder where every process keeps its counters (prometheus-client's multiprocess mode), and a scrape, whichever
process answers it, sums them all. Without that variable (``flask run``, tests in one process) the counters
live in this process only. The gRPC server (:mod:`gateway.grpc_server`) counts its inference requests the same
way in a folder of its own (``TORCHGATE_GRPC_METRICS_DIR`` tells the gateway where), which a scrape sums in.
What only the workers know comes from the dispatcher at scrape time (:mod:`gateway.worker_metrics`); it is
never written to the multiprocess files, so it is counted once.

Triton's names are kept exactly (``nv_inference_request_success``, not ``..._total``) so that dashboards built
for Triton work unchanged; torchgate's own counters end in ``_total`` as Prometheus recommends.

Failure reasons follow Triton's (``nv_inference_request_failure{reason}``):

- ``REJECTED``: the server would not run it: queue full or no worker (UNAVAILABLE), or its deadline passed
  (DEADLINE_EXCEEDED);
- ``BACKEND``: the model failed while computing (INTERNAL, RESOURCE_EXHAUSTED);
- ``CANCELED``: its client went away (closed its connection, cancelled its gRPC call) while it waited;
- ``OTHER``: the request was refused before it ran (INVALID_ARGUMENT, NOT_FOUND, a body too large, ...).
"""

from __future__ import annotations

import glob
import mmap as _mmap
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import mmap_dict as _mmap_dict
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# "1": whoever started the run emptied the folders (`torchgate serve`), so a process that starts again in
# the same run (supervisord restarting the gRPC server or gunicorn) keeps the counters already there: emptied
# then, the sums /metrics reports (the other processes' too) would go backwards.
KEEP_ENV = "TORCHGATE_METRICS_KEEP"


class _AllocatingMmap:
    """prometheus-client's ``mmap`` module, but a writable map's file is allocated first: on a full disk a
    sparse file's page fault is a SIGBUS that kills the process (gunicorn then respawns it at once, forever);
    allocated, the same lack of space is an OSError (ENOSPC) when the metric is created."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_mmap, name)

    def mmap(self, fileno: int, length: int, *args: Any, **kwargs: Any) -> _mmap.mmap:
        if kwargs.get("access", _mmap.ACCESS_WRITE) == _mmap.ACCESS_WRITE and length > 0:
            os.posix_fallocate(fileno, 0, length)
        return _mmap.mmap(fileno, length, *args, **kwargs)


_mmap_dict.mmap = _AllocatingMmap()  # type: ignore[attr-defined,assignment]
# The gRPC server's own multiprocess folder (`torchgate serve --grpc-port`): a scrape sums it in.
GRPC_METRICS_ENV = "TORCHGATE_GRPC_METRICS_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Counters whose names are kept exactly, without "_total" added: Triton's and TorchServe's
# (gateway.torchserve_metrics).
EXACT_NAMES = ("nv_", "ts_", "Requests")
# Label values come from bounded sets only: any method token a client sends would otherwise be a new series.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
M = TypeVar("M", bound=MetricWrapperBase)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def failure_reason(status: int) -> str:
    """Return Triton's failure reason for the HTTP status of a failed request (one status per error code)."""
    if status in (503, 504):  # UNAVAILABLE, DEADLINE_EXCEEDED
        return "REJECTED"
    if status == 499:  # CANCELLED: its client went away first
        return "CANCELED"
    return "BACKEND" if status >= 500 else "OTHER"  # INTERNAL, RESOURCE_EXHAUSTED / client errors


def method_label(method: str) -> str:
    """Return the label of an HTTP method: a standard one as is, any other token "OTHER" (a bounded set)."""
    return method if method in HTTP_METHODS else "OTHER"


def multiproc_dir() -> str | None:
    """Return the multiprocess folder, or None when this process keeps its counters to itself."""
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """The counters one gateway process updates as it answers requests."""

    success: Counter
    failure: Counter
    duration_us: Counter
    latency: Histogram
    http: Counter
    refused: Counter
    grpc_refused: Counter
    cache_hits: Counter
    cache_misses: Counter
    cache_hit_us: Counter
    cache_miss_us: Counter
    registry: CollectorRegistry | None  # None in multiprocess mode: the values live in the folder
    # The labelled series already used, by label values: ``labels()`` takes a lock and checks every value.
    _series: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> RequestMetrics:
        model = ["model", "version"]
        return cls(
            success=Counter(
                "nv_inference_request_success",
                "Inference requests answered successfully",
                model,
                registry=registry,
            ),
            failure=Counter(
                "nv_inference_request_failure",
                "Inference requests that failed, by reason (REJECTED, CANCELED, BACKEND, OTHER)",
                [*model, "reason"],
                registry=registry,
            ),
            duration_us=Counter(
                "nv_inference_request_duration_us",
                "Cumulative end-to-end time of successful inference requests at the gateway, in microseconds",
                model,
                registry=registry,
            ),
            latency=Histogram(
                "torchgate_request_duration_seconds",
                "End-to-end time of inference requests at the gateway (successful or not), in seconds",
                model,
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            http=Counter(
                "torchgate_http_requests",
                "HTTP requests answered by the gateway, by route and status",
                ["method", "route", "status"],
                registry=registry,
            ),
            refused=Counter(
                "torchgate_http_refused",
                "HTTP requests refused with 503 before reaching the app: "
                "every gateway thread busy and TORCHGATE_GATEWAY_QUEUE requests waiting",
                registry=registry,
            ),
            grpc_refused=Counter(
                "torchgate_grpc_refused",
                "gRPC calls refused with RESOURCE_EXHAUSTED before they ran: the gRPC server held as many "
                "calls as it takes (4 per --threads, plus the streams)",
                registry=registry,
            ),
            cache_hits=Counter(
                "nv_cache_num_hits_per_model",
                "Requests answered from the response cache",
                model,
                registry=registry,
            ),
            cache_misses=Counter(
                "nv_cache_num_misses_per_model",
                "Requests of models with a response cache that the cache could not answer",
                model,
                registry=registry,
            ),
            cache_hit_us=Counter(
                "nv_cache_hit_duration_per_model",
                "Time spent finding the answers in the response cache, in microseconds",
                model,
                registry=registry,
            ),
            cache_miss_us=Counter(
                "nv_cache_miss_duration_per_model",
                "Time spent looking in the response cache and keeping the new answers, in microseconds",
                model,
                registry=registry,
            ),
            registry=registry,
        )

    def observe_cache(self, model: str, version: str, hit: bool, seconds: float) -> None:
        """Count one look in the response cache: a hit or a miss, and its time (a miss's includes keeping)."""
        if hit:
            self._child(self.cache_hits, model, version).inc()
            self._child(self.cache_hit_us, model, version).inc(seconds * 1e6)
        else:
            self._child(self.cache_misses, model, version).inc()
            self._child(self.cache_miss_us, model, version).inc(seconds * 1e6)

    def cache_counts(self) -> dict[tuple[str, str], dict[str, float]]:
        """Return every process's response-cache counters by model version: hits, misses and their us."""
        names = {
            "nv_cache_num_hits_per_model": "hits",
            "nv_cache_num_misses_per_model": "misses",
            "nv_cache_hit_duration_per_model": "hit_us",
            "nv_cache_miss_duration_per_model": "miss_us",
        }
        counts: dict[tuple[str, str], dict[str, float]] = {}
        for family in self.collect():
            if family.name not in names:
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
                entry = counts.setdefault(key, {})
                entry[names[family.name]] = entry.get(names[family.name], 0.0) + sample.value
        return counts

    def observe_inference(self, model: str, version: str, seconds: float, status: int) -> None:
        """Count one inference request for a known model: its outcome and how long it took."""
        self._child(self.latency, model, version).observe(seconds)
        if status < 400:
            self._child(self.success, model, version).inc()
            self._child(self.duration_us, model, version).inc(seconds * 1e6)
        else:
            self._child(self.failure, model, version, failure_reason(status)).inc()

    def observe_http(self, method: str, route: str, status: int) -> None:
        """Count one answered request; ``route`` is the matched rule (or "unmatched"), a bounded set too."""
        self._child(self.http, method_label(method), route, status).inc()

    def _child(self, metric: M, *labels: str | int) -> M:
        """Return ``metric.labels(*labels)``, made once (label values are bounded sets)."""
        key = (id(metric), *labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*(str(value) for value in labels))
        return cast(M, child)

    def collect(self) -> Iterable[Metric]:
        """Yield the counters of every gateway process and the gRPC server's (multiprocess mode), or this
        process's."""
        if self.registry is None:
            folders = [folder for folder in (multiproc_dir(), os.environ.get(GRPC_METRICS_ENV)) if folder]
            files = [path for folder in folders for path in glob.glob(os.path.join(folder, "*.db"))]
            yield from MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        else:
            yield from self.registry.collect()


_lock = threading.Lock()
_metrics: RequestMetrics | None = None


def request_metrics() -> RequestMetrics:
    """Return this process's counters, made on first use (metrics may be declared only once per process)."""
    global _metrics
    if _metrics is not None:
        return _metrics
    with _lock:
        if _metrics is None:
            _metrics = RequestMetrics.create(None if multiproc_dir() else CollectorRegistry())
        return _metrics


def _go_float(value: float) -> str:
    """Prometheus' text for a float (prometheus_client's floatToGoString, which is untyped)."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def render(families: Iterable[Metric]) -> bytes:
    """Return Prometheus' text format (0.0.4) for ``families``; Triton's and TorchServe's counters keep their
    exact names."""
    lines: list[str] = []
    for family in families:
        name, kind = family.name, family.type
        exact = kind == "counter" and name.startswith(EXACT_NAMES)
        shown = name if exact or kind != "counter" else name + "_total"
        kind = {
            "unknown": "untyped",
            "info": "gauge",
            "stateset": "gauge",
            "gaugehistogram": "histogram",
        }.get(kind, kind)
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            sample_name = name if exact and sample.name == name + "_total" else sample.name
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(
                f"{sample_name}{{{labels}}} {_go_float(sample.value)}\n"
                if labels
                else f"{sample_name} {_go_float(sample.value)}\n"
            )
    return "".join(lines).encode()


def _escape(value: str) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
