"""TorchServe handler for the benchmark models (packed into the .mar by torch-model-archiver).

JSON requests ``{"input": ...}`` (a dict of named lists for several inputs) answer ``{"output": [...]}``;
binary requests (any body TorchServe does not decode: the inputs' little-endian bytes, concatenated) answer
the output's FP32 bytes. TorchServe hands the handler up to ``batchSize`` requests at once; they run as one
batch, sentences right-padded to the longest one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

NUMPY = {"FP32": np.float32, "INT64": np.int64}


class BenchHandler:
    """Load the exported model once; decode, batch, run, encode."""

    def __init__(self, context: Any) -> None:
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
        model_dir = Path(context.system_properties["model_dir"])
        self.model = torch.export.load(str(model_dir / "model.pt2")).module()
        self.inputs = json.loads((model_dir / "signature.json").read_text())["inputs"]

    def decode(self, body: Any) -> list[np.ndarray]:
        if isinstance(body, dict):
            value = body["input"]
            if len(self.inputs) == 1:
                return [np.asarray(value, dtype=NUMPY[self.inputs[0]["datatype"]])]
            return [np.asarray(value[t["name"]], dtype=NUMPY[t["datatype"]]) for t in self.inputs]
        raw = bytes(body)
        if len(self.inputs) == 1:
            t = self.inputs[0]
            return [np.frombuffer(raw, dtype=NUMPY[t["datatype"]]).reshape(t["dims"])]
        part = len(raw) // len(self.inputs)  # variable-length inputs of one datatype: equal parts
        return [
            np.frombuffer(raw[i * part : (i + 1) * part], dtype=NUMPY[t["datatype"]])
            for i, t in enumerate(self.inputs)
        ]

    def collate(self, rows: list[list[np.ndarray]]) -> list[torch.Tensor]:
        tensors = []
        for k in range(len(self.inputs)):
            items = [row[k] for row in rows]
            longest = max(len(x) for x in items)
            if any(x.shape != items[0].shape for x in items):
                padded = np.zeros((len(items), longest), dtype=items[0].dtype)
                for i, x in enumerate(items):
                    padded[i, : len(x)] = x
                tensors.append(torch.from_numpy(padded))
            else:
                tensors.append(torch.from_numpy(np.stack(items)))
        return tensors

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        bodies = [item.get("body") if item.get("body") is not None else item.get("data") for item in data]
        rows = [self.decode(body) for body in bodies]
        with torch.inference_mode():
            output = self.model(*self.collate(rows)).numpy()
        answers: list[Any] = []
        for i, body in enumerate(bodies):
            if isinstance(body, dict):
                context.set_response_content_type(i, "application/json")
                answers.append(json.dumps({"output": output[i].tolist()}))
            else:
                context.set_response_content_type(i, "application/octet-stream")
                answers.append(output[i].astype("<f4").tobytes())
        return answers


_handler: BenchHandler | None = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """TorchServe's entry point: the first call (with no data) initialises the model."""
    global _handler
    if _handler is None:
        _handler = BenchHandler(context)
    if data is None:
        return None
    return _handler.handle(data, context)
