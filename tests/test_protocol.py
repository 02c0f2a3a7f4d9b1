"""The wire: round trips of every datatype and odd shapes, and malformed or truncated frames."""

from __future__ import annotations

import math

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_worker import protocol
from inference_worker.protocol import DATATYPE_SIZES, Kind, ProtocolError, TensorMeta
from inference_worker.tensors import TORCH_DTYPES, from_torch, to_torch

shapes = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4)


def random_tensor(datatype: str, shape: list[int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(
        0, 256, (math.prod(shape) * DATATYPE_SIZES[datatype],), dtype=torch.uint8, generator=generator
    )
    if datatype == "BOOL":
        raw = raw % 2
    return raw.view(TORCH_DTYPES[datatype]).view(shape)


def wire_round_trip(tensors: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
    frames = protocol.encode(
        Kind.REPLY, {"seq": 1}, [from_torch(n, t) for n, t in tensors], tensor_key="outputs"
    )
    frames = [bytes(memoryview(f)) for f in frames]  # what crosses a socket
    message = protocol.decode(frames)
    assert message.kind is Kind.REPLY and message.get("seq") == 1
    return [to_torch(meta, buf) for meta, buf in message.tensors]


@settings(max_examples=200, deadline=None)
@given(datatype=st.sampled_from(sorted(DATATYPE_SIZES)), shape=shapes, seed=st.integers(0, 2**31))
def test_every_datatype_and_shape_round_trips_bit_exactly(datatype: str, shape: list[int], seed: int) -> None:
    tensor = random_tensor(datatype, shape, seed)
    (back,) = wire_round_trip([("t", tensor)])
    assert back.dtype == tensor.dtype and list(back.shape) == shape
    assert torch.equal(back.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))


def test_non_contiguous_and_multiple_tensors_round_trip() -> None:
    base = torch.arange(24, dtype=torch.float32).view(4, 6)
    transposed, strided = base.t(), base[:, ::2]
    assert not transposed.is_contiguous() and not strided.is_contiguous()
    out = wire_round_trip([("a", transposed), ("b", strided), ("c", torch.empty(0, 3, dtype=torch.bfloat16))])
    assert torch.equal(out[0], transposed) and torch.equal(out[1], strided) and out[2].shape == (0, 3)


def test_large_tensor_frames_are_not_copied_on_decode() -> None:
    payload = bytearray(16 << 20)
    frames = protocol.encode(Kind.REQUEST, {"id": "x"}, [(TensorMeta("t", "FP32", (4 << 20,)), payload)])
    message = protocol.decode(frames)
    tensor = to_torch(*message.tensors[0])
    payload[0:4] = b"\x00\x00\x80\x3f"  # 1.0f written into the original buffer shows through the tensor
    assert tensor[0].item() == 1.0


def test_a_read_only_frame_is_viewed_without_a_warning_and_a_writable_one_in_place() -> None:
    values = torch.arange(6, dtype=torch.float32)
    read_only = memoryview(values.numpy().tobytes())  # bytes: torch warns about such a buffer, once
    assert read_only.readonly
    torch.testing.assert_close(to_torch(TensorMeta("t", "FP32", (2, 3)), read_only), values.view(2, 3))
    writable = bytearray(values.numpy().tobytes())
    tensor = to_torch(TensorMeta("t", "FP32", (6,)), memoryview(writable))
    writable[0:4] = b"\x00\x00\x80\x3f"
    assert tensor[0].item() == 1.0


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(12, dtype=torch.float32).view(3, 4).t(),  # not contiguous
        torch.arange(4, dtype=torch.float32).requires_grad_(),  # needs detaching first
        torch.tensor(7, dtype=torch.int64),  # no dims
        torch.arange(6, dtype=torch.bfloat16).view(2, 3),  # numpy has no bfloat16
        torch.tensor([True, False]),
    ],
)
def test_an_output_goes_to_the_wire_as_its_contiguous_bytes(tensor: torch.Tensor) -> None:
    meta, buf = from_torch("out", tensor)
    expected = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    assert meta == TensorMeta("out", protocol_datatype(tensor.dtype), tuple(tensor.shape))
    assert bytes(memoryview(buf)) == bytes(expected.numpy())


def protocol_datatype(dtype: torch.dtype) -> str:
    return {v: k for k, v in TORCH_DTYPES.items()}[dtype]


def header(**fields: object) -> bytes:
    return msgpack.packb({"v": protocol.VERSION, "kind": "REQUEST", **fields})


@pytest.mark.parametrize(
    "frames, complaint",
    [
        ([], "empty"),
        ([b"\xc1"], "not valid msgpack"),
        ([msgpack.packb([1, 2])], "must be a map"),
        ([msgpack.packb({"v": 99, "kind": "REQUEST"})], "version"),
        ([msgpack.packb({"v": 1, "kind": "PICKLE"})], "unknown message kind"),
        ([msgpack.packb({"v": 1, "kind": 3})], "unknown message kind"),
        ([msgpack.packb({"v": 1, "kind": ["REQUEST"]})], "unknown message kind"),
        ([msgpack.packb({"v": 1})], "unknown message kind"),
        ([header(inputs=[{"name": "x", "datatype": "FP32", "shape": [2]}])], "0 frames follow"),
        ([header(inputs=[{"name": "x", "datatype": "FP32", "shape": [2]}]), b"1234567"], "need 8"),
        ([header(inputs=[{"name": "x", "datatype": "FP33", "shape": [2]}]), b""], "unknown datatype"),
        ([header(inputs=[{"name": "x", "datatype": ["FP32"], "shape": [2]}]), b""], "unknown datatype"),
        ([header(inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}]), b""], "non-negative"),
        (
            [header(inputs=[{"name": "x", "datatype": "FP32", "shape": [2147483647, 2147483647]}]), b""],
            "exceeds the limit",
        ),
        ([header(inputs=[{"name": "x", "datatype": "FP32", "shape": [1.5]}]), b""], "non-negative integer"),
        ([header(inputs=[{"name": "", "datatype": "FP32", "shape": []}]), b""], "name"),
        ([header(inputs="nope")], "must be a list"),
        ([msgpack.packb({"v": 1, "kind": "REQUEST", 1: 2})], "not valid msgpack"),
        ([msgpack.packb({"v": 1, "kind": "REQUEST", "x": msgpack.ExtType(1, b"evil")})], "not valid msgpack"),
    ],
)
def test_malformed_messages_raise_protocol_error(frames: list[bytes], complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        protocol.decode(frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_random_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    try:
        protocol.decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=200))
def test_truncated_headers_raise_protocol_error(cut: int) -> None:
    full = header(id="abc", model="digits", inputs=[{"name": "input", "datatype": "FP32", "shape": [1, 2]}])
    if cut >= len(full):
        return
    with pytest.raises(ProtocolError):
        protocol.decode([full[:cut], b"\x00" * 8])


def test_require_checks_field_types() -> None:
    assert protocol.require({"seq": 3}, "seq", int) == 3
    with pytest.raises(ProtocolError, match="'seq' must be int"):
        protocol.require({"seq": True}, "seq", int)
    with pytest.raises(ProtocolError):
        protocol.require({}, "seq", int)
