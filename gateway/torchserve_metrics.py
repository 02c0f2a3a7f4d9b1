"""TorchServe's Prometheus names beside Triton's, derived at scrape time from the same families; no I/O.

Dashboards and autoscalers built on TorchServe's metrics API (its port 8082, ``metrics_mode=prometheus``) read
these; here they are in ``GET /metrics`` with the rest, with TorchServe's names, types and labels:

- ``ts_inference_requests_total{model_name, model_version, hostname}``: inference requests answered,
  successful or not (Triton's ``nv_inference_request_success`` plus ``nv_inference_request_failure``);
- ``ts_inference_latency_microseconds{...}``: their cumulative end-to-end time at the front end
  (``torchgate_request_duration_seconds_sum``, in microseconds);
- ``ts_queue_latency_microseconds{...}``: the cumulative time requests waited in the workers' batch queues
  (``nv_inference_queue_duration_us``, summed over workers);
- ``Requests2XX``, ``Requests4XX``, ``Requests5XX{Level="Host", Hostname}``: every HTTP request answered, by
  status class (``torchgate_http_requests``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

LABELS = ("model_name", "model_version", "hostname")
HELP = "Torchserve prometheus counter metric with unit: {}"  # TorchServe's own help text


def families(collected: Iterable[Metric], hostname: str) -> list[Metric]:
    """Return TorchServe's counters computed from the gateway's and the workers' families."""
    requests: dict[tuple[str, str], float] = defaultdict(float)
    latency_us: dict[tuple[str, str], float] = defaultdict(float)
    queue_us: dict[tuple[str, str], float] = defaultdict(float)
    by_class: dict[str, float] = defaultdict(float)
    for family in collected:
        for sample in family.samples:
            key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
            name = sample.name
            if family.name in ("nv_inference_request_success", "nv_inference_request_failure") and (
                name in (family.name, family.name + "_total")
            ):
                requests[key] += sample.value
            elif name == "torchgate_request_duration_seconds_sum":
                latency_us[key] += sample.value * 1e6
            elif family.name == "nv_inference_queue_duration_us" and not name.endswith("_created"):
                queue_us[key] += sample.value
            elif family.name == "torchgate_http_requests" and not name.endswith("_created"):
                status = sample.labels.get("status", "")
                if status[:1] in ("2", "4", "5"):
                    by_class[f"Requests{status[0]}XX"] += sample.value
    out = [
        _per_model("ts_inference_requests_total", "Count", requests, hostname),
        _per_model("ts_inference_latency_microseconds", "Microseconds", latency_us, hostname),
        _per_model("ts_queue_latency_microseconds", "Microseconds", queue_us, hostname),
    ]
    for name in ("Requests2XX", "Requests4XX", "Requests5XX"):
        family = Metric(name, HELP.format("Count"), "counter")
        family.add_sample(name, {"Level": "Host", "Hostname": hostname}, by_class[name])
        out.append(family)
    return out


def _per_model(name: str, unit: str, values: dict[tuple[str, str], float], hostname: str) -> Metric:
    family = Metric(name, HELP.format(unit), "counter")
    for (model, version), value in sorted(values.items()):
        if model:
            labels = dict(zip(LABELS, (model, version, hostname), strict=True))
            family.add_sample(name, labels, value)
    return family
