"""The GPU half of a batch's trip: inputs staged in pinned memory as requests arrive, copied to the device
on a stream of their own while the previous batch computes, outputs copied back on the compute stream, one
event per batch to wait on. Nothing here runs on a CPU-only worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stage(tensor: torch.Tensor) -> torch.Tensor:
    """Return a copy of ``tensor`` in pinned host memory (torch's caching host allocator reuses blocks)."""
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return pinned.copy_(tensor)


class Streams:
    """A copy stream and a compute stream on one device: a batch's copy in overlaps the previous compute."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.copy = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        self.compute = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]

    def to_device(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Copy the requests' parts of one input into one device tensor, on the copy stream."""
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        with torch.cuda.stream(self.copy):
            batch = torch.empty(shape, dtype=parts[0].dtype, device=self.device)
            offset = 0
            for part in parts:
                batch[offset : offset + part.shape[0]].copy_(part, non_blocking=True)
                offset += part.shape[0]
        batch.record_stream(self.compute)  # freed only once the compute stream is done with it
        return batch

    def inputs_ready(self) -> None:
        """Make the compute stream wait for every copy issued so far."""
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(self.copy)
        self.compute.wait_event(event)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """Start copying an output to pinned host memory on the compute stream; valid once :meth:`done` is."""
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    def done(self) -> torch.cuda.Event:
        """Return an event that completes when everything queued on the compute stream so far has."""
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(self.compute)
        return event
