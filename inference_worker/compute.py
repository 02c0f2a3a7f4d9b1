"""Run one batch of requests through a loaded model version on its device, and split the results back."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference_worker.backends import Runner, load_error
from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode, TensorMeta
from inference_worker.repository import ModelConfig
from inference_worker.tensors import TORCH_DTYPES


@dataclass(slots=True)
class BatchTimes:
    """Nanoseconds spent moving inputs in, computing, and moving outputs out, for one batch."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


def check_inputs(config: ModelConfig, metas: Sequence[TensorMeta]) -> int:
    """Check a request's inputs against the model's signature; return its number of samples."""
    by_name = {meta.name: meta for meta in metas}
    expected = {spec.name for spec in config.inputs}
    if set(by_name) != expected or len(metas) != len(expected):
        raise CodedError(
            ErrorCode.INVALID_ARGUMENT,
            f"model {config.name!r} expects inputs {sorted(expected)}, got {[m.name for m in metas]}",
        )
    samples = 1
    for spec in config.inputs:
        meta = by_name[spec.name]
        if (why := spec.mismatch(meta.datatype, meta.shape, config.max_batch_size)) is not None:
            raise CodedError(ErrorCode.INVALID_ARGUMENT, why)
        if config.max_batch_size > 0:
            samples = meta.shape[0]
    return samples


class Executor:
    """A model version resident on one device, with pinned staging buffers when that device is a GPU."""

    def __init__(self, config: ModelConfig, version: str, runner: Runner, device: torch.device) -> None:
        self.config, self.version, self.runner, self.device = config, version, runner, device
        self.cuda = device.type == "cuda"
        self._staging: dict[int, torch.Tensor] = {}

    def warm_up(self) -> None:
        """Run one sample of zeros through the model so the first request pays no first-call costs."""
        batch = [1] if self.config.max_batch_size > 0 else []
        inputs = [
            torch.zeros(batch + [max(d, 1) for d in spec.dims], dtype=TORCH_DTYPES[spec.datatype])
            for spec in self.config.inputs
        ]
        try:
            self.run([inputs], BatchTimes())
        except Exception as exc:
            shapes = ", ".join(
                f"{s.name} {s.datatype} {batch + [max(d, 1) for d in s.dims]}" for s in self.config.inputs
            )
            raise load_error(
                self.config,
                self.version,
                f"warm-up with zeros ({shapes}) failed",
                exc,
                f"the [[input]] and [[output]] tables (datatype, dims) and max_batch_size in "
                f"{self.config.config_path} against what the model takes and returns",
            ) from exc

    def run(self, requests: Sequence[Sequence[torch.Tensor]], times: BatchTimes) -> list[list[torch.Tensor]]:
        """Run requests (each a list of inputs in config order) as one batch; return outputs per request."""
        t0 = time.perf_counter_ns()
        batching = self.config.max_batch_size > 0
        sizes = [int(inputs[0].shape[0]) for inputs in requests] if batching else [1]
        if batching and sum(sizes) == 0:
            return [self._empty_outputs() for _ in requests]
        inputs = [
            self._to_device(index, [r[index] for r in requests]) for index in range(len(self.config.inputs))
        ]
        t1 = time.perf_counter_ns()
        with torch.inference_mode():
            outputs = self.runner(inputs)
            outputs = [self._to_host(out) for out in outputs]
        if self.cuda:
            torch.cuda.current_stream(
                self.device
            ).synchronize()  # outputs copied back before anyone reads them
        t2 = time.perf_counter_ns()
        if batching:
            for spec, out in zip(self.config.outputs, outputs, strict=True):
                if out.dim() == 0 or out.shape[0] != sum(sizes):
                    raise RuntimeError(
                        f"output {spec.name!r} has shape {list(out.shape)}, expected batch {sum(sizes)} first"
                    )
            per_request = [
                list(parts) for parts in zip(*(torch.split(out, sizes) for out in outputs), strict=True)
            ]
        else:
            per_request = [outputs]
        t3 = time.perf_counter_ns()
        times.input_ns, times.infer_ns, times.output_ns = t1 - t0, t2 - t1, t3 - t2
        return per_request

    def _to_device(self, index: int, parts: list[torch.Tensor]) -> torch.Tensor:
        if not self.cuda:
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:]) if len(parts) > 1 else parts[0].shape
        staging = self._pinned(index, parts[0].dtype, math.prod(shape)).view(shape)
        torch.cat(parts, out=staging) if len(parts) > 1 else staging.copy_(parts[0])
        return staging.to(self.device, non_blocking=True)

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    def _pinned(self, index: int, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """Return a pinned flat buffer for input ``index``, grown geometrically and reused across batches."""
        buf = self._staging.get(index)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = torch.empty(
                max(numel, 2 * (buf.numel() if buf is not None else 0)), dtype=dtype, pin_memory=True
            )
            self._staging[index] = buf
        return buf[:numel]

    def _empty_outputs(self) -> list[torch.Tensor]:
        return [
            torch.empty([0] + [max(d, 0) for d in spec.dims], dtype=TORCH_DTYPES[spec.datatype])
            for spec in self.config.outputs
        ]


_PATH = re.compile(r"(/[\w.\-]+)+")


def describe_failure(exc: BaseException) -> tuple[ErrorCode, str]:
    """Return the code and a short message for a failed batch: no traceback, no file paths."""
    if isinstance(exc, CodedError):
        return ErrorCode(exc.code), str(exc)
    text = str(exc).lower()
    if (
        isinstance(exc, torch.OutOfMemoryError | MemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    ):
        return ErrorCode.RESOURCE_EXHAUSTED, "out of memory while running the model"
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return ErrorCode.INTERNAL, f"model raised {type(exc).__name__}: {_PATH.sub('<path>', first_line)[:200]}"
