"""The JSON documents of the metadata endpoints, in the shapes Triton's clients expect; no I/O."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from inference_worker.protocol import StatusReply
from inference_worker.repository import ModelConfig, TensorSpec
from inference_worker.stats import add_counters

SERVER_NAME = "torchgate"
EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
    "classification",
    "system_shared_memory",
    "trace",
    "logging",
    "schedule_policy",
]


def server_version() -> str:
    """Return the installed torchgate's version ("0" when run from a source tree not installed)."""
    try:
        return importlib.metadata.version("torchgate")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(model: ModelConfig, version: str | None) -> dict[str, Any]:
    """Return ``{name, versions, platform, inputs, outputs}``: full shapes with -1 for variable dims."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": spec.datatype, "shape": spec.full_shape(model.max_batch_size)}

    versions = [version] if version else sorted(model.versions, key=int)
    return {
        "name": model.name,
        "versions": versions,
        "platform": model.platform,
        "inputs": [tensor(s) for s in model.inputs],
        "outputs": [tensor(s) for s in model.outputs],
    }


def model_config(model: ModelConfig) -> dict[str, Any]:
    """Return the model's configuration as the JSON form of Triton's ``ModelConfig`` message."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        kind = (
            "STRING" if spec.datatype == "BYTES" else spec.datatype
        )  # Triton's config calls BYTES TYPE_STRING
        entry: dict[str, Any] = {"name": spec.name, "data_type": f"TYPE_{kind}", "dims": list(spec.dims)}
        if spec.reshape is not None:
            entry["reshape"] = {"shape": list(spec.reshape)}
        if spec.label_filename:
            entry["label_filename"] = spec.label_filename
        return entry

    def model_input(spec: TensorSpec) -> dict[str, Any]:
        return {**tensor(spec), "optional": spec.optional}

    config: dict[str, Any] = {
        "name": model.name,
        "platform": model.platform,
        "backend": "pytorch",
        "version_policy": model.version_policy,
        "max_batch_size": model.max_batch_size,
        "input": [model_input(s) for s in model.inputs],
        "output": [tensor(s) for s in model.outputs],
        "instance_group": [
            {"name": f"{model.name}_{i}", **group.to_dict()} for i, group in enumerate(model.instance_groups)
        ]
        or [{"name": model.name, "kind": "KIND_AUTO", "count": 1, "gpus": []}],
    }
    if model.response_cache:
        config["response_cache"] = {"enable": True}
    if model.max_batch_size > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(model.preferred_batch_sizes),
            "max_queue_delay_microseconds": model.max_queue_delay_us,
            "priority_levels": model.priority_levels,
            "default_priority_level": model.default_priority_level,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": True,
                "max_queue_size": model.max_queue_size,
            },
        }
    return config


def repository_index(
    models: dict[str, ModelConfig], status: StatusReply | None, ready_only: bool = False
) -> list[dict[str, Any]]:
    """Return ``[{name, version, state, reason}]``: READY when a worker serves that version."""
    index = []
    for name in sorted(models):
        for version in sorted(models[name].versions, key=int):
            ready = status is not None and status.model_ready(name, version)
            if ready_only and not ready:
                continue
            reason = (
                ""
                if ready
                else (
                    "dispatcher unreachable" if status is None else unavailable_reason(status, name, version)
                )
            )
            index.append(
                {
                    "name": name,
                    "version": version,
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": reason,
                }
            )
    return index


def unavailable_reason(status: StatusReply, model: str, version: str | None) -> str:
    """Return why no worker serves ``model`` (``version``, or any): what the workers reported, else a
    default."""
    workers: dict[str, list[str]] = {}  # reason -> the workers that gave it (one reason, said once)
    for entry in status.unavailable:
        if (
            isinstance(entry, dict)
            and entry.get("model") == model
            and (version is None or entry.get("version") in (version, None))
        ):
            where = workers.setdefault(str(entry.get("reason") or "unavailable"), [])
            if entry.get("worker"):
                where.append(str(entry["worker"]))
    if not workers:
        return "no ready worker serves it"
    return "; ".join(
        f"{reason} (on {', '.join(sorted(names))})" if names else reason for reason, names in workers.items()
    )


def server_ready(status: StatusReply, models: dict[str, ModelConfig]) -> tuple[bool, str]:
    """Return whether every model of the repository has a ready worker, and if not, which one lacks it."""
    if not models:
        return False, "the model repository holds no model"
    # models unloaded on request (status.unloaded) are not counted, as Triton's
    for name in sorted(models):
        if name not in status.unloaded and not status.model_ready(name):
            return False, f"model {name!r} is not ready: {unavailable_reason(status, name, None)}"
    return True, ""


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": int(count), "ns": int(ns)}


def model_stats(
    models: dict[str, ModelConfig],
    status: StatusReply,
    only: str | None = None,
    version: str | None = None,
    cache: dict[tuple[str, str], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Return ``{"model_stats": [...]}`` in Triton's shape, summing the workers' counters per version, with
    the gateways' response-cache counts (``cache``: hits, misses and their microseconds per version).

    Counters a dispatcher does not report are zeros.
    """
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in status.stats:
        if not isinstance(entry, dict):
            continue
        key = (str(entry.get("model")), str(entry.get("version")))
        counters = {k: v for k, v in entry.items() if k not in ("worker", "model", "version")}
        add_counters(totals.setdefault(key, {}), counters)
    result = []
    for name in sorted(models):
        if only is not None and name != only:
            continue
        for v in sorted(models[name].versions, key=int):
            if version is not None and v != version:
                continue
            result.append(
                _one_model_stats(name, v, totals.get((name, v), {}), (cache or {}).get((name, v), {}))
            )
    return {"model_stats": result}


def _one_model_stats(name: str, version: str, t: dict[str, Any], cached: dict[str, float]) -> dict[str, Any]:
    success = int(t.get("success", 0))
    failures = t.get("failure") or {}
    failed = int(sum(failures.values())) if isinstance(failures, dict) else 0
    executions = int(t.get("execution_count", 0))
    batch_sizes = t.get("batch_sizes") or {}
    hits, hit_ns = int(cached.get("hits", 0)), int(cached.get("hit_us", 0) * 1000)
    return {
        "name": name,
        "version": version,
        "last_inference": int(t.get("last_inference", 0)),
        "inference_count": int(t.get("inference_count", 0)),
        "execution_count": executions,
        "inference_stats": {
            # as Triton counts them: success and queue include the response cache's hits, compute does not
            "success": _duration(success + hits, t.get("request_ns", 0) + hit_ns),
            "fail": _duration(failed, 0),
            "queue": _duration(success + hits, t.get("queue_ns", 0)),
            "compute_input": _duration(success, t.get("compute_input_ns", 0)),
            "compute_infer": _duration(success, t.get("compute_infer_ns", 0)),
            "compute_output": _duration(success, t.get("compute_output_ns", 0)),
            "cache_hit": _duration(hits, hit_ns),
            "cache_miss": _duration(int(cached.get("misses", 0)), int(cached.get("miss_us", 0) * 1000)),
        },
        "batch_stats": [
            {
                "batch_size": int(size),
                "compute_input": _duration(count, (t.get("batch_compute_input_ns") or {}).get(size, 0)),
                "compute_infer": _duration(count, (t.get("batch_compute_infer_ns") or {}).get(size, 0)),
                "compute_output": _duration(count, (t.get("batch_compute_output_ns") or {}).get(size, 0)),
            }
            for size, count in sorted(batch_sizes.items(), key=lambda kv: int(kv[0]))
            if str(size).isdigit()
        ],
    }
