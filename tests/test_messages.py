"""Every message kind: its builder and reader agree, its fields are documented, and the docs show them."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from inference_worker import protocol
from inference_worker.protocol import ErrorCode, Link, ProtocolError, TensorMeta
from inference_worker.protocol.relay import RelayedRequest

ROOT = Path(__file__).resolve().parent.parent
TENSOR = [(TensorMeta("x", "FP32", (1, 2)), b"\0" * 8)]

EXAMPLES: list[Any] = [
    protocol.Request("r1", "m", TENSOR, "2", 12.5, "trace", 3, ("y",), {"fd": 3}, {"top_k": 3, "lang": "en"}),
    protocol.ForwardedRequest(
        7, "m", "2", TENSOR, 12.5, "r1", "trace", 3, ("y",), {"fd": 3}, {"top_k": 3, "on": True, "t": 0.5}
    ),
    protocol.Cancel("r1"),
    protocol.WorkerCancel(7),
    protocol.WorkerReply(7, TENSOR, {"batch_size": 1}, [{"offset": 0}]),
    protocol.Reply("r1", "m", "2", "w0", TENSOR, {"batch_size": 1}, [{"offset": 0}]),
    protocol.WorkerError(7, ErrorCode.INVALID_ARGUMENT, "bad"),
    protocol.Error("r1", ErrorCode.UNAVAILABLE, "gone", "w0"),
    protocol.Ready(
        "w0",
        "abc",
        4,
        [{"name": "m", "version": "2"}],
        42,
        "cpu",
        True,
        [{"model": "x"}],
        ["m"],
        "ipc:///run/direct-w0-42.sock",
    ),
    protocol.Heartbeat("abc", [{"model": "m"}], {"used_bytes": 1}, protocol.Computing(3, 1.5, "m", "2", 8)),
    protocol.Drain(),
    protocol.Disconnect("drained"),
    protocol.Query("r1"),
    protocol.QueryReply("r1", False),
    protocol.Status("s1"),
    protocol.StatusReply(
        "s1",
        {"m": {}},
        [{"worker": "w0"}],
        [{"model": "m"}],
        {"pending": 0},
        [{"model": "m", "reason": "x"}],
        ["n"],
    ),
    protocol.Control("c1", "unload", "m"),
    protocol.ControlReply("c1", False, "busy", ["w0"]),
    protocol.WorkerControl("load", "m"),
    protocol.WorkerControlReply("load", "m", False, "broken"),
]


def header(frames: list[Any]) -> dict[str, Any]:
    return dict(msgpack.unpackb(frames[0], raw=False))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_kind_reads_back_what_it_built(message: Any) -> None:
    frames = [bytes(memoryview(f)) for f in message.frames()]
    (link,) = [link for link, kinds in protocol.ACCEPTS.items() if kinds.get(message.KIND) is type(message)][
        :1
    ]
    back = protocol.receive(frames, link)
    assert type(back) is type(message)
    for name in message.__dataclass_fields__:
        mine, theirs = getattr(message, name), getattr(back, name)
        if name in ("inputs", "outputs") and isinstance(mine, list):
            assert [(m, bytes(b)) for m, b in theirs] == [(m, bytes(b)) for m, b in mine]
        else:
            assert theirs == mine, name


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_header_field_is_documented(message: Any) -> None:
    written = set(header(message.frames())) - {"v", "kind"}
    assert written == set(type(message).FIELDS), type(message).__name__


def test_every_class_is_listed_and_accepted_somewhere() -> None:
    assert {type(m) for m in EXAMPLES} == set(protocol.MESSAGES)
    accepted = {cls for kinds in protocol.ACCEPTS.values() for cls in kinds.values()}
    assert accepted == set(protocol.MESSAGES)


def test_architecture_doc_holds_the_generated_message_table() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert protocol.message_table() in doc, "regenerate it: python -m inference_worker.protocol"


def test_a_kind_on_the_wrong_link_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unexpected READY"):
        protocol.receive(protocol.Ready("w", "i", 1, []).frames(), Link.GATEWAY_TO_DISPATCHER)


@pytest.mark.parametrize(
    ("message", "link", "match"),
    [
        (protocol.encode(protocol.Kind.REQUEST, {"model": "m"}), Link.GATEWAY_TO_DISPATCHER, "'id'"),
        (protocol.encode(protocol.Kind.REQUEST, {"id": "x", "model": "m", "outputs": [1]}), None, "outputs"),
        (protocol.encode(protocol.Kind.REPLY, {"stats": {}}), Link.WORKER_TO_DISPATCHER, "'seq'"),
        (
            protocol.encode(protocol.Kind.READY, {"worker": "w", "models": [{}]}),
            Link.WORKER_TO_DISPATCHER,
            "READY",
        ),
    ],
)
def test_readers_refuse_what_they_rely_on_when_missing(
    message: list[Any], link: Link | None, match: str
) -> None:
    with pytest.raises(ProtocolError, match=match):
        protocol.receive(message, link or Link.GATEWAY_TO_DISPATCHER)


def test_readers_tolerate_unknown_fields_and_odd_optional_ones() -> None:
    frames = protocol.encode(protocol.Kind.REQUEST, {"seq": 1, "deadline": "soon", "future": [1, 2]})
    forwarded = protocol.receive(frames, Link.DISPATCHER_TO_WORKER)
    assert isinstance(forwarded, protocol.ForwardedRequest) and forwarded.deadline == math.inf
    error = protocol.receive(
        protocol.encode(protocol.Kind.ERROR, {"id": "r", "code": "EVIL"}), Link.DISPATCHER_TO_GATEWAY
    )
    assert isinstance(error, protocol.Error) and error.code is ErrorCode.INTERNAL


def test_header_id_is_read_from_a_message_that_fails_to_read() -> None:
    assert protocol.header_id(protocol.encode(protocol.Kind.REQUEST, {"id": "r9"})) == "r9"
    assert protocol.header_id([b"\xc1"]) is None and protocol.header_id([]) is None


def test_the_readiness_rule() -> None:
    status = protocol.StatusReply(
        "s",
        models={"m": {"1": {"ready": 0}, "2": {"ready": 2}}, "n": "garbage"},
        workers=[{"worker": "a", "state": "READY", "pid": 3}, {"worker": "b", "state": "DRAINING"}],
    )
    assert status.ready_count("m") == 2 and status.model_ready("m", "2") and not status.model_ready("m", "1")
    assert not status.model_ready("n") and not status.model_ready("absent")
    assert status.ready_workers() == {"a"} and status.worker_list()[0].pid == 3
    with pytest.raises(ProtocolError):
        protocol.StatusReply("s", workers=[{"state": "READY"}]).worker_list()


@pytest.mark.processes
def test_the_shared_wire_code_imports_neither_torch_nor_zmq() -> None:
    code = (
        "import sys, inference_worker.protocol, inference_worker.repository, inference_worker.errors;"
        "bad = {'torch', 'zmq'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)


def test_request_parameters_travel_through_the_dispatcher_untouched() -> None:
    params: protocol.Parameters = {"top_k": 3, "lang": "en", "on": False, "t": 0.25}
    relayed = RelayedRequest.of(protocol.Request("r1", "m", TENSOR, parameters=params))
    forwarded = protocol.ForwardedRequest.read(protocol.decode(relayed.frames(9, "1", math.inf)))
    assert forwarded.parameters == params and forwarded.seq == 9
    assert "parameters" not in header(protocol.Request("r1", "m", TENSOR).frames())  # none: no field


def test_request_parameters_a_gateway_would_refuse_are_left_out() -> None:
    raw = {"ok": 1, "nested": {"a": 1}, "list": [1], "": 2, "long": "x" * (17 << 10), "x" * 300: 1}
    frames = protocol.encode(protocol.Kind.REQUEST, {"id": "x", "model": "m", "parameters": raw})
    assert protocol.Request.read(protocol.decode(frames)).parameters == {"ok": 1}
    many = {f"p{i}": i for i in range(100)}
    frames = protocol.encode(protocol.Kind.REQUEST, {"id": "x", "model": "m", "parameters": many})
    assert len(protocol.Request.read(protocol.decode(frames)).parameters) == protocol.MAX_PARAMETERS
