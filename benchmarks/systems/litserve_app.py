"""LitServe serving an exported benchmark model: ``python -m benchmarks.systems.litserve_app --port P ...``.

``POST /predict {"input": ...}`` (a dict of named lists for several inputs) answers ``{"output": [...]}``.
LitServe batches up to ``--max-batch-size`` requests within ``--batch-timeout`` seconds; sentences are
right-padded to the longest one in the batch.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import litserve as ls
import numpy as np
import torch
from starlette.requests import Request

NUMPY = {"FP32": np.float32, "INT64": np.int64}


class BenchAPI(ls.LitAPI):
    """Decode JSON to arrays, batch, run the exported model, encode JSON."""

    def __init__(
        self, model_path: str, inputs: list[tuple[str, str]], torch_threads: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.model_path, self.inputs, self.torch_threads = model_path, inputs, torch_threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.torch_threads)
        self.device = torch.device(device)
        if self.model_path.endswith(".pt"):
            self.model = torch.jit.load(self.model_path, map_location=self.device).eval()
        else:
            self.model = torch.export.load(self.model_path).module().to(self.device)

    def decode_request(self, request: Request) -> list[np.ndarray]:
        # LitServe's default: with this annotation it passes the parsed JSON body (a dict), not the Request.
        value = cast(dict[str, Any], request)["input"]
        if len(self.inputs) == 1:
            return [np.asarray(value, dtype=NUMPY[self.inputs[0][1]])]
        return [np.asarray(value[name], dtype=NUMPY[dtype]) for name, dtype in self.inputs]

    def batch(self, inputs: list[list[np.ndarray]]) -> list[torch.Tensor]:
        tensors = []
        for k in range(len(self.inputs)):
            items = [row[k] for row in inputs]
            if any(x.shape != items[0].shape for x in items):
                padded = np.zeros((len(items), max(len(x) for x in items)), dtype=items[0].dtype)
                for i, x in enumerate(items):
                    padded[i, : len(x)] = x
                tensors.append(torch.from_numpy(padded))
            else:
                tensors.append(torch.from_numpy(np.stack(items)))
        return tensors

    def predict(self, x: list[Any]) -> torch.Tensor:
        tensors = [t if isinstance(t, torch.Tensor) else torch.from_numpy(t).unsqueeze(0) for t in x]
        with torch.inference_mode():
            output = self.model(*(t.to(self.device) for t in tensors)).cpu()
        return output if self.max_batch_size > 1 else output[0]

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        return {"output": output.tolist()}


# LitServe reads this annotation unevaluated: it must be the class itself (not the string that
# `from __future__ import annotations` leaves) for LitServe to parse the body as JSON.
BenchAPI.decode_request.__annotations__["request"] = Request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True, help="exported .pt2")
    parser.add_argument("--inputs", required=True, help="name:DTYPE,name:DTYPE")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--api-servers", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout", type=float, default=0.0, help="seconds")
    parser.add_argument("--accelerator", default="cpu", help="cpu or cuda")
    parser.add_argument("--timeout", type=float, default=120.0, help="request timeout, seconds")
    parser.add_argument(
        "--fast-queue", action="store_true", help="ZeroMQ queues (LitServe's advice above 100 req/s)"
    )
    args = parser.parse_args()
    inputs = [(item.split(":")[0], item.split(":")[1]) for item in args.inputs.split(",")]
    api = BenchAPI(
        args.model,
        inputs,
        args.torch_threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    server = ls.LitServer(
        api,
        accelerator=args.accelerator,
        workers_per_device=args.workers,
        timeout=args.timeout,
        fast_queue=args.fast_queue,
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
