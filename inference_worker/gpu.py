"""The GPU half of a batch's trip: inputs staged in pinned memory as requests arrive, copied to the device
on a stream of their own while the previous batch computes, outputs copied back on the compute stream, one
event per batch to wait on. Nothing here runs on a CPU-only worker.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from collections.abc import Sequence

import torch

from inference_worker import shm

log = logging.getLogger("torchgate.worker")


def stage(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in pinned host memory: itself when it is already (a registered shared-memory
    segment), else a copy (torch's caching host allocator reuses blocks)."""
    if tensor.is_pinned():
        return tensor
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return pinned.copy_(tensor)


class HostPinning:
    """Page-lock shared-memory mappings with ``cudaHostRegister``, so copies to the GPU read them in place
    (no staging copy); a mapping is unregistered before it is unmapped (``shm.Mappings`` sees to it)."""

    def __init__(self) -> None:
        self.cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        self.registered = 0  # mappings registered now
        self._warned = False

    @staticmethod
    def available() -> bool:
        """Return whether this process can register host memory (torch built with CUDA and a device seen)."""
        return torch.cuda.is_available()

    def register(self, memory: mmap.mmap) -> bool:
        error = int(self.cudart.cudaHostRegister(shm.address(memory), len(memory), 0))
        if error:
            _clear_last_error()  # else the next kernel launch check on this thread reports it
            if not self._warned:
                self._warned = True
                log.warning(
                    "worker: cudaHostRegister of a %d-byte shared-memory segment failed (%s): its inputs are "
                    "staged through pinned buffers instead",
                    len(memory),
                    self.cudart.cudaGetErrorString(error),
                )
            return False
        self.registered += 1
        return True

    def unregister(self, memory: mmap.mmap) -> None:
        error = int(self.cudart.cudaHostUnregister(shm.address(memory)))
        if error:
            _clear_last_error()
            log.warning("worker: cudaHostUnregister failed (%s)", self.cudart.cudaGetErrorString(error))
            return
        self.registered -= 1


def _clear_last_error() -> None:
    """Reset the CUDA runtime's last error on this thread (torch's bindings leave it set)."""
    try:
        ctypes.CDLL(None).cudaGetLastError()  # torch loads the runtime with its symbols global
    except (AttributeError, OSError):
        pass


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
