"""The seed tutorial's app: one Flask app with the model in its memory, JSON in and out.

``POST /predict {"input": ...}`` answers ``{"output": ...}``; a model with several inputs takes
``{"input": {name: list, ...}}``. The model (``BENCH_MODEL``, an exported ``.pt2`` or a TorchScript ``.pt``)
loads
once, at start-up, onto ``BENCH_DEVICE`` (default the CPU), as the tutorial advises; each request runs it
under
``torch.inference_mode()``.
"""

from __future__ import annotations

import os

import torch
from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

DTYPES = {"FP32": torch.float32, "INT64": torch.int64}


def create_app() -> Flask:
    """Load the model named by ``BENCH_MODEL`` once and return the app."""
    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
    device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
    path = os.environ["BENCH_MODEL"]
    if path.endswith(".pt"):
        model = torch.jit.load(path, map_location=device).eval()
    else:
        model = torch.export.load(path).module().to(device)
    # "name:DTYPE,name:DTYPE": the inputs in the order the model takes them
    inputs = [tuple(item.split(":")) for item in os.environ["BENCH_INPUTS"].split(",")]
    app = Flask(__name__)

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify({"ready": True})

    @app.post("/predict")
    def predict() -> ResponseReturnValue:
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or "input" not in data:
            abort(400, description='expected {"input": ...}')
        value = data["input"]
        try:
            if len(inputs) == 1:
                tensors = [torch.tensor(value, dtype=DTYPES[inputs[0][1]], device=device).unsqueeze(0)]
            else:
                tensors = [
                    torch.tensor(value[name], dtype=DTYPES[dtype], device=device).unsqueeze(0)
                    for name, dtype in inputs
                ]
        except (KeyError, TypeError, ValueError) as exc:
            abort(400, description=str(exc))
        with torch.inference_mode():
            output = model(*tensors)
        return jsonify({"output": output[0].cpu().tolist()})

    return app
