"""The dispatcher's relay of REQUEST and REPLY: it accepts exactly what the typed readers accept, raises the
same errors, and forwards what the typed builders would have built, the tensor frames untouched."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_worker import protocol, strings
from inference_worker.protocol import ErrorCode, Kind, Link, ProtocolError, TensorMeta, relay
from inference_worker.protocol.relay import RelayedReply, RelayedRequest, peek

X = TensorMeta("x", "FP32", (2, 3))
X_BYTES = bytes(range(24))


def typed_request(frames: list[Any]) -> protocol.Request:
    message = protocol.receive(frames, Link.GATEWAY_TO_DISPATCHER)
    assert isinstance(message, protocol.Request)
    return message


def relayed_request(frames: list[Any]) -> RelayedRequest:
    kind, header = peek(frames)
    assert kind is Kind.REQUEST
    return RelayedRequest.read(header, frames)


def outcome(read: Any, frames: list[Any]) -> str:
    try:
        read(frames)
    except ProtocolError as exc:
        return f"ProtocolError: {exc}"
    return "accepted"


def header(**fields: Any) -> bytes:
    return msgpack.packb({"v": protocol.VERSION, "kind": "REQUEST", **fields})


GOOD = {"id": "a", "model": "m", "inputs": [X.to_wire()]}
REQUESTS = [
    protocol.Request("a", "m", [(X, X_BYTES)]).frames(),
    protocol.Request(
        "b", "m", [(X, X_BYTES)], version="2", deadline=1e9, request_id="r", priority=3, outputs=("y",)
    ).frames(),
    protocol.Request("c", "m", [], shm={"name": "seg", "token": 1}).frames(),
    protocol.Request(
        "d", "m", [(TensorMeta("s", "BYTES", (2,)), strings.serialize([b"ab", b"c"]))]
    ).frames(),  # BYTES: checked by decode
    [
        header(**GOOD, deadline=True, priority="x", request_id=5, version=7, shm="no"),
        X_BYTES,
    ],  # odd optionals
    [header(**GOOD, extra={"a": 1}), X_BYTES],  # unknown fields
    [],
    [b"\xc1"],
    [msgpack.packb([1])],
    [msgpack.packb({"v": 2, "kind": "REQUEST"})],
    [msgpack.packb({"v": 1, "kind": ["REQUEST"]})],
    [header(**GOOD), X_BYTES[:-1]],
    [header(**GOOD)],
    [header(**GOOD), X_BYTES, b""],
    [header(**{**GOOD, "id": 3}), X_BYTES],
    [header(**{**GOOD, "model": None}), X_BYTES],
    [header(**GOOD, outputs=[1]), X_BYTES],
    [header(**GOOD, outputs="y"), X_BYTES],
    [header(**{**GOOD, "inputs": [{"name": "x", "datatype": ["FP32"], "shape": [2, 3]}]}), X_BYTES],
    [header(**{**GOOD, "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, True]}]}), X_BYTES],
    [header(**{**GOOD, "inputs": [{"name": "x", "datatype": "FP32", "shape": [6.0]}]}), X_BYTES],
    [header(**{**GOOD, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-2, -3]}]}), X_BYTES],
    [header(**{**GOOD, "inputs": [{"name": "", "datatype": "FP32", "shape": [6]}]}), X_BYTES],
    [header(**{**GOOD, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}]}), b"\x09\x00\x00\x00a"],
    [header(**{**GOOD, "inputs": ["x"]}), X_BYTES],
]


@pytest.mark.parametrize("frames", REQUESTS)
def test_a_request_is_relayed_exactly_when_the_typed_reader_accepts_it(frames: list[Any]) -> None:
    assert outcome(relayed_request, frames) == outcome(typed_request, frames)


@pytest.mark.parametrize("frames", [f for f in REQUESTS if outcome(typed_request, f) == "accepted"])
def test_a_relayed_request_reaches_the_worker_as_the_typed_one_would(frames: list[Any]) -> None:
    typed, relayed = typed_request(frames), relayed_request(frames)
    assert (relayed.id, relayed.model, relayed.version, relayed.deadline, relayed.request_id) == (
        typed.id,
        typed.model,
        typed.version,
        typed.deadline,
        typed.request_id,
    )
    assert relayed.shm == (typed.shm is not None)
    for deadline in (1.5e9, math.inf):
        want = protocol.ForwardedRequest.of(typed, 7, "3", deadline)
        sent = relayed.frames(7, "3", deadline)
        assert sent[1:] == list(frames[1:])  # the tensor frames themselves, not copies
        assert all(a is b for a, b in zip(sent[1:], frames[1:], strict=True))
        got = protocol.receive(sent, Link.DISPATCHER_TO_WORKER)
        assert got == protocol.receive(want.frames(), Link.DISPATCHER_TO_WORKER)
        assert relayed.forwarded(7, "3", deadline) == got


def worker_reply(**fields: Any) -> bytes:
    return msgpack.packb({"v": protocol.VERSION, "kind": "REPLY", **fields})


Y = TensorMeta("y", "INT64", (1,))
Y_BYTES = b"\x01" * 8
REPLIES = [
    protocol.WorkerReply(4, [(Y, Y_BYTES)], {"batch_size": 2}).frames(),
    protocol.WorkerReply(4, [], shm_outputs=[{"name": "y", "offset": 64}]).frames(),
    [worker_reply(seq=4, stats="odd", shm_outputs={"not": "a list"}, outputs=[Y.to_wire()]), Y_BYTES],
    [worker_reply(seq=True, outputs=[Y.to_wire()]), Y_BYTES],
    [worker_reply(outputs=[Y.to_wire()]), Y_BYTES],
    [worker_reply(seq=4, outputs=[Y.to_wire()]), Y_BYTES + b"\x00"],
    [worker_reply(seq=4, outputs=[Y.to_wire()])],
]


def typed_reply(frames: list[Any]) -> protocol.WorkerReply:
    message = protocol.receive(frames, Link.WORKER_TO_DISPATCHER)
    assert isinstance(message, protocol.WorkerReply)
    return message


def relayed_reply(frames: list[Any]) -> RelayedReply:
    kind, header = peek(frames)
    assert kind is Kind.REPLY
    return RelayedReply.read(header, frames)


@pytest.mark.parametrize("frames", REPLIES)
def test_a_reply_is_relayed_exactly_when_the_typed_reader_accepts_it(frames: list[Any]) -> None:
    assert outcome(relayed_reply, frames) == outcome(typed_reply, frames)


@pytest.mark.parametrize("frames", [f for f in REPLIES if outcome(typed_reply, f) == "accepted"])
def test_a_relayed_reply_reaches_the_gateway_as_the_typed_one_would(frames: list[Any]) -> None:
    typed, relayed = typed_reply(frames), relayed_reply(frames)
    assert relayed.seq == typed.seq
    want = protocol.Reply("id", "m", "3", "w0", typed.outputs, typed.stats, typed.shm_outputs)
    sent = relayed.frames("id", "m", "3", "w0")
    assert all(a is b for a, b in zip(sent[1:], frames[1:], strict=True))
    got = protocol.receive(sent, Link.DISPATCHER_TO_GATEWAY)
    assert got == protocol.receive(want.frames(), Link.DISPATCHER_TO_GATEWAY)


def test_a_tensor_over_the_size_limit_is_refused_even_when_its_frame_holds_it() -> None:
    size = protocol.MAX_TENSOR_BYTES + 1
    frame = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(size,), strides=(0,))  # no memory
    frames = [header(**{**GOOD, "inputs": [{"name": "x", "datatype": "UINT8", "shape": [size]}]}), frame]
    assert outcome(relayed_request, frames) == outcome(typed_request, frames)
    assert "exceeds the limit" in outcome(relayed_request, frames)


def test_other_kinds_peek_as_decode_reads_them() -> None:
    frames = protocol.WorkerError(3, ErrorCode.INTERNAL, "x").frames()
    assert peek(frames) == (Kind.ERROR, protocol.decode(frames).fields)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_random_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    try:
        kind, fields = peek(frames)
        if kind is Kind.REQUEST:
            RelayedRequest.read(fields, frames)
    except ProtocolError:
        pass


def test_an_error_code_of_another_type_reads_as_internal() -> None:
    frames = [msgpack.packb({"v": 1, "kind": "ERROR", "seq": 3, "code": ["INTERNAL"], "message": "x"})]
    message = protocol.receive(frames, Link.WORKER_TO_DISPATCHER)
    assert isinstance(message, protocol.WorkerError) and message.code is ErrorCode.INTERNAL


# -- every field, by name: one dropped, crossed or left stale fails here ------------------------------------

FORWARDED_FIELDS = ("seq", "id", "request_id", "model", "version", "deadline", "priority", "outputs", "shm")
REPLY_FIELDS = ("id", "model", "version", "worker", "stats", "shm_outputs")


def test_each_field_of_a_request_reaches_the_worker_under_its_own_name() -> None:
    shm_ref = {"name": "seg", "token": 9, "inputs": [], "reply": [64, 128]}
    frames = protocol.Request(
        "id-1",
        "model-m",
        [(X, X_BYTES)],
        version="asked-v",
        deadline=1.7e9,
        request_id="trace-r",
        priority=5,
        outputs=("out-a", "out-b"),
        shm=shm_ref,
    ).frames()
    relayed = relayed_request(frames)
    got = protocol.receive(relayed.frames(41, "resolved-v", 1.8e9), Link.DISPATCHER_TO_WORKER)
    want = {
        "seq": 41,
        "id": "id-1",
        "request_id": "trace-r",
        "model": "model-m",
        "version": "resolved-v",
        "deadline": 1.8e9,
        "priority": 5,
        "outputs": ("out-a", "out-b"),
        "shm": shm_ref,
    }
    for name in FORWARDED_FIELDS:
        assert getattr(got, name) == want[name], name
    assert [(meta, bytes(buf)) for meta, buf in got.inputs] == [(X, X_BYTES)]


def test_a_request_sent_again_carries_only_the_new_key_version_and_deadline() -> None:
    relayed = relayed_request(protocol.Request("a", "m", [(X, X_BYTES)], version="1", deadline=1e9).frames())
    first = protocol.receive(relayed.frames(1, "1", 1.5e9), Link.DISPATCHER_TO_WORKER)
    again = protocol.receive(relayed.frames(2, "2", math.inf), Link.DISPATCHER_TO_WORKER)
    assert (first.seq, first.version, first.deadline) == (1, "1", 1.5e9)
    assert (again.seq, again.version, again.deadline) == (2, "2", math.inf)
    assert relayed.version == "1" and relayed.deadline == 1e9  # what the gateway asked, for routing it again
    assert [bytes(buf) for _, buf in again.inputs] == [X_BYTES]


def test_each_field_of_a_reply_reaches_the_gateway_under_its_own_name() -> None:
    stats = {"queue_ns": 11, "compute_infer_ns": 22, "batch_size": 3}
    placed = [{"name": "z", "datatype": "FP32", "shape": [1], "offset": 64}]
    frames = protocol.WorkerReply(8, [(Y, Y_BYTES)], stats, placed).frames()
    got = protocol.receive(
        relayed_reply(frames).frames("id-1", "model-m", "version-v", "worker-w"), Link.DISPATCHER_TO_GATEWAY
    )
    assert isinstance(got, protocol.Reply)
    want = {
        "id": "id-1",
        "model": "model-m",
        "version": "version-v",
        "worker": "worker-w",
        "stats": stats,
        "shm_outputs": placed,
    }
    for name in REPLY_FIELDS:
        assert getattr(got, name) == want[name], name
    assert [(meta, bytes(buf)) for meta, buf in got.outputs] == [(Y, Y_BYTES)]


def test_a_workers_own_request_fields_never_reach_the_gateway() -> None:
    frames = [
        worker_reply(seq=8, id="other", model="x", version="9", worker="liar", outputs=[Y.to_wire()]),
        Y_BYTES,
    ]
    sent = relayed_reply(frames).frames("id-1", "m", "1", "w0")
    got = protocol.receive(sent, Link.DISPATCHER_TO_GATEWAY)
    assert (got.id, got.model, got.version, got.worker) == ("id-1", "m", "1", "w0")
    assert "seq" not in msgpack.unpackb(sent[0])


# -- any header, odd values included: the relay accepts, refuses and forwards as the typed path does -------

ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.lists(st.text(max_size=2), max_size=2),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=2),
)
DATATYPES = st.sampled_from(["FP32", "INT64", "UINT8", "BOOL", "BYTES", "FP33", ""]) | ODD
SHAPES = st.lists(st.integers(-1, 3) | st.booleans() | st.just(2.0), max_size=3) | ODD
METAS = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y", ""]) | ODD, "datatype": DATATYPES, "shape": SHAPES}
) | st.sampled_from([X.to_wire(), Y.to_wire()])
GOOD_METAS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "y"]),
        "datatype": st.sampled_from(["FP32", "INT64", "UINT8", "BOOL", "BYTES"]),
        "shape": st.lists(st.integers(0, 3), max_size=3),
    }
)
# Each field absent, well formed (most often) or odd.
REQUEST_FIELDS = {
    "id": st.text(max_size=3),
    "model": st.text(max_size=3),
    "version": st.text(max_size=2),
    "request_id": st.text(max_size=2),
    "deadline": st.floats(0, 2e9),
    "priority": st.integers(-2, 2),
    "outputs": st.lists(st.text(max_size=2), max_size=2),
    "shm": st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=2),
}
REPLY_FIELDS_WIRE = {
    "seq": st.integers(0, 2**40),
    "stats": st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=2),
    "shm_outputs": st.lists(st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=1), max_size=1),
    "id": st.text(max_size=2),
    "worker": st.text(max_size=2),
}


@st.composite
def mostly(draw: Any, good: Any, odd: Any = ODD) -> Any:
    """A value of ``good`` three times in four, else of ``odd``."""
    return draw(good if draw(st.integers(0, 3)) else odd)


@st.composite
def wire_messages(draw: Any, kind: str) -> list[Any]:
    """A header of ``kind`` with each field absent, well formed or odd, and frames that may or may not fit."""
    fields: dict[str, Any] = {"v": 1 if draw(st.integers(0, 9)) else 2, "kind": kind}
    table, key = (REQUEST_FIELDS, "inputs") if kind == "REQUEST" else (REPLY_FIELDS_WIRE, "outputs")
    for name, good in table.items():
        if draw(st.integers(0, 4)):  # present four times in five
            fields[name] = draw(mostly(good))
    metas = draw(mostly(st.lists(mostly(GOOD_METAS, METAS), max_size=2)))
    if metas != [] or draw(st.booleans()):
        fields[key] = metas
    count = len(metas) if isinstance(metas, list) else 0
    count += draw(mostly(st.just(0), st.sampled_from([-1, 1])))
    frames: list[Any] = [msgpack.packb(fields)]
    for i in range(max(0, count)):
        meta = metas[i] if isinstance(metas, list) and i < len(metas) else {}
        meta = meta if isinstance(meta, dict) else {}
        shape = meta.get("shape")
        elements, exact = 1, 4  # odd meta: any length
        if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
            elements = math.prod(shape)
            exact = elements * protocol.DATATYPE_SIZES.get(str(meta.get("datatype")), 1)
        if meta.get("datatype") == "BYTES":
            good_strings = strings.serialize([b"a"] * max(0, min(16, elements)))
            frames.append(draw(mostly(st.just(good_strings), st.just(b"\x09"))))
        else:
            off = draw(mostly(st.just(0), st.sampled_from([-1, 1])))
            frames.append(b"\x01" * max(0, min(256, exact + off)))
    return frames


@settings(max_examples=400, deadline=None)
@given(wire_messages("REQUEST"))
def test_any_request_header_is_relayed_as_the_typed_path_would(frames: list[Any]) -> None:
    assert outcome(relayed_request, frames) == outcome(typed_request, frames)
    if outcome(typed_request, frames) == "accepted":
        typed, relayed = typed_request(frames), relayed_request(frames)
        assert (relayed.id, relayed.model, relayed.version, relayed.deadline, relayed.request_id) == (
            typed.id,
            typed.model,
            typed.version,
            typed.deadline,
            typed.request_id,
        )
        assert relayed.shm == (typed.shm is not None)
        want = protocol.ForwardedRequest.of(typed, 3, "2", 1.5e9).frames()
        got = protocol.receive(relayed.frames(3, "2", 1.5e9), Link.DISPATCHER_TO_WORKER)
        assert got == protocol.receive(want, Link.DISPATCHER_TO_WORKER)


@settings(max_examples=400, deadline=None)
@given(wire_messages("REPLY"))
def test_any_reply_header_is_relayed_as_the_typed_path_would(frames: list[Any]) -> None:
    assert outcome(relayed_reply, frames) == outcome(typed_reply, frames)
    if outcome(typed_reply, frames) == "accepted":
        typed, relayed = typed_reply(frames), relayed_reply(frames)
        assert relayed.seq == typed.seq
        want = protocol.Reply("id", "m", "3", "w0", typed.outputs, typed.stats, typed.shm_outputs).frames()
        got = protocol.receive(relayed.frames("id", "m", "3", "w0"), Link.DISPATCHER_TO_GATEWAY)
        assert got == protocol.receive(want, Link.DISPATCHER_TO_GATEWAY)


def test_the_dispatcher_relays_only_a_gateways_request_and_a_workers_reply() -> None:
    request = protocol.Request("a", "m", [(X, X_BYTES)]).frames()
    reply = protocol.WorkerReply(4, [(Y, Y_BYTES)]).frames()
    assert isinstance(relay.receive(request, Link.GATEWAY_TO_DISPATCHER), RelayedRequest)
    assert isinstance(relay.receive(reply, Link.WORKER_TO_DISPATCHER), RelayedReply)
    for frames, link in ((request, Link.WORKER_TO_DISPATCHER), (reply, Link.GATEWAY_TO_DISPATCHER)):
        with pytest.raises(ProtocolError, match="unexpected"):
            relay.receive(frames, link)
    error = protocol.WorkerError(4, ErrorCode.UNAVAILABLE, "gone").frames()
    assert relay.receive(error, Link.WORKER_TO_DISPATCHER) == protocol.WorkerError(
        4, ErrorCode.UNAVAILABLE, "gone"
    )
