"""Request bodies: each system gets the same samples in the formats it speaks.

Formats:
- ``json``: the seed's ``{"input": ...}`` (a dict of named lists for several inputs), or for torchgate an Open
  Inference Protocol JSON infer request.
- ``binary``: for torchgate, Triton's binary tensor extension with binary outputs; for TorchServe, the raw
  little-endian tensor bytes (inputs concatenated) in and out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from benchmarks.models import WORKLOAD_SPECS, Sample

FORMATS = ("json", "binary")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request the load generator sends."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json_value(array: np.ndarray) -> list[object]:
    if array.dtype.kind == "f":
        return np.round(array.astype(np.float64), 6).tolist()  # type: ignore[no-any-return]
    return array.tolist()  # type: ignore[no-any-return]


def seed_json(workload: str, sample: Sample, path: str = "/predict") -> HttpRequest:
    """The seed tutorial's contract: ``{"input": <list>}``; several inputs as ``{"input": {name: list}}``."""
    names = [t.name for t in WORKLOAD_SPECS[workload].inputs]
    value: object = (
        _json_value(sample[names[0]])
        if len(names) == 1
        else {name: _json_value(sample[name]) for name in names}
    )
    body = json.dumps({"input": value}, separators=(",", ":")).encode()
    return HttpRequest(path, body, {"Content-Type": "application/json"})


def raw_binary(workload: str, sample: Sample, path: str) -> HttpRequest:
    """Every input's little-endian bytes, concatenated in declaration order (TorchServe's binary request)."""
    body = b"".join(
        np.ascontiguousarray(sample[t.name]).astype(sample[t.name].dtype.newbyteorder("<")).tobytes()
        for t in WORKLOAD_SPECS[workload].inputs
    )
    return HttpRequest(path, body, {"Content-Type": "application/octet-stream"})


def oip_path(workload: str) -> str:
    return f"/v2/models/{WORKLOAD_SPECS[workload].model_name}/infer"


def oip_json(workload: str, sample: Sample, path: str | None = None) -> HttpRequest:
    """An Open Inference Protocol JSON infer request for one sample (batch dim 1)."""
    inputs = []
    for t in WORKLOAD_SPECS[workload].inputs:
        array = sample[t.name]
        inputs.append(
            {
                "name": t.name,
                "shape": [1, *array.shape],
                "datatype": t.datatype,
                "data": _json_value(array.reshape(-1)),
            }
        )
    body = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
    return HttpRequest(path or oip_path(workload), body, {"Content-Type": "application/json"})


def oip_binary(workload: str, sample: Sample, path: str | None = None) -> HttpRequest:
    """Triton's binary tensor extension: JSON header, then raw inputs; all outputs asked back as binary."""
    inputs, blobs = [], []
    for t in WORKLOAD_SPECS[workload].inputs:
        array = np.ascontiguousarray(sample[t.name])
        blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
        inputs.append(
            {
                "name": t.name,
                "shape": [1, *array.shape],
                "datatype": t.datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps(
        {"inputs": inputs, "parameters": {"binary_data_output": True}}, separators=(",", ":")
    ).encode()
    return HttpRequest(
        path or oip_path(workload),
        header + b"".join(blobs),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )


def decode_output(kind: str, body: bytes, headers: dict[str, str]) -> np.ndarray:
    """Return the first output of one answer: ``seed`` ``{"output": ...}``, ``oip`` (JSON or Triton binary),
    or ``raw`` (FP32 bytes)."""
    if kind == "seed":
        return np.asarray(json.loads(body)["output"], dtype=np.float32)
    if kind == "raw":
        return np.frombuffer(body, dtype="<f4")
    if kind != "oip":
        raise ValueError(f"unknown answer kind {kind!r}")
    lowered = {k.lower(): v for k, v in headers.items()}
    header_length = int(lowered.get("inference-header-content-length", len(body)))
    output = json.loads(body[:header_length])["outputs"][0]
    if "data" in output:
        return np.asarray(output["data"], dtype=np.float32)
    size = int(output["parameters"]["binary_data_size"])
    return np.frombuffer(body[header_length : header_length + size], dtype="<f4")
