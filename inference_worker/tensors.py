"""Wire tensors <-> torch tensors, without copies where torch allows it."""

from __future__ import annotations

from typing import Any

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
    """View a received frame as a tensor of ``meta``'s datatype and shape (no copy; read-only memory)."""
    dtype = TORCH_DTYPES[meta.datatype]
    if meta.nbytes == 0:
        return torch.empty(meta.shape, dtype=dtype)
    import warnings

    with warnings.catch_warnings():  # frames are read-only; the worker never writes into inputs
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(buf, dtype=torch.uint8)
    return flat.view(dtype).view(meta.shape)


def from_torch(name: str, tensor: torch.Tensor) -> tuple[TensorMeta, Any]:
    """Return the meta and a zero-copy buffer for sending ``tensor`` (made contiguous, on the CPU)."""
    if tensor.dtype not in DATATYPES:
        raise TypeError(f"output {name!r} has dtype {tensor.dtype}, which the wire cannot carry")
    tensor = tensor.detach().cpu().contiguous()
    meta = TensorMeta(name, DATATYPES[tensor.dtype], tuple(tensor.shape))
    if tensor.numel() == 0:
        return meta, b""
    return meta, tensor.reshape(-1).view(torch.uint8).numpy()
