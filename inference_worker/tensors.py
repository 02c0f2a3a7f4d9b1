"""Wire tensors <-> torch tensors, without copies where torch allows it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from inference_worker.protocol import TensorMeta

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
DATATYPES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}


def to_torch(meta: TensorMeta, buf: memoryview) -> torch.Tensor:
    """View a received frame as a tensor of ``meta``'s datatype and shape (no copy).

    The worker never writes into inputs. Received frames and segments are writable; a read-only buffer makes
    torch warn (once per process), which is silenced here, only for such a buffer: ``catch_warnings`` costs
    microseconds a call.
    """
    dtype = TORCH_DTYPES[meta.datatype]
    if meta.nbytes == 0:
        return torch.empty(meta.shape, dtype=dtype)
    if getattr(buf, "readonly", True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(buf, dtype=torch.uint8)
    else:
        flat = torch.frombuffer(buf, dtype=torch.uint8)
    return flat.view(dtype).view(meta.shape)


def from_torch(name: str, tensor: torch.Tensor) -> tuple[TensorMeta, Any]:
    """Return the meta and a zero-copy buffer for sending ``tensor`` (made contiguous, on the CPU).

    A CPU tensor numpy can view (every wire datatype but BF16) is viewed as an array, contiguous, without
    torch's dispatcher: six tensor operations cost more than the model's own work for a small output.
    """
    dtype = DATATYPES.get(tensor.dtype)
    if dtype is None:
        raise TypeError(f"output {name!r} has dtype {tensor.dtype}, which the wire cannot carry")
    meta = TensorMeta(name, dtype, tuple(tensor.shape))
    if tensor.numel() == 0:
        return meta, b""
    if tensor.is_cpu and not tensor.requires_grad and dtype != "BF16":
        return meta, np.ascontiguousarray(tensor.numpy()).reshape(-1).view(np.uint8)
    tensor = tensor.detach().cpu().contiguous()
    return meta, tensor.reshape(-1).view(torch.uint8).numpy()
