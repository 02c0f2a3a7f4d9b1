"""Variable-length batching: pad requests along dim 1 to the longest of their batch, build the mask, and cut
each request's outputs back to its own length. Pure functions over tensors; no I/O.

A request's *length* is the size of dim 1 (the first after the samples) of its padded inputs, which must
agree.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

from inference_worker.repository import Padding


class PaddingError(ValueError):
    """A request whose padded inputs cannot be padded (no dim 1, or lengths that disagree)."""


def length(inputs: Mapping[str, torch.Tensor], padding: Padding) -> int:
    """Return a request's length: dim 1 of its padded inputs."""
    found: tuple[str, int] | None = None
    for name in padding.inputs:
        tensor = inputs.get(name)
        if tensor is None:
            raise PaddingError(f"padded input {name!r} is missing")
        if tensor.dim() < 2:
            raise PaddingError(f"padded input {name!r} of shape {list(tensor.shape)} has no dim 1 to pad")
        size = int(tensor.shape[1])
        if found is not None and size != found[1]:
            raise PaddingError(
                f"padded inputs {found[0]!r} and {name!r} have lengths {found[1]} and {size}: they must agree"
            )
        found = (name, size)
    assert found is not None  # the repository refuses an empty padding.inputs
    return found[1]


def batch_key(inputs: Mapping[str, torch.Tensor], padding: Padding | None) -> Hashable:
    """Return what requests must share to run in one batch: dtypes and shapes, padded dims as their bucket."""
    key = []
    for name, tensor in inputs.items():
        shape = tuple(tensor.shape[1:])
        if padding is not None and name in padding.inputs:
            shape = (-padding.bucket(int(shape[0])), *shape[1:])  # negative: a bucket, not a size
        key.append((name, tensor.dtype, shape))
    return tuple(key)


def pad_batch(
    requests: Sequence[Mapping[str, torch.Tensor]], padding: Padding
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Concatenate requests into one batch, padded to the longest; return it and each request's length."""
    lengths = [length(inputs, padding) for inputs in requests]
    longest = max(lengths)
    batch: dict[str, torch.Tensor] = {}
    for name in requests[0]:
        parts = [inputs[name] for inputs in requests]
        if name in padding.inputs:
            value = padding.inputs[name]
            parts = [_pad(part, longest, value) for part in parts]
        batch[name] = parts[0] if len(parts) == 1 else torch.cat(parts)
    if padding.mask is not None:
        first = next(iter(padding.inputs))
        device = requests[0][first].device
        rows = [
            (torch.arange(longest, device=device) < size)
            .to(torch.int64)
            .expand(int(inputs[first].shape[0]), -1)
            for inputs, size in zip(requests, lengths, strict=True)
        ]
        batch[padding.mask] = torch.cat(rows)
    return batch, lengths


def _pad(tensor: torch.Tensor, longest: int, value: float) -> torch.Tensor:
    missing = longest - int(tensor.shape[1])
    if missing == 0:
        return tensor
    filler = torch.full(
        (tensor.shape[0], missing, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device
    )
    return torch.cat([tensor, filler], dim=1)


def unpad(outputs: Mapping[str, torch.Tensor], padding: Padding, size: int) -> dict[str, torch.Tensor]:
    """Cut one request's padded outputs back to its own length along dim 1."""
    return {
        name: tensor[:, :size] if name in padding.outputs and tensor.dim() >= 2 else tensor
        for name, tensor in outputs.items()
    }
