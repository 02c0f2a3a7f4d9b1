"""TorchServe's management API on the inference port: list and describe models, register and unregister them;
no I/O.

TorchServe served it on a port of its own (8081) and its metrics on another (8082); here it shares the port of
everything else, with the same bearer token, and ``torchgate serve --management-port 8081 --metrics-port
8082`` also serves it, and only it, on TorchServe's ports (:func:`port_refusal`). Its documents come from the
model repository and the dispatcher's status:

- ``GET /models?limit=&next_page_token=``: ``{"models": [{"modelName", "modelUrl"}], "nextPageToken"}``, names
  sorted, paged as TorchServe pages them (a limit outside 0-100 is 100; ``nextPageToken``, the index of the
  next page, is there while more follow).
- ``GET /models/{name}[/{version}|/all]``: a list with one entry per version: ``modelName``, ``modelVersion``,
  ``modelUrl`` (the model's folder in the repository), ``runtime``, ``minWorkers``/``maxWorkers`` (the
  workers serving that version now), ``batchSize``, ``maxBatchDelay`` (ms), ``deviceType``, ``workers``
  (``id``, ``startTime``, ``status`` READY or UNLOADING while it drains, ``memoryUsage`` (its resident
  bytes), ``pid``, ``gpu``, ``gpuUsage``) and ``jobQueueStatus``. TorchServe's other fields (timeouts,
  parallelism, sequences) have no counterpart here and are left out.
- ``POST /models?url={name}`` and ``DELETE /models/{name}[/{version}]``: load and unload through model control
  (``--model-control explicit``, as TorchServe's ``--enable-model-api``). ``url`` names a model folder of the
  repository: archives (``.mar``) and URLs are not fetched, and what a ``.mar`` would carry (handler, batch
  size, delay) lives in the model's ``config.toml``.
- ``PUT /models/{name}`` (scaling) is refused with the way to scale here: worker slots are processes of the
  host.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidArgument
from inference_worker.protocol import StatusReply
from inference_worker.repository import ModelConfig

_DECIMAL = re.compile(r"-?[0-9]+")
MAX_DIGITS = 18  # past these, a number is past any page or size (TorchServe's are Java ints)
MAX_LIMIT = 100  # TorchServe's page size, and its largest
ALL_VERSIONS = "all"
# Register parameters TorchServe takes that change nothing here: every slot serving the model loads it, and a
# load answers once it is done.
ACCEPTED_REGISTER = frozenset({"url", "model_name", "initial_workers", "synchronous"})
# Register parameters that would override what the model's config.toml says.
CONFIG_REGISTER = frozenset(
    {"handler", "runtime", "batch_size", "max_batch_delay", "response_timeout", "startup_timeout"}
)
SCALING = (
    "workers are processes of the host here, each serving every model of its slot: scale with "
    "`torchgate add-worker` / `torchgate remove-worker` (or supervisorctl start/stop of a slot), or give the "
    "model an [[instance_group]] count in its config.toml"
)


def page(limit: str | None, token: str | None) -> tuple[int, int]:
    """Return the page size and first index of a list request, as TorchServe reads them."""
    size, start = _integer(limit, "limit", MAX_LIMIT), _integer(token, "next_page_token", 0)
    if size < 0 or size > MAX_LIMIT:
        size = MAX_LIMIT
    return size, max(start, 0)


def list_models(names: list[str], size: int, start: int) -> dict[str, Any]:
    """Return one page of ``GET /models``: ``names`` sorted, with ``nextPageToken`` when more follow."""
    keys = sorted(names)
    last = start + size
    doc: dict[str, Any] = {}
    if last < len(keys):
        doc["nextPageToken"] = str(last)
    else:
        last = len(keys)
    doc["models"] = [{"modelName": name, "modelUrl": name} for name in keys[start:last]]
    return doc


def describe(model: ModelConfig, versions: list[str], status: StatusReply | None) -> list[dict[str, Any]]:
    """Return ``GET /models/{name}``'s list: one entry per version in ``versions``."""
    return [_describe_version(model, version, status) for version in versions]


def _describe_version(model: ModelConfig, version: str, status: StatusReply | None) -> dict[str, Any]:
    workers = [_worker(w) for w in _serving(status, model.name, version)]
    gpu = any(w["gpu"] for w in workers)
    queued = int(((status.models if status else {}).get(model.name) or {}).get(version, {}).get("queued", 0))
    return {
        "modelName": model.name,
        "modelVersion": version,
        "modelUrl": model.name,
        "runtime": "python",
        "minWorkers": len(workers),
        "maxWorkers": len(workers),
        "batchSize": max(model.max_batch_size, 1),
        "maxBatchDelay": model.max_queue_delay_us // 1000,
        "deviceType": "gpu" if gpu else "cpu",
        "workers": workers,
        "jobQueueStatus": {
            "remainingCapacity": max(model.max_queue_size - queued, 0),
            "pendingRequests": queued,
        },
    }


def _serving(status: StatusReply | None, model: str, version: str) -> list[dict[str, Any]]:
    """Return the status's workers that serve ``model`` ``version``, by name."""
    if status is None:
        return []
    key = f"{model}/{version}"
    found = [w for w in status.workers if isinstance(w, dict) and key in (w.get("models") or [])]
    return sorted(found, key=lambda w: str(w.get("worker")))


def _worker(w: dict[str, Any]) -> dict[str, Any]:
    device = str(w.get("device") or "cpu")
    memory = w.get("device_memory") or {}
    gpu_usage = "N/A"
    if device.startswith("cuda"):
        index = device.partition(":")[2] or "0"
        gpu_usage = f"gpuId::{index} memory.used [MiB]::{int(memory.get('used_bytes', 0)) >> 20} MiB"
    since = w.get("since")
    return {
        "id": str(w.get("worker")),
        "startTime": _iso(float(since)) if isinstance(since, int | float) else None,
        "status": "UNLOADING" if w.get("state") == "DRAINING" else "READY",
        "memoryUsage": int(w.get("rss_bytes") or 0),
        "pid": int(w.get("pid") or 0),
        "gpu": device.startswith("cuda"),
        "gpuUsage": gpu_usage,
    }


def _iso(unix: float) -> str:
    """Return a time as TorchServe writes it: ``2018-10-02T13:44:53.034Z``."""
    moment = datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def register_target(args: Mapping[str, str]) -> str:
    """Return the model a ``POST /models`` request names, refusing what this server would otherwise ignore."""
    for key in args:
        if key in CONFIG_REGISTER:
            raise InvalidArgument(
                f"register parameter {key!r}: set it in the model's config.toml in the model repository, "
                "then register (load) the model"
            )
        if key not in ACCEPTED_REGISTER:
            raise InvalidArgument(f"unknown register parameter {key!r}")
    url = args.get("url", "")
    if not url:
        raise InvalidArgument("parameter url is required: the name of a model in the model repository")
    if "/" in url or ":" in url or url.endswith(".mar"):
        raise InvalidArgument(
            f"url {url!r}: models are loaded from the model repository by name (a folder with a config.toml"
            " or config.pbtxt); archives (.mar) and URLs are not fetched"
        )
    name = args.get("model_name") or url
    if name != url:
        raise InvalidArgument(f"model_name {name!r} differs from url {url!r}: a model's name is its folder's")
    return name


def body_parameters(doc: Any) -> dict[str, str]:
    """Return a JSON registration body's parameters as the query string would give them."""
    if not isinstance(doc, dict) or not all(
        isinstance(value, str | int | bool) and not isinstance(value, float) for value in doc.values()
    ):
        raise InvalidArgument("a register body must be a JSON object of strings, integers and booleans")
    return {
        str(key): (str(value).lower() if isinstance(value, bool) else str(value))
        for key, value in doc.items()
    }


def _integer(raw: str | None, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not _DECIMAL.fullmatch(raw):  # int() would take " 1", "+1", "1_0"
        raise InvalidArgument(f"parameter {name} must be an integer, not {raw!r}")
    if len(raw.lstrip("-")) > MAX_DIGITS:  # int() refuses 4300 digits and more (a ValueError: a 500)
        raise InvalidArgument(f"parameter {name} is out of range ({len(raw)} characters)")
    return int(raw)


# What each of TorchServe's extra ports answers (the endpoints' names, gateway/routes.py); the inference port
# answers everything.
MANAGEMENT_ENDPOINTS = frozenset(
    f"torchgate.{view}"
    for view in ("list_models", "register_model", "describe_model", "unregister_model", "scale_workers")
)
METRICS_ENDPOINTS = frozenset({"torchgate.metrics"})


def port_refusal(port: int, endpoint: str | None, management_port: int, metrics_port: int) -> str | None:
    """Why a request that arrived on ``port`` for ``endpoint`` is not answered there (a 404), or None."""
    if port and port == management_port and endpoint not in MANAGEMENT_ENDPOINTS:
        return "this is the management port: it serves TorchServe's management API (/models) only"
    if port and port == metrics_port and endpoint not in METRICS_ENDPOINTS:
        return "this is the metrics port: it serves /metrics only"
    return None
