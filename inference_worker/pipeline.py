"""A model version with a handler, variable-length batching or optional inputs: admit each request (preprocess
it, or name its inputs), batch (padding to the longest; only requests with the same inputs together), run, and
finish each request (cut back, postprocess).

Models with neither run through :class:`inference_worker.compute.Executor` as before.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from inference_worker import padding as pad
from inference_worker import strings
from inference_worker.backends import load_error, load_module, runner
from inference_worker.compute import BatchTimes
from inference_worker.errors import CodedError
from inference_worker.handlers import BoundHandler, load_handler, zeros_inputs
from inference_worker.protocol import ErrorCode, TensorMeta
from inference_worker.repository import ModelConfig
from inference_worker.tensors import TORCH_DTYPES, from_torch, to_torch


def needs_pipeline(config: ModelConfig) -> bool:
    """Return whether ``config`` runs through a :class:`Pipeline` (a handler, padding, optional inputs)."""
    return config.handler is not None or config.padding is not None or config.has_optional_inputs


class Pipeline:
    """One model version resident on a device, with its handler and its padding."""

    def __init__(self, config: ModelConfig, version: str, device: torch.device) -> None:
        self.config, self.version, self.device = config, version, device
        self.files = ""  # the stamp of the files it was loaded from (repository.files_stamp)
        self.cuda = device.type == "cuda"
        self.module = load_module(config, version, device)
        self.handler: BoundHandler | None = (
            load_handler(config, version, device) if config.handler is not None else None
        )
        self.runner = runner(config, self.module) if self.handler is None else None

    # -- one request ------------------------------------------------------------------------------------

    def admit(
        self,
        tensors: Sequence[tuple[TensorMeta, memoryview]],
        samples: int,
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return one request's model inputs by name; raise :class:`CodedError` for this request alone.

        ``parameters`` are the request's, for a handler that takes them."""
        if self.handler is not None:
            try:
                inputs = self.handler.request_inputs(tensors)
            except strings.StringsError as exc:  # the wire checked frames; this guards any other way in
                raise CodedError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
            prepared = self.handler.prepare(inputs, samples, parameters)
        else:
            prepared = {meta.name: to_torch(meta, buf) for meta, buf in tensors}
            prepared = {
                spec.name: prepared[spec.name] for spec in self.config.inputs if spec.name in prepared
            }
        if self.config.padding is not None:
            try:
                pad.length(prepared, self.config.padding)
            except pad.PaddingError as exc:
                code = ErrorCode.INTERNAL if self.handler is not None else ErrorCode.INVALID_ARGUMENT
                raise CodedError(code, str(exc)) from None
        return prepared

    def batch_key(self, prepared: dict[str, torch.Tensor]) -> Hashable:
        return pad.batch_key(prepared, self.config.padding)

    def finish(
        self,
        outputs: dict[str, torch.Tensor],
        prepared: dict[str, torch.Tensor],
        samples: int,
        parameters: Mapping[str, Any] | None = None,
    ) -> list[tuple[TensorMeta, Any]]:
        """Return one request's outputs as wire tensors (postprocessed when there is a handler)."""
        if self.handler is not None:
            return self.handler.finish(outputs, prepared, samples, parameters)
        return [from_torch(spec.name, outputs[spec.name]) for spec in self.config.outputs]

    # -- a batch ----------------------------------------------------------------------------------------

    def run(
        self, requests: Sequence[dict[str, torch.Tensor]], times: BatchTimes
    ) -> list[dict[str, torch.Tensor]]:
        """Run admitted requests as one batch; return each request's outputs, cut back to its length."""
        t0 = time.perf_counter_ns()
        batching = self.config.max_batch_size > 0
        sizes = [int(next(iter(r.values())).shape[0]) for r in requests] if batching else [1]
        lengths: list[int] | None = None
        if self.config.padding is not None:
            batch, lengths = pad.pad_batch(requests, self.config.padding)
        elif len(requests) == 1:
            batch = dict(requests[0])
        else:
            batch = {name: torch.cat([r[name] for r in requests]) for name in requests[0]}
        batch = {name: t.to(self.device, non_blocking=True) for name, t in batch.items()}
        t1 = time.perf_counter_ns()
        with torch.inference_mode():
            if self.handler is not None:
                outputs = self.handler.inference(self.module, batch)
            else:
                assert self.runner is not None
                order = [spec.name for spec in self.config.inputs]
                if self.config.padding is not None and self.config.padding.mask is not None:
                    order.append(self.config.padding.mask)
                names = [spec.name for spec in self.config.outputs]
                # an optional input the batch's requests left out is None (they all leave out the same:
                # the batch key holds their names)
                outputs = dict(zip(names, self.runner([batch.get(n) for n in order]), strict=True))
                for spec in self.config.outputs:
                    if outputs[spec.name].dtype != TORCH_DTYPES[spec.datatype]:
                        raise RuntimeError(
                            f"unexpected datatype {outputs[spec.name].dtype} for output {spec.name!r}, "
                            f"expecting {spec.datatype}"
                        )
            outputs = {name: t.detach().to("cpu") for name, t in outputs.items()}
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        t2 = time.perf_counter_ns()
        if not batching:  # one request, run alone: its outputs are whole
            times.start_ns, times.input_ns, times.infer_ns, times.output_ns = (
                t0,
                t1 - t0,
                t2 - t1,
                time.perf_counter_ns() - t2,
            )
            return [outputs]
        total = sum(sizes)
        for name, out in outputs.items():
            if out.dim() == 0 or out.shape[0] != total:
                raise RuntimeError(
                    f"output {name!r} has shape {list(out.shape)}, expected batch {total} first"
                )
        split = {name: out.split(sizes) for name, out in outputs.items()}
        per_request = [{name: parts[i] for name, parts in split.items()} for i in range(len(requests))]
        if lengths is not None:
            assert self.config.padding is not None
            per_request = [
                pad.unpad(outs, self.config.padding, size)
                for outs, size in zip(per_request, lengths, strict=True)
            ]
        t3 = time.perf_counter_ns()
        times.start_ns, times.input_ns, times.infer_ns, times.output_ns = t0, t1 - t0, t2 - t1, t3 - t2
        return per_request

    def warm_up(self) -> None:
        """Run one request through every stage (the handler's ``warmup_inputs``, or zeros) before READY.

        Without a handler, a model with optional inputs also runs once without them, so one that cannot take
        None for them fails to load, not at its first such request."""
        inputs = self.handler.warmup_inputs() if self.handler is not None else None
        if inputs is None:
            inputs = zeros_inputs(self.config)
        if inputs is None:
            return  # BYTES inputs and no warmup_inputs: the first request pays the first-call costs
        tables = f"the handler and the [[input]]/[[output]] tables in {self.config.config_path}"
        left_out = [spec.name for spec in self.config.inputs if spec.optional]
        if left_out and self.handler is None:  # warmed up with them first: the model must take each
            tables += (
                f" (the model must also take its optional input(s) {', '.join(map(repr, left_out))}; a "
                "torch.export program takes just the inputs it was exported with)"
            )
        self._warm_up(inputs, "warm-up failed", tables)
        if self.handler is None and left_out:
            required = {name: t for name, t in inputs.items() if name not in left_out}
            # every input optional: a request still sends one, so each is tried alone
            trials = [required] if required else [{name: inputs[name]} for name in left_out]
            for trial in (t for t in trials if len(t) < len(inputs)):
                quoted = ", ".join(repr(name) for name in inputs if name not in trial)
                self._warm_up(
                    trial,
                    f"warm-up without the optional input(s) {quoted} (passed as None) failed",
                    f"that the model takes None for them (a default of None), or drop 'optional' in "
                    f"{self.config.config_path}",
                )

    def _warm_up(self, inputs: dict[str, Any], what: str, check: str) -> None:
        try:
            if self.handler is not None:
                samples = _samples(inputs, self.config.max_batch_size)
                prepared = self.handler.prepare(inputs, samples)
            else:
                prepared, samples = dict(inputs), 1
            outputs = self.run([prepared], BatchTimes())[0]
            self.finish(outputs, prepared, samples)
        except Exception as exc:
            raise load_error(
                self.config,
                self.version,
                what,
                exc,
                check,
            ) from exc


def _samples(inputs: dict[str, Any], max_batch_size: int) -> int:
    if max_batch_size == 0:
        return 1
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if hasattr(first, "shape") and len(first.shape) else 1
