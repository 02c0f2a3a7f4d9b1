"""Shared-memory mappings page-locked for CUDA: registered once when mapped, unregistered before
unmapped, never while a request's tensors view them; on a GPU, inputs copied to the device in place."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from inference_worker import gpu, shm
from inference_worker.protocol import TensorMeta
from inference_worker.tensors import to_torch

pytestmark = pytest.mark.skipif(not shm.supported(), reason="needs memfd_create and /proc")


class Ledger:
    """A :class:`shm.Pinning` that records what it is asked (CUDA's side is checked by the GPU test)."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.live: dict[int, int] = {}  # address -> size, registered now
        self.events: list[tuple[str, int]] = []

    def register(self, memory: mmap.mmap) -> bool:
        at = shm.address(memory)
        assert at not in self.live, "registered twice"
        self.events.append(("register", at))
        if self.accept:
            self.live[at] = len(memory)
        return self.accept

    def unregister(self, memory: mmap.mmap) -> None:
        at = shm.address(memory)  # raises if the mapping were already unmapped
        assert self.live.pop(at) == len(memory), "unregistered what was not registered"
        self.events.append(("unregister", at))


def request(values: np.ndarray) -> tuple[shm.Segment, dict]:
    meta = TensorMeta("x", "FP32", values.shape)
    offsets, end = shm.layout([meta])
    segment = shm.Segment.create(end)
    segment.stamp()
    memoryview(segment.memory)[offsets[0] : offsets[0] + values.nbytes] = values.tobytes()
    return segment, {**segment.ref(), "inputs": [shm.Placed(meta, offsets[0]).to_wire()]}


def test_a_mapping_is_registered_once_and_unregistered_only_after_its_last_view_is_gone() -> None:
    ledger = Ledger()
    mappings = shm.Mappings(pinning=ledger)
    segment, ref = request(np.arange(4096, dtype=np.float32))
    tensors, _ = shm.request_tensors(ref, mappings)
    again, _ = shm.request_tensors(ref, mappings)  # the segment's next request: the same mapping
    assert [e for e, _ in ledger.events] == ["register"] and len(ledger.live) == 1
    memory = mappings.get(ref)
    assert mappings.pinned(memory)
    held = to_torch(*tensors[0])  # a request's tensor, as a batch waiting for its copy holds it
    del tensors, again
    segment.close()  # the gateway lets go: the next sweep drops the mapping
    assert mappings.sweep() == 1 and len(mappings) == 0
    assert mappings.retired == 1 and len(ledger.live) == 1 and not memory.closed  # still viewed
    assert held.sum().item() == float(np.arange(4096, dtype=np.float32).sum())  # still readable
    del held
    assert mappings.sweep() == 0 and mappings.retired == 0
    assert [e for e, _ in ledger.events] == ["register", "unregister"] and not ledger.live
    assert memory.closed  # unmapped after it was unregistered


def test_evicted_and_outgrown_mappings_are_unregistered_and_close_releases_the_rest() -> None:
    ledger = Ledger()
    mappings = shm.Mappings(max_entries=2, pinning=ledger)
    segments = [request(np.full(100, i, dtype=np.float32)) for i in range(3)]
    try:
        for _, ref in segments:
            tensors, _ = shm.request_tensors(ref, mappings)
            del tensors
        assert len(mappings) == 2 and mappings.retired == 1  # the oldest, evicted, waits for the sweep
        mappings.sweep()
        assert mappings.retired == 0 and len(ledger.live) == 2
        _, ref = segments[0]
        bigger = {**ref, "size": ref["size"] + 1}  # refused by attach (larger than the file): nothing leaks
        with pytest.raises(shm.SegmentGone):
            mappings.get(bigger)
        mappings.close()
        assert not ledger.live and len(mappings) == 0 and mappings.retired == 0
        registered = [at for e, at in ledger.events if e == "register"]
        unregistered = [at for e, at in ledger.events if e == "unregister"]
        assert sorted(registered) == sorted(unregistered) and len(registered) == 3
    finally:
        for segment, _ in segments:
            segment.close()


def test_a_refused_registration_is_not_unregistered() -> None:
    ledger = Ledger(accept=False)
    mappings = shm.Mappings(pinning=ledger)
    segment, ref = request(np.zeros(10, np.float32))
    shm.request_tensors(ref, mappings)
    assert not mappings.pinned(mappings.get(ref))
    segment.close()
    mappings.sweep()
    assert [e for e, _ in ledger.events] == ["register"] and mappings.retired == 0


def test_without_a_pinning_a_dropped_mapping_is_unmapped_once_unviewed() -> None:
    mappings = shm.Mappings()
    segment, ref = request(np.ones(10, np.float32))
    tensors, _ = shm.request_tensors(ref, mappings)
    memory = mappings.get(ref)
    segment.close()
    mappings.sweep()
    assert not memory.closed and mappings.retired == 1
    del tensors
    mappings.sweep()
    assert memory.closed and mappings.retired == 0


def test_in_use_sees_views_and_changes_nothing() -> None:
    memory = mmap.mmap(-1, 8192)
    view = memoryview(memory)[64:128]
    assert shm.in_use(memory)
    del view
    assert not shm.in_use(memory) and len(memory) == 8192
    memory.close()
    assert not shm.in_use(memory)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_registered_segment_is_copied_to_the_gpu_in_place() -> None:
    pinning = gpu.HostPinning()
    mappings = shm.Mappings(pinning=pinning)
    values = np.random.default_rng(3).standard_normal((64, 3, 32, 32)).astype(np.float32)
    segment, ref = request(values)
    try:
        tensors, _ = shm.request_tensors(ref, mappings)
        assert pinning.registered == 1
        host = to_torch(*tensors[0])
        assert host.is_pinned()
        assert gpu.stage(host) is host  # no staging copy: the copy in reads the segment
        streams = gpu.Streams(torch.device("cuda:0"))
        on_device = streams.to_device([host])
        streams.inputs_ready()
        torch.cuda.synchronize()
        assert torch.equal(on_device.cpu(), torch.from_numpy(values))
        del tensors, host
        segment.close()
        mappings.sweep()
        assert pinning.registered == 0 and mappings.retired == 0
        plain = torch.from_numpy(values)
        assert not plain.is_pinned() and gpu.stage(plain) is not plain  # frames are still staged
        torch.zeros(1, device="cuda").add_(1)  # no error left behind by the runtime calls
        torch.cuda.synchronize()
    finally:
        segment.close()
