"""inference_worker.shm: segments, references, placement, and the dispatcher's fallback to frames."""

from __future__ import annotations

import os

import numpy as np
import pytest

from inference_worker import protocol, shm
from inference_worker.dispatcher import inline_segment
from inference_worker.protocol import ProtocolError, TensorMeta

pytestmark = pytest.mark.skipif(not shm.supported(), reason="needs memfd_create and /proc")


def _request(arrays: dict[str, np.ndarray], reply: int = 0) -> tuple[shm.Segment, dict]:
    metas = [TensorMeta(name, "FP32", a.shape) for name, a in arrays.items()]
    offsets, end = shm.layout(metas)
    segment = shm.Segment.create(end + reply)
    segment.stamp()
    view = memoryview(segment.memory)
    for a, at in zip(arrays.values(), offsets, strict=True):
        view[at : at + a.nbytes] = a.tobytes()
    ref = {
        **segment.ref(),
        "inputs": [shm.Placed(m, o).to_wire() for m, o in zip(metas, offsets, strict=True)],
        "reply": [end, reply],
    }
    return segment, ref


def test_a_reference_maps_the_inputs_in_place_and_takes_the_outputs() -> None:
    a, b = np.arange(1000, dtype=np.float32), np.ones((3, 5), dtype=np.float32)
    segment, ref = _request({"a": a, "b": b}, reply=4096)
    try:
        tensors, area = shm.request_tensors(ref)
        assert [(m.name, m.shape) for m, _ in tensors] == [("a", (1000,)), ("b", (3, 5))]
        assert np.array_equal(np.frombuffer(tensors[0][1], np.float32), a)
        out = np.full(100, 7.0, dtype=np.float32)
        assert area is not None
        placed = area.place([(TensorMeta("y", "FP32", (100,)), out.view(np.uint8))])
        assert placed is not None and placed[0]["offset"] >= ref["reply"][0]
        got = shm.placed_tensors(placed, segment.size)[0]
        mine = np.frombuffer(segment.memory, np.float32, count=100, offset=got.offset)
        assert np.array_equal(mine, out)  # written by the other mapping, read here
        too_big = np.zeros(2000, dtype=np.float32)
        assert area.place([(TensorMeta("y", "FP32", (2000,)), too_big.view(np.uint8))]) is None
    finally:
        segment.close()


def test_a_closed_segment_or_a_reused_descriptor_is_refused() -> None:
    segment, ref = _request({"a": np.zeros(10, np.float32)})
    segment.close()
    with pytest.raises(shm.SegmentGone):
        shm.attach(ref)
    other = shm.Segment.create(64)  # may well reuse the descriptor number: the inode tells them apart
    try:
        with pytest.raises(shm.SegmentGone):
            shm.attach({**ref, "fd": other.fd})
    finally:
        other.close()
    with open(os.devnull, "rb") as f:  # a file that is not a segment is never mapped
        with pytest.raises(shm.SegmentGone, match="not a torchgate segment"):
            shm.attach({**ref, "fd": f.fileno()})


def test_malformed_references() -> None:
    segment, ref = _request({"a": np.zeros(10, np.float32)})
    try:
        with pytest.raises(ProtocolError):
            shm.request_tensors({**ref, "inputs": [{**ref["inputs"][0], "offset": segment.size}]})
        with pytest.raises(ProtocolError):
            shm.request_tensors({**ref, "fd": -1})
        _, area = shm.request_tensors({**ref, "reply": [shm.HEADER, 10**9]})
        assert area is None  # a reply area past the segment's end is ignored: outputs go in frames
        with pytest.raises(ProtocolError):  # nothing may overlap the token
            shm.request_tensors({**ref, "inputs": [{**ref["inputs"][0], "offset": 0}]})
    finally:
        segment.close()


def test_the_dispatcher_inlines_a_segment_for_a_worker_on_another_host() -> None:
    a = np.arange(20000, dtype=np.float32)
    segment, ref = _request({"x": a})
    try:
        inlined = inline_segment(protocol.ForwardedRequest(1, "m", "1", [], shm=ref))
        assert inlined.shm is None and [meta for meta, _ in inlined.inputs] == [
            TensorMeta("x", "FP32", (20000,))
        ]
        assert [bytes(buf) for _, buf in inlined.inputs] == [a.tobytes()]
    finally:
        segment.close()


def test_a_segment_used_again_refuses_its_previous_request() -> None:
    pool = shm.Pool()
    first = pool.take(100_000)
    view = memoryview(first.memory)
    view[shm.HEADER : shm.HEADER + 4] = b"abcd"
    meta = TensorMeta("x", "UINT8", (4,))
    ref = {**first.ref(), "inputs": [shm.Placed(meta, shm.HEADER).to_wire()], "reply": [128, 1024]}
    mappings = shm.Mappings()
    tensors, area = shm.request_tensors(ref, mappings)
    assert bytes(tensors[0][1]) == b"abcd" and area is not None
    pool.give(first)
    again = pool.take(100_000)
    assert again is first and again.token != ref["token"]  # same pages, a new use
    with pytest.raises(shm.SegmentGone, match="moved on"):
        shm.request_tensors(ref, mappings)  # a late duplicate of the old request reads nothing
    with pytest.raises(shm.SegmentGone, match="moved on"):
        area.place([(meta, np.frombuffer(b"zzzz", np.uint8))])  # and writes nothing
    assert len(mappings) == 1 and mappings.sweep() == 0
    again.close()
    assert mappings.sweep() == 1 and len(mappings) == 0  # the owner let go: the mapping is dropped
