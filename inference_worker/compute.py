"""Run one batch of requests through a loaded model version on its device, and split the results back."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference_worker import gpu
from inference_worker.backends import Runner, load_error
from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode, TensorMeta
from inference_worker.repository import ModelConfig, fits
from inference_worker.tensors import TORCH_DTYPES


@dataclass(slots=True)
class BatchTimes:
    """Nanoseconds spent moving inputs in, computing, and moving outputs out, for one batch."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    start_ns: int = 0  # when the inputs began to move in (monotonic, as time.monotonic_ns)


def check_inputs(config: ModelConfig, metas: Sequence[TensorMeta]) -> int:
    """Check a request's inputs against the model's signature; return its number of samples."""
    by_name = {meta.name: meta for meta in metas}
    expected = {spec.name for spec in config.inputs}
    required = {spec.name for spec in config.inputs if not spec.optional}
    if not required <= set(by_name) <= expected or len(metas) != len(by_name) or not metas:
        raise CodedError(
            ErrorCode.INVALID_ARGUMENT,
            f"model {config.name!r} expects inputs {sorted(expected)}"
            + (f" (optional: {sorted(expected - required)})" if required != expected else "")
            + f", got {[m.name for m in metas]}",
        )
    samples = 1
    for spec in config.inputs:
        if (meta := by_name.get(spec.name)) is None:
            continue  # an optional input left out
        if (why := spec.mismatch(meta.datatype, meta.shape, config.max_batch_size)) is not None:
            raise CodedError(ErrorCode.INVALID_ARGUMENT, why)
        if config.max_batch_size > 0:
            samples = meta.shape[0]
    return samples


@dataclass(slots=True)
class Launched:
    """A batch on its way: its request sizes, its outputs (valid once ``done`` is, on a GPU), its timings."""

    sizes: list[int]
    batching: bool
    outputs: list[torch.Tensor]
    done: torch.cuda.Event | None
    t0: int
    t1: int
    empty: int = 0  # a batch of zero samples: this many requests, answered with empty outputs


class Executor:
    """A model version resident on one device, with pinned staging buffers when that device is a GPU."""

    def __init__(self, config: ModelConfig, version: str, runner: Runner, device: torch.device) -> None:
        self.config, self.version, self.runner, self.device = config, version, runner, device
        self.files = ""  # the stamp of the files it was loaded from (repository.files_stamp)
        self.cuda = device.type == "cuda"
        self.streams = gpu.Streams(device) if self.cuda else None
        if self.cuda:
            # The model was built and loaded on the default stream; the copy and compute streams are
            # non-blocking ones, which never wait for it: a buffer filled by a kernel there (not by a
            # synchronous copy) could still be in flight when the first batch reads it.
            torch.cuda.synchronize(device)

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

    def stage(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Prepare one request's inputs as it arrives: on a GPU, copied into pinned memory now, not later."""
        return [gpu.stage(t) for t in inputs] if self.streams is not None else inputs

    def run(self, requests: Sequence[Sequence[torch.Tensor]], times: BatchTimes) -> list[list[torch.Tensor]]:
        """Run requests (each a list of inputs in config order) as one batch; return outputs per request."""
        return self.finish(self.launch(requests, times), times)

    def launch(self, requests: Sequence[Sequence[torch.Tensor]], times: BatchTimes) -> Launched:
        """Start a batch: on a GPU, queue the copy in, the model and the copy out, and return without waiting
        (the next batch's copy in then overlaps this one's compute); on the CPU, compute it."""
        t0 = time.perf_counter_ns()
        batching = self.config.max_batch_size > 0
        sizes = [int(inputs[0].shape[0]) for inputs in requests] if batching else [1]
        if batching and sum(sizes) == 0:
            return Launched(sizes, batching, [], None, t0, t0, empty=len(requests))
        streams = self.streams
        if streams is None:
            inputs = [self._concat([r[i] for r in requests]) for i in range(len(self.config.inputs))]
            t1 = time.perf_counter_ns()
            with torch.inference_mode():
                outputs = self.runner(inputs)
            return Launched(sizes, batching, list(outputs), None, t0, t1)
        inputs = [streams.to_device([r[i] for r in requests]) for i in range(len(self.config.inputs))]
        streams.inputs_ready()
        t1 = time.perf_counter_ns()
        with torch.cuda.stream(streams.compute), torch.inference_mode():
            outputs = [streams.to_host(out) for out in self.runner(inputs)]
            done = streams.done()
        return Launched(sizes, batching, outputs, done, t0, t1)

    def finish(self, launched: Launched, times: BatchTimes) -> list[list[torch.Tensor]]:
        """Wait for a launched batch (a GPU's event) and return its outputs split per request."""
        if launched.empty:
            return [self._empty_outputs() for _ in range(launched.empty)]
        if launched.done is not None:
            launched.done.synchronize()  # lets go of the GIL: the session and the next launch carry on
        t2 = time.perf_counter_ns()
        sizes, outputs = launched.sizes, launched.outputs
        for spec, out in zip(self.config.outputs, outputs, strict=True):
            if out.dtype != TORCH_DTYPES[spec.datatype]:  # as Triton's libtorch backend: never sent as is
                raise RuntimeError(
                    f"unexpected datatype {out.dtype} for output {spec.name!r}, expecting {spec.datatype}"
                )
            if launched.batching and (out.dim() == 0 or out.shape[0] != sum(sizes)):
                raise RuntimeError(
                    f"output {spec.name!r} has shape {list(out.shape)}, expected batch {sum(sizes)} first"
                )
            sample = out.shape[1:] if launched.batching else out.shape
            if not fits(sample, spec.dims):  # as the metadata says: never sent another shape
                shape = [-1, *sample] if launched.batching else list(sample)
                raise RuntimeError(
                    f"unexpected shape {shape} for output {spec.name!r}, the config says "
                    f"{[-1, *spec.dims] if launched.batching else list(spec.dims)} (-1: any size)"
                )
        if launched.batching:
            if len(sizes) == 1:  # one request: its outputs are the batch's, nothing to split
                per_request = [list(outputs)]
            else:
                split = (torch.split(out, sizes) for out in outputs)
                per_request = [list(parts) for parts in zip(*split, strict=True)]
        else:
            per_request = [outputs]
        t3 = time.perf_counter_ns()
        times.start_ns, times.input_ns, times.infer_ns = (
            launched.t0,
            launched.t1 - launched.t0,
            t2 - launched.t1,
        )
        times.output_ns = t3 - t2
        return per_request

    @staticmethod
    def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

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
