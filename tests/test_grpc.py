"""The gRPC front (Triton's ``inference.GRPCInferenceService``): its messages are Triton's, field for field;
the codec reads raw and typed contents and refuses what it cannot serve; and under ``torchgate serve
--grpc-port``, ``tritonclient.grpc`` works unchanged, gets the same answers as over HTTP, the right status
codes for bad calls, and survives garbage."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import types
from collections import Counter
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import descriptor_pb2, json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from gateway import grpc_codec, grpc_health, grpc_messages, triton
from gateway.codec import RegionSlice, Tensor
from gateway.config import GatewayConfig
from gateway.errors import InvalidArgument
from gateway.grpc_calls import ByteBudget, Turns
from gateway.grpc_server import CODES, MAX_DETAILS_BYTES, STREAM_IN_FLIGHT, Servicer, details, status_code
from harness import (
    DEFAULT_REPOSITORY,
    DIGIT,
    DIGIT_ROW,
    ROOT,
    Processes,
    Stack,
    free_port,
    grpc_health_check,
    short_dir,
    wait_for,
)
from harness.prometheus import parse, total
from inference_worker import strings
from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode
from inference_worker.repository import load_model_config
from inference_worker.strings import StringLimits

LIMITS = StringLimits(max_elements=1000)
TOKEN = "grpc-test-token"
BEARER = {"authorization": f"Bearer {TOKEN}"}
TIMEOUT = 30.0  # every client call's deadline, in seconds

# -- the messages are Triton's --------------------------------------------------------------------------


def _theirs(name: str) -> Any:
    return service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{name}")


def _ours(name: str) -> Any:
    return grpc_messages.POOL.FindMessageTypeByName(f"inference.{name}")


def _type(field: Any) -> str | None:
    kind = field.message_type or field.enum_type
    return None if kind is None else kind.full_name


def _shape(field: Any) -> tuple[Any, ...]:
    """What a client depends on in a field: name, number, type (message or enum), label, oneof, map-ness."""
    message = field.message_type
    entry = message is not None and message.GetOptions().map_entry
    value = message.fields_by_name["value"] if entry else None
    return (
        field.name,
        field.number,
        field.type,
        field.is_repeated,
        None if entry else _type(field),
        field.containing_oneof.name if field.containing_oneof else None,
        None if value is None else (value.type, _type(value)),
    )


@pytest.mark.parametrize("name", sorted(grpc_messages.MESSAGES))
def test_each_message_matches_tritonclients_field_for_field(name: str) -> None:
    ours, theirs = _ours(name), _theirs(name)
    if name in grpc_messages.PARTIAL:  # a subset of Triton's fields, each exactly as Triton's
        assert set(map(_shape, ours.fields)) <= set(map(_shape, theirs.fields))
    else:
        assert sorted(map(_shape, ours.fields)) == sorted(map(_shape, theirs.fields))


@pytest.mark.parametrize("name", sorted(grpc_messages.ENUMS))
def test_each_enum_matches_tritonclients(name: str) -> None:
    ours = grpc_messages.POOL.FindEnumTypeByName(f"inference.{name}")
    theirs = service_pb2.DESCRIPTOR.pool.FindEnumTypeByName(f"inference.{name}")
    assert [(v.name, v.number) for v in ours.values] == [(v.name, v.number) for v in theirs.values]


def test_each_method_takes_and_gives_tritonclients_messages() -> None:
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = grpc_messages.FILE.services_by_name["GRPCInferenceService"]
    assert ours.full_name == grpc_messages.SERVICE
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )


def test_the_descriptor_is_a_valid_proto3_file() -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    grpc_messages.FILE.CopyToProto(proto)
    assert proto.syntax == "proto3" and proto.package == "inference"
    # a message built here reads as tritonclient's and back, byte for byte
    ours = grpc_messages.message("ModelInferRequest", model_name="m", id="x")
    ours.parameters["priority"].int64_param = 3
    ours.inputs.add(name="input", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1.5, 2])
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].contents.fp32_contents == [1.5, 2.0]
    assert theirs.parameters["priority"].int64_param == 3
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)


# -- the codec, without a server ------------------------------------------------------------------------


def _request(**fields: Any) -> Any:
    return grpc_messages.message("ModelInferRequest", model_name="digits", **fields)


def test_raw_input_contents_are_the_tensors_bytes() -> None:
    data = np.arange(6, dtype=np.float32).tobytes()
    msg = _request(raw_input_contents=[data])
    msg.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    request = grpc_codec.infer_request(msg, LIMITS)
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, tuple(tensor.shape), bytes(tensor.data)) == (
        "input",
        "FP32",
        (2, 3),
        data,
    )
    assert request.binary_data_output and request.id is None and request.timeout_us is None


@pytest.mark.parametrize(
    "datatype, field, values, packed",
    [
        ("FP32", "fp32_contents", [1.5, -2.0], struct.pack("<2f", 1.5, -2.0)),
        ("FP64", "fp64_contents", [0.25, 3.0], struct.pack("<2d", 0.25, 3.0)),
        ("INT8", "int_contents", [-3, 7], struct.pack("<2b", -3, 7)),
        ("INT32", "int_contents", [-70000, 1], struct.pack("<2i", -70000, 1)),
        ("INT64", "int64_contents", [-(2**40), 5], struct.pack("<2q", -(2**40), 5)),
        ("UINT16", "uint_contents", [65535, 0], struct.pack("<2H", 65535, 0)),
        ("BOOL", "bool_contents", [True, False], b"\x01\x00"),
    ],
)
def test_typed_contents_become_little_endian_bytes(
    datatype: str, field: str, values: list[Any], packed: bytes
) -> None:
    msg = _request()
    getattr(msg.inputs.add(name="x", datatype=datatype, shape=[2]).contents, field).extend(values)
    [tensor] = grpc_codec.infer_request(msg, LIMITS).inputs
    assert bytes(tensor.data) == packed


def test_bytes_contents_travel_in_tritons_length_prefixed_layout() -> None:
    msg = _request()
    msg.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"ab", b""])
    [tensor] = grpc_codec.infer_request(msg, LIMITS).inputs
    assert bytes(tensor.data) == strings.serialize([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def _bad(msg: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        grpc_codec.infer_request(msg, LIMITS)
    return str(caught.value)


def test_bad_requests_are_refused_naming_what_is_wrong() -> None:
    both = _request(raw_input_contents=[b"\0" * 4])
    both.inputs.add(name="a", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    assert "both contents and raw_input_contents" in _bad(both)

    miscounted = _request(raw_input_contents=[b"\0" * 4, b"\0" * 4])
    miscounted.inputs.add(name="a", datatype="FP32", shape=[1])
    assert "2 entries but there are 1 inputs" in _bad(miscounted)

    empty = _request()
    empty.inputs.add(name="a", datatype="FP32", shape=[1])
    assert "has no data" in _bad(empty)

    half = _request()
    half.inputs.add(name="a", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    assert "FP16 data must be sent in raw_input_contents" in _bad(half)

    wrong_field = _request()
    wrong_field.inputs.add(name="a", datatype="FP32", shape=[1]).contents.int_contents.append(1)
    assert "goes in contents.fp32_contents" in _bad(wrong_field)

    short = _request()
    short.inputs.add(name="a", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([1, 2, 3])
    assert "holds 3 elements, shape [2, 2] needs 4" in _bad(short)

    unknown = _request(raw_input_contents=[b""])
    unknown.inputs.add(name="a", datatype="COMPLEX64", shape=[0])
    assert "datatype 'COMPLEX64' is not supported" in _bad(unknown)

    assert "'inputs' must hold" in _bad(_request())

    negative = _request(raw_input_contents=[b""])
    negative.inputs.add(name="a", datatype="FP32", shape=[-1])
    assert "non-negative" in _bad(negative)

    many = _request()
    many.inputs.add(name="s", datatype="BYTES", shape=[1001]).contents.bytes_contents.extend([b""] * 1001)
    assert "1001 strings, more than 1000" in _bad(many)


def test_shared_memory_parameters_are_read_and_checked() -> None:
    half = _request()
    tensor = half.inputs.add(name="a", datatype="FP32", shape=[1])
    tensor.parameters["shared_memory_region"].string_param = "region"
    assert "needs both 'shared_memory_region' and 'shared_memory_byte_size'" in _bad(half)

    on_output = _request(raw_input_contents=[b"\0" * 4])
    on_output.inputs.add(name="a", datatype="FP32", shape=[1])
    on_output.outputs.add(name="out").parameters["shared_memory_byte_size"].int64_param = 64
    assert "needs both" in _bad(on_output)

    # an input in a region takes no raw_input_contents entry: the entries are the other inputs', in order
    mixed = _request(raw_input_contents=[b"\1\0\0\0"])
    in_region = mixed.inputs.add(name="a", datatype="INT32", shape=[1])
    in_region.parameters["shared_memory_region"].string_param = "in"
    in_region.parameters["shared_memory_byte_size"].int64_param = 4
    in_region.parameters["shared_memory_offset"].int64_param = 8
    mixed.inputs.add(name="b", datatype="INT32", shape=[1])
    out = mixed.outputs.add(name="y")
    out.parameters["shared_memory_region"].string_param = "out"
    out.parameters["shared_memory_byte_size"].int64_param = 40
    parsed = grpc_codec.infer_request(mixed, strings.DEFAULT_LIMITS)
    assert parsed.in_regions == {0: RegionSlice("in", 4, 8)}
    assert [bytes(t.data) for t in parsed.inputs] == [b"", b"\1\0\0\0"]
    assert parsed.outputs[0].region == RegionSlice("out", 40)

    both = type(mixed)()
    both.CopyFrom(mixed)
    both.raw_input_contents.append(b"\0" * 4)
    assert "2 entries but there are 1 inputs not in shared memory" in _bad(both)

    out.parameters["classification"].int64_param = 1
    assert "cannot also be 'classification'" in _bad(mixed)


def test_an_output_written_to_a_region_reads_back_as_triton_sends_it() -> None:
    scores = np.array([[0.5, -1.0]], dtype=np.float32)
    response = grpc_codec.infer_response(
        "m", "1", "", [(Tensor("y", "FP32", (1, 2), scores.tobytes()), RegionSlice("out", 64, 16))]
    )
    assert list(response.raw_output_contents) == [b""]  # one entry per output, empty for a region's
    (entry,) = response.outputs
    assert (entry.name, entry.datatype, list(entry.shape)) == ("y", "FP32", [1, 2])
    assert not entry.parameters  # as Triton's server: the output is where the client asked for it


def test_parameters_timeout_priority_classification_and_the_rest() -> None:
    msg = _request(raw_input_contents=[b"\0" * 4], id="req-1")
    msg.inputs.add(name="a", datatype="FP32", shape=[1])
    msg.parameters["timeout"].int64_param = 1500
    msg.parameters["priority"].uint64_param = 2
    msg.parameters["top_k"].int64_param = 3
    msg.parameters["lang"].string_param = "en"
    msg.outputs.add(name="out").parameters["classification"].int64_param = 4
    request = grpc_codec.infer_request(msg, LIMITS)
    assert (request.id, request.timeout_us, request.priority) == ("req-1", 1500, 2)
    assert request.parameters == {"top_k": 3, "lang": "en"}
    [output] = request.outputs
    assert (output.name, output.binary, output.classification) == ("out", True, 4)

    msg.parameters["timeout"].string_param = "soon"
    assert "'timeout' must be a non-negative integer" in _bad(msg)
    msg.parameters["timeout"].int64_param = -1
    assert "'timeout' must be a non-negative integer" in _bad(msg)
    del msg.parameters["timeout"]
    msg.parameters["priority"].Clear()  # present with no value: as if absent, like timeout
    assert grpc_codec.infer_request(msg, LIMITS).priority == 0
    msg.outputs[0].parameters["classification"].bool_param = True
    assert "'classification' must be a non-negative integer" in _bad(msg)


def test_a_stream_closed_with_answers_unsent_leaves_no_reader_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that sent many requests, read one answer and cancelled: the server closes the stream's
    answers with 64 of them unsent. Its reader, waiting for room to read one more request, must end (it used
    to wait forever for rooms that no answer would give back: a thread per such stream)."""
    gateway = types.SimpleNamespace(config=GatewayConfig())  # its limits alone: _infer is replaced below
    servicer = Servicer(gateway=gateway, threads=2)  # type: ignore[arg-type]
    answered = grpc_messages.message("ModelInferResponse", id="x")
    monkeypatch.setattr(servicer, "_infer", lambda call, request, context, request_id: answered)
    cancelled, sent = threading.Event(), [0]

    def requests() -> Iterator[Any]:
        while not cancelled.is_set():  # grpc's iterator raises once the call is cancelled
            sent[0] += 1
            yield service_pb2.ModelInferRequest(model_name="digits")
        raise RuntimeError("cancelled")

    def readers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "torchgate-grpc-stream")

    before = readers()
    stream = cast(Generator[Any, None, None], servicer.ModelStreamInfer(requests(), None))
    assert next(stream).infer_response.id == "x"
    # 64 read, answered and not sent; the reader holds one more request, waiting for room to run it
    wait_for(lambda: sent[0] > STREAM_IN_FLIGHT, timeout=TIMEOUT, interval=0.01, what="the stream read")
    stream.close()  # what grpc does to a cancelled call's answers
    cancelled.set()
    wait_for(lambda: readers() == before, timeout=TIMEOUT, interval=0.05, what="the stream's reader to end")
    assert servicer.streams.acquire(blocking=False)  # its place given back
    servicer.stream_pool.shutdown()


class _Call:
    """What a turn asks of a call's context: whether its client is there, and the time it has left."""

    def __init__(self, remaining: float) -> None:
        self.active, self.remaining = True, remaining

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self) -> float:
        return self.remaining


def test_a_call_waits_for_its_turn_until_one_is_free_or_its_client_goes() -> None:
    turns = Turns(1)
    held = _Call(60)
    with turns.taken(held):
        late, cancelled = _Call(60), _Call(60)
        late.active, late.remaining = False, 0.0
        cancelled.active = False
        with pytest.raises(CodedError) as caught, turns.taken(late):
            pass
        assert caught.value.code == ErrorCode.DEADLINE_EXCEEDED
        with pytest.raises(CodedError) as caught, turns.taken(cancelled):
            pass
        assert caught.value.code == ErrorCode.CANCELLED
        waiter = _Call(60)
        took = threading.Event()

        def wait_turn() -> None:
            with turns.taken(waiter):
                took.set()

        thread = threading.Thread(target=wait_turn)
        thread.start()
        assert not took.wait(0.2)  # the one turn is held
    thread.join(timeout=TIMEOUT)  # given back: the waiter takes it
    assert took.is_set()
    with pytest.raises(ValueError), turns.taken(held):
        raise ValueError("a failed call gives its turn back")
    with turns.taken(held):
        pass


def test_the_byte_budget_refuses_a_call_and_holds_a_stream_until_bytes_come_back() -> None:
    """Requests held at once are bounded in bytes, as the HTTP gateway's bodies are: one stream of 64 MiB
    requests, or many calls, took the server to GiBs (921 MB for 40 requests of 32 MB on one stream)."""
    budget = ByteBudget(100)
    with budget.held_for(60):
        with pytest.raises(CodedError) as caught, budget.held_for(50):
            pass
        assert (
            caught.value.code == ErrorCode.UNAVAILABLE
            and "holds 60 bytes of requests" in caught.value.message
        )
        with budget.held_for(40):  # what fits is taken
            assert budget.held == 100
        assert not budget.take(50, lambda: False)  # a stream that has gone stops waiting
        took = threading.Event()

        def reader() -> None:
            if budget.take(50, lambda: True):
                took.set()

        thread = threading.Thread(target=reader)
        thread.start()
        assert not took.wait(0.2)  # a stream's reader waits for bytes to come back
    thread.join(timeout=TIMEOUT)
    assert took.is_set() and budget.held == 50
    budget.give(50)
    with budget.held_for(1000):  # one request alone always fits: grpcio bounds its size
        assert budget.held == 1000


def test_a_response_reads_back_through_tritonclients_infer_result() -> None:
    scores = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
    labels = strings.serialize([b"2.000000:2:two"])
    response = grpc_codec.infer_response(
        "digits",
        "1",
        "req-9",
        [
            (Tensor("output", "FP32", (1, 3), scores.tobytes()), True),
            (Tensor("top", "BYTES", (1,), labels), True),
        ],
    )
    result = grpcclient.InferResult(service_pb2.ModelInferResponse.FromString(response.SerializeToString()))
    assert np.array_equal(result.as_numpy("output"), scores)
    assert result.as_numpy("top").tolist() == [b"2.000000:2:two"]
    reply = result.get_response()
    assert (reply.model_name, reply.model_version, reply.id) == ("digits", "1", "req-9")


@pytest.mark.parametrize(
    "folder", [DEFAULT_REPOSITORY / "digits", *sorted((ROOT / "examples" / "repository").iterdir())]
)
def test_every_shipped_models_configuration_reads_as_tritons_model_config(
    folder: Path, tmp_path: Path
) -> None:
    """The HTTP document is the JSON form of ModelConfig: every key of it has its field over gRPC, and
    tritonclient reads back what HTTP says."""
    # the configuration alone: the examples' weights are fetched when used, and no weights are read here
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("[0-9]*"))
    (copy / "1").mkdir()
    for name in ("model.pt", "model.pt2", "model.safetensors"):
        (copy / "1" / name).touch()
    model = load_model_config(copy)
    doc = triton.model_config(model)
    response = grpc_codec.model_config(doc)
    theirs = service_pb2.ModelConfigResponse.FromString(response.SerializeToString())
    back = json_format.MessageToDict(theirs.config, preserving_proto_field_name=True)
    assert back["name"] == model.name and back.get("max_batch_size", 0) == model.max_batch_size
    assert [i["name"] for i in back["input"]] == [t.name for t in model.inputs]
    assert [i["data_type"] for i in back["input"]] == [i["data_type"] for i in doc["input"]]
    assert [int(d) for d in back["output"][0]["dims"]] == list(model.outputs[0].dims)
    assert ("dynamic_batching" in back) == (model.max_batch_size > 0)


def test_statistics_read_as_tritons() -> None:
    doc = {
        "model_stats": [
            {
                "name": "digits",
                "version": "1",
                "last_inference": 1700000000000,
                "inference_count": 7,
                "execution_count": 3,
                "inference_stats": {"success": {"count": 7, "ns": 12345}, "fail": {"count": 0, "ns": 0}},
                "batch_stats": [{"batch_size": 2, "compute_infer": {"count": 2, "ns": 900}}],
            }
        ]
    }
    response = grpc_codec.model_statistics(doc)
    theirs = service_pb2.ModelStatisticsResponse.FromString(response.SerializeToString())
    [stats] = theirs.model_stats
    assert (stats.name, stats.inference_count, stats.execution_count) == ("digits", 7, 3)
    assert stats.inference_stats.success.ns == 12345
    assert stats.batch_stats[0].batch_size == 2 and stats.batch_stats[0].compute_infer.ns == 900


def test_health_messages_are_the_standard_ones_on_the_wire() -> None:
    """grpc.health.v1 as its health.proto defines it: request field 1 the service name, response field 1 the
    status enum (SERVING 1, NOT_SERVING 2)."""
    assert grpc_health.Request(service="x").SerializeToString() == b"\n\x01x"
    assert grpc_health.Response(status=grpc_health.SERVING).SerializeToString() == b"\x08\x01"
    assert grpc_health.Response.FromString(b"\x08\x02").status == grpc_health.NOT_SERVING
    method = grpc_health.FILE.services_by_name["Health"].methods_by_name["Check"]
    assert method.full_name == "grpc.health.v1.Health.Check"
    known = frozenset({"inference.GRPCInferenceService"})
    assert grpc_health.status("", known, True) == grpc_health.SERVING
    assert grpc_health.status("inference.GRPCInferenceService", known, False) == grpc_health.NOT_SERVING
    assert grpc_health.status("other", known, True) is None


def test_every_error_code_has_its_grpc_status() -> None:
    for code in ErrorCode:
        if code is not ErrorCode.DECLINED:  # internal to the gateway, never answered
            assert code in CODES, code
    assert status_code(ErrorCode.NOT_FOUND) is grpc.StatusCode.NOT_FOUND
    assert status_code(ErrorCode.UNAVAILABLE) is grpc.StatusCode.UNAVAILABLE
    assert status_code("SOMETHING_NEW") is grpc.StatusCode.INTERNAL


def test_an_errors_details_fit_the_trailers_encoded() -> None:
    def encoded(text: str) -> int:  # grpc-message: printable ASCII but % as is, every other byte as %XX
        return sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in text)

    assert details("unknown model 'x'") == "unknown model 'x'"
    assert details("a" * MAX_DETAILS_BYTES) == "a" * MAX_DETAILS_BYTES
    for message in ["a" * (MAX_DETAILS_BYTES + 1), "\u00e9" * 2000, "%" * 5000, "\U0001f600" * 400]:
        cut = details(message)
        assert encoded(cut) <= MAX_DETAILS_BYTES and cut.endswith(" characters more)")
        assert message.startswith(cut.partition("... (")[0])


# -- under `torchgate serve --grpc-port` -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Stack, int]]:
    with short_dir() as base:
        token_file = base / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        port = free_port()
        stack = Stack.at(base, headers={"Authorization": f"Bearer {TOKEN}"})
        options = [
            "--gpus",
            "none",
            "--cpu-workers",
            "1",
            "--worker-threads",
            "1",
            "--worker-startsecs",
            "2",
            "--gateway-threads",
            "4",
            "--grpc-port",
            str(port),
            "--auth-token-file",
            str(token_file),
        ]
        with stack.serve(*options) as d:
            d.wait_serving(timeout=120)
            yield d, port


@pytest.fixture
def client(served: tuple[Stack, int]) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{served[1]}") as c:
        yield c


def _status(call: Any) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status())


def _digits(rows: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return [tensor]


@pytest.mark.processes
def test_serve_says_it_serves_grpc(served: tuple[Stack, int]) -> None:
    stack, port = served
    assert f"and gRPC 127.0.0.1:{port}" in stack.log()
    assert stack.supervisor.processes()["grpc"]["statename"] == "RUNNING"


@pytest.mark.processes
def test_health_and_metadata(served: tuple[Stack, int], client: grpcclient.InferenceServerClient) -> None:
    stack, _ = served
    assert client.is_server_live(client_timeout=TIMEOUT)  # liveness needs no token
    assert (
        grpc_health_check(served[1])
        == grpc_health_check(served[1], "inference.GRPCInferenceService")
        == grpc_health.SERVING
    )
    with pytest.raises(grpc.RpcError) as unknown:
        grpc_health_check(served[1], "no.such.Service")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert client.is_server_ready(headers=BEARER, client_timeout=TIMEOUT)
    assert client.is_model_ready("digits", headers=BEARER, client_timeout=TIMEOUT)
    assert not client.is_model_ready("nope", headers=BEARER, client_timeout=TIMEOUT)
    server = client.get_server_metadata(headers=BEARER, client_timeout=TIMEOUT, as_json=True)
    assert server["name"] == "torchgate" and "classification" in server["extensions"]
    model = client.get_model_metadata("digits", headers=BEARER, client_timeout=TIMEOUT, as_json=True)
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "10"]}]
    config = client.get_model_config("digits", headers=BEARER, client_timeout=TIMEOUT, as_json=True)
    over_http = requests.get(
        f"{stack.url}/v2/models/digits/config", headers=stack.headers, timeout=TIMEOUT
    ).json()
    assert config["config"]["name"] == "digits" and config["config"]["max_batch_size"] == 64
    assert config["config"]["input"][0]["data_type"] == over_http["input"][0]["data_type"] == "TYPE_FP32"
    assert config["config"]["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    index = client.get_model_repository_index(headers=BEARER, client_timeout=TIMEOUT, as_json=True)
    assert {"name": "digits", "version": "1", "state": "READY"}.items() <= index["models"][0].items()


@pytest.mark.processes
def test_infer_gives_what_http_gives(
    served: tuple[Stack, int], client: grpcclient.InferenceServerClient
) -> None:
    stack, _ = served
    rows = np.array([DIGIT, DIGIT_ROW, [0.0] * 64], dtype=np.float32)
    result = client.infer("digits", _digits(rows), request_id="r-1", headers=BEARER, client_timeout=TIMEOUT)
    reply = result.get_response()
    assert (reply.model_name, reply.model_version, reply.id) == ("digits", "1", "r-1")
    ours = result.as_numpy("output")
    assert ours.shape == (3, 10) and ours.dtype == np.float32

    with httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}", network_timeout=TIMEOUT) as http:
        tensor = httpclient.InferInput("input", [3, 64], "FP32")
        tensor.set_data_from_numpy(rows, binary_data=True)
        over_http = http.infer("digits", [tensor], headers={"Authorization": f"Bearer {TOKEN}"}).as_numpy(
            "output"
        )
    assert np.array_equal(ours, over_http)
    assert int(ours[0].argmax()) == 0  # DIGIT is a zero
    for compression in ("gzip", "deflate"):  # compressed messages, as tritonclient sends them when asked
        squeezed = client.infer(
            "digits", _digits(rows), headers=BEARER, client_timeout=TIMEOUT, compression_algorithm=compression
        )
        assert np.array_equal(squeezed.as_numpy("output"), ours)
    line = wait_for(
        lambda: next(
            (
                x
                for x in (stack.settings.log_dir / "grpc.log").read_text().splitlines()
                if "request_id=r-1" in x
            ),
            None,
        ),
        timeout=TIMEOUT,
        what="the call's access line",
    )
    assert " GRPC /inference.GRPCInferenceService/ModelInfer 200 " in line
    assert "model=digits version=1 samples=3 batch_size=" in line

    def counted() -> dict[str, Any] | None:
        stats = client.get_inference_statistics(
            "digits", headers=BEARER, client_timeout=TIMEOUT, as_json=True
        )
        [model] = stats["model_stats"]
        return model if int(model.get("inference_count", 0)) >= 12 else None  # 3 rows, 4 calls

    model = wait_for(counted, timeout=TIMEOUT, what="the statistics to count both calls")
    assert (model["name"], model["version"]) == ("digits", "1")
    everything = client.get_inference_statistics(headers=BEARER, client_timeout=TIMEOUT, as_json=True)
    assert [m["name"] for m in everything["model_stats"]] == ["digits"]


@pytest.mark.processes
def test_typed_contents_give_the_same_answer_as_raw(
    served: tuple[Stack, int], client: grpcclient.InferenceServerClient
) -> None:
    """A client that fills ``contents.fp32_contents`` (as KServe's and hand-written clients do)."""
    raw = client.infer("digits", _digits(np.array([DIGIT], np.float32)), headers=BEARER).as_numpy("output")
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend(DIGIT)
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        reply = infer(request, metadata=tuple(BEARER.items()), timeout=TIMEOUT)
    typed = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(1, 10)
    assert np.array_equal(typed, raw)


@pytest.mark.processes
def test_a_stream_answers_every_request_by_id_and_a_bad_one_alone(
    client: grpcclient.InferenceServerClient,
) -> None:
    """tritonclient's stream (start_stream, async_stream_infer): 40 requests, every tenth to a model that
    does not exist; each good one is answered with its own rows' answer, each bad one with its error, the
    stream carries on, and it ends cleanly."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    kinds = {
        (p, q): np.array([DIGIT if p else DIGIT_ROW], np.float32) * (1 + q) for p in (0, 1) for q in (0, 1, 2)
    }
    expected = {
        kind: client.infer("digits", _digits(x), headers=BEARER, client_timeout=TIMEOUT).as_numpy("output")
        for kind, x in kinds.items()
    }
    kind_of = {i: (i % 2, i % 3) for i in range(40)}
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=BEARER)
    try:
        for i, kind in kind_of.items():
            model = "nope" if i % 10 == 9 else "digits"
            client.async_stream_infer(model, _digits(kinds[kind]), request_id=f"s-{i}")
        got = [answers.get(timeout=TIMEOUT) for _ in kind_of]
    finally:
        client.stop_stream()
    results = {r.get_response().id: r for r, e in got if e is None}
    errors = [str(e) for r, e in got if e is not None]
    assert sorted(results) == sorted(f"s-{i}" for i in kind_of if i % 10 != 9)
    assert errors == ["unknown model 'nope'"] * 4
    for i, kind in kind_of.items():
        if i % 10 != 9:  # batched with others, the last bits may differ from the request alone
            output = results[f"s-{i}"].as_numpy("output")
            assert np.allclose(output, expected[kind], rtol=1e-4, atol=1e-4), (i, output, expected[kind])
    assert answers.empty()


@pytest.mark.processes
def test_a_stream_needs_the_token(served: tuple[Stack, int]) -> None:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{served[1]}") as client:
        errors: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: errors.put(error))
        try:
            try:
                client.async_stream_infer("digits", _digits(np.zeros((1, 64), np.float32)))
            except InferenceServerException:
                pass  # the server refused the stream before this request went: the callback has why
            error = errors.get(timeout=TIMEOUT)
        finally:
            client.stop_stream()
    assert "missing or wrong bearer token" in str(error)


@pytest.mark.processes
def test_classification(client: grpcclient.InferenceServerClient) -> None:
    rows = np.array([DIGIT], dtype=np.float32)
    wanted = [grpcclient.InferRequestedOutput("output", class_count=3)]
    result = client.infer("digits", _digits(rows), outputs=wanted, headers=BEARER, client_timeout=TIMEOUT)
    top = result.as_numpy("output")
    assert top.shape == (1, 3)
    assert top[0][0].split(b":")[1] == b"0"


@pytest.mark.processes
def test_bad_calls_get_their_status_code(client: grpcclient.InferenceServerClient) -> None:
    rows = np.zeros((1, 64), np.float32)
    assert _status(lambda: client.infer("nope", _digits(rows), headers=BEARER)) == "StatusCode.NOT_FOUND"
    wrong = np.zeros((1, 63), np.float32)
    assert _status(lambda: client.infer("digits", _digits(wrong), headers=BEARER)) == (
        "StatusCode.INVALID_ARGUMENT"
    )
    assert _status(lambda: client.infer("digits", _digits(rows))) == "StatusCode.UNAUTHENTICATED"
    wrong_token = {"authorization": "Bearer nope"}
    assert _status(lambda: client.is_server_ready(headers=wrong_token)) == "StatusCode.UNAUTHENTICATED"
    # CUDA shared memory as a Triton without GPU support answers it: none registered, none can be
    assert client.get_cuda_shared_memory_status(headers=BEARER, as_json=True) == {}
    client.unregister_cuda_shared_memory(headers=BEARER)
    assert _status(lambda: client.register_cuda_shared_memory("r", b"aGFuZGxl", 0, 64, headers=BEARER)) == (
        "StatusCode.INVALID_ARGUMENT"
    )
    assert _status(lambda: client.get_model_config("nope", headers=BEARER)) == "StatusCode.NOT_FOUND"
    assert _status(lambda: client.get_model_metadata("nope", headers=BEARER)) == "StatusCode.NOT_FOUND"
    shm = grpcclient.InferRequestedOutput("output")
    shm.set_shared_memory("region", 40)
    assert (  # client shared memory is off unless the server allows it
        _status(lambda: client.infer("digits", _digits(rows), outputs=[shm], headers=BEARER))
        == "StatusCode.PERMISSION_DENIED"
    )


@pytest.mark.processes
def test_an_error_echoing_a_long_name_keeps_its_status(served: tuple[Stack, int]) -> None:
    """A model or output name the client sent is echoed in the error's message: cut to fit the trailers a
    client takes (8 KiB), so the client reads the error's own status, not RESOURCE_EXHAUSTED."""
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        unknown = _digits_request("long")
        unknown.model_name = "m" * 20000
        non_ascii = _digits_request("long")
        non_ascii.model_name = "\u00e9" * 2000  # 12,000 bytes once percent-encoded
        no_such_output = _digits_request("long")
        no_such_output.outputs.add(name="o" * 20000)
        for request, code, begins in [
            (unknown, grpc.StatusCode.NOT_FOUND, "unknown model 'mmm"),
            (non_ascii, grpc.StatusCode.NOT_FOUND, "unknown model '\u00e9\u00e9"),
            (no_such_output, grpc.StatusCode.INVALID_ARGUMENT, "model 'digits' has no output 'ooo"),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                infer(request, metadata=tuple(BEARER.items()), timeout=TIMEOUT)
            assert caught.value.code() == code, caught.value.details()
            assert str(caught.value.details()).startswith(begins)
            assert str(caught.value.details()).endswith("characters more)")


@pytest.mark.processes
def test_grpc_requests_count_in_tritons_inference_metrics(
    served: tuple[Stack, int], client: grpcclient.InferenceServerClient
) -> None:
    stack, _ = served
    digits = {"model": "digits", "version": "1"}

    def counts() -> tuple[float, float, float]:
        text = requests.get(f"{stack.url}/metrics", headers=stack.headers, timeout=TIMEOUT).text
        samples = parse(text)
        return (
            total(samples, "nv_inference_request_success", **digits),
            total(samples, "nv_inference_request_failure", reason="OTHER", **digits),
            total(samples, "torchgate_request_duration_seconds_count", **digits),
        )

    def settled() -> tuple[float, float, float] | None:  # earlier tests' HTTP requests all counted
        first = counts()
        return first if counts() == first else None

    before = wait_for(settled, timeout=30, interval=0.1, what="the metrics to settle")
    rows = np.array([DIGIT], dtype=np.float32)
    for _ in range(3):
        client.infer("digits", _digits(rows), headers=BEARER, client_timeout=TIMEOUT)
    wrong = np.zeros((1, 63), np.float32)
    assert _status(lambda: client.infer("digits", _digits(wrong), headers=BEARER)) == (
        "StatusCode.INVALID_ARGUMENT"
    )
    assert _status(lambda: client.infer("nope", _digits(rows), headers=BEARER)) == "StatusCode.NOT_FOUND"
    after = counts()
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (3, 1, 4)


@pytest.mark.processes
def test_garbage_fails_alone(served: tuple[Stack, int], client: grpcclient.InferenceServerClient) -> None:
    port = served[1]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\xff\xff\xff\xff not a protobuf", metadata=tuple(BEARER.items()), timeout=TIMEOUT)
        assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    # not even HTTP/2: bytes on the socket, then a half-sent preface left hanging
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
    trickle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    trickle.sendall(b"PRI * HTTP/2.0\r\n")
    try:
        rows = np.array([DIGIT], dtype=np.float32)
        result = client.infer("digits", _digits(rows), headers=BEARER, client_timeout=TIMEOUT)
        assert int(result.as_numpy("output")[0].argmax()) == 0
    finally:
        trickle.close()


@pytest.mark.processes
def test_a_call_past_its_deadline_fails_alone(client: grpcclient.InferenceServerClient) -> None:
    """A call whose deadline passes at once ends with DEADLINE_EXCEEDED (the server cancels its side) and
    the next call is served.

    gRPC keeps deadlines in milliseconds: a 1 us deadline reaches the server as 1 ms, and on a loaded machine
    the client's own timer can fire after a fast answer arrived (seen: 14 of 200 such calls answered). So
    several calls: none may fail otherwise, and the deadline must end some."""
    rows = np.array([DIGIT], dtype=np.float32)
    outcomes = []
    for _ in range(10):
        try:
            client.infer("digits", _digits(rows), headers=BEARER, client_timeout=1e-6)
            outcomes.append("answered")
        except InferenceServerException as exc:
            outcomes.append(str(exc.status()))
    assert set(outcomes) <= {"StatusCode.DEADLINE_EXCEEDED", "answered"}, outcomes
    assert "StatusCode.DEADLINE_EXCEEDED" in outcomes
    assert (
        client.infer("digits", _digits(rows), headers=BEARER, client_timeout=TIMEOUT).as_numpy("output")
        is not None
    )


def _stream_path(channel: grpc.Channel) -> Any:
    return channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )


def _digits_request(request_id: str) -> Any:
    request = service_pb2.ModelInferRequest(model_name="digits", id=request_id)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.array([DIGIT], np.float32).tobytes())
    return request


@pytest.mark.processes
def test_open_streams_never_leave_unary_calls_waiting_and_past_the_most_one_is_refused(
    served: tuple[Stack, int],
) -> None:
    """A stream holds a server thread while open, idle or not: with 4 threads (``--gateway-threads 4``),
    16 open streams (each answered once, then idle) leave ServerLive and health checks answering; the
    17th stream is refused at once, and closing one makes room."""
    opened: list[tuple[queue.Queue[Any], Any]] = []
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        stream = _stream_path(channel)
        try:
            for i in range(16):  # threads x STREAMS_PER_THREAD
                requests_in: queue.Queue[Any] = queue.Queue()
                requests_in.put(_digits_request(f"open-{i}"))
                answers = stream(iter(requests_in.get, None), metadata=tuple(BEARER.items()), timeout=60)
                opened.append((requests_in, answers))
                assert next(answers).infer_response.id == f"open-{i}"  # open, and holding its thread
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                request_serializer=service_pb2.ServerLiveRequest.SerializeToString,
                response_deserializer=service_pb2.ServerLiveResponse.FromString,
            )
            assert live(service_pb2.ServerLiveRequest(), timeout=TIMEOUT).live
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=grpc_health.Request.SerializeToString,
                response_deserializer=grpc_health.Response.FromString,
            )
            assert check(grpc_health.Request(service=""), timeout=TIMEOUT).status == grpc_health.SERVING
            extra: queue.Queue[Any] = queue.Queue()
            extra.put(_digits_request("one-too-many"))
            with pytest.raises(grpc.RpcError) as refused:
                next(stream(iter(extra.get, None), metadata=tuple(BEARER.items()), timeout=TIMEOUT))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "16 streams are open" in str(refused.value.details())
            requests_in, answers = opened.pop()
            requests_in.put(None)  # the client ends its stream: its thread and place are given back
            assert list(answers) == []

            def another_is_taken() -> bool:
                again: queue.Queue[Any] = queue.Queue()
                again.put(_digits_request("again"))
                again.put(None)
                try:
                    replies = list(
                        stream(iter(again.get, None), metadata=tuple(BEARER.items()), timeout=TIMEOUT)
                    )
                except grpc.RpcError:
                    return False  # the server has not seen the end of the closed one yet
                return [r.infer_response.id for r in replies] == ["again"]

            wait_for(another_is_taken, timeout=TIMEOUT, interval=0.1, what="a stream's place given back")
        finally:
            for requests_in, answers in opened:
                requests_in.put(None)
                answers.cancel()


@pytest.mark.processes
def test_two_authorization_values_are_refused_whatever_their_order(served: tuple[Stack, int]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        metadata_call = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerMetadata",
            request_serializer=service_pb2.ServerMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.ServerMetadataResponse.FromString,
        )
        right, wrong = ("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer nope")
        assert metadata_call(service_pb2.ServerMetadataRequest(), metadata=(right,), timeout=TIMEOUT).name
        for metadata in ((wrong, right), (right, wrong), (right, right)):
            with pytest.raises(grpc.RpcError) as refused:
                metadata_call(service_pb2.ServerMetadataRequest(), metadata=metadata, timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata


@pytest.mark.processes
def test_a_stream_request_may_ask_for_tritons_final_response_flag(
    client: grpcclient.InferenceServerClient,
) -> None:
    """tritonclient's ``async_stream_infer(..., enable_empty_final_response=True)``, as LLM clients loop
    until ``triton_final_response``: each answer is a request's last, and says so; without it, no flag."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=BEARER)
    try:
        rows = _digits(np.array([DIGIT], np.float32))
        client.async_stream_infer("digits", rows, request_id="flagged", enable_empty_final_response=True)
        client.async_stream_infer("digits", rows, request_id="plain")
        got = [answers.get(timeout=TIMEOUT) for _ in range(2)]
    finally:
        client.stop_stream()
    assert [error for _, error in got] == [None, None]
    by_id = {result.get_response().id: result.get_response() for result, _ in got}
    assert by_id["flagged"].parameters["triton_final_response"].bool_param is True
    assert "triton_final_response" not in by_id["plain"].parameters
    assert by_id["flagged"].raw_output_contents == by_id["plain"].raw_output_contents


@pytest.mark.processes
def test_a_repository_call_naming_a_repository_is_unsupported_as_in_triton(served: tuple[Stack, int]) -> None:
    calls = {
        "RepositoryIndex": (service_pb2.RepositoryIndexRequest, service_pb2.RepositoryIndexResponse),
        "RepositoryModelLoad": (
            service_pb2.RepositoryModelLoadRequest,
            service_pb2.RepositoryModelLoadResponse,
        ),
        "RepositoryModelUnload": (
            service_pb2.RepositoryModelUnloadRequest,
            service_pb2.RepositoryModelUnloadResponse,
        ),
    }
    with grpc.insecure_channel(f"127.0.0.1:{served[1]}") as channel:
        for name, (request_type, response_type) in calls.items():
            call = channel.unary_unary(
                f"/inference.GRPCInferenceService/{name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            fields = {"repository_name": "other"} | (
                {} if name == "RepositoryIndex" else {"model_name": "digits"}
            )
            with pytest.raises(grpc.RpcError) as refused:
                call(request_type(**fields), metadata=tuple(BEARER.items()), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
            assert refused.value.details() == "'repository_name' specification is not supported"
        index = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryIndex",
            request_serializer=service_pb2.RepositoryIndexRequest.SerializeToString,
            response_deserializer=service_pb2.RepositoryIndexResponse.FromString,
        )
        answer = index(service_pb2.RepositoryIndexRequest(), metadata=tuple(BEARER.items()), timeout=TIMEOUT)
        assert [m.name for m in answer.models] == ["digits"]


@pytest.mark.processes
def test_a_restarted_grpc_server_keeps_the_requests_it_counted(served: tuple[Stack, int]) -> None:
    """supervisord restarting the gRPC server (a crash, `supervisorctl restart grpc`) leaves its counters in
    its folder: /metrics sums them with the HTTP gateway's, and an emptied folder made the sums go backwards
    (a counter reset Prometheus cannot see: rate() then counts every request again)."""
    stack, port = served
    rows = np.array([DIGIT], dtype=np.float32)
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}") as client:
        for _ in range(3):
            client.infer("digits", _digits(rows), headers=BEARER, client_timeout=TIMEOUT)

    def success() -> float:
        text = requests.get(f"{stack.url}/metrics", headers=stack.headers, timeout=TIMEOUT).text
        return total(parse(text), "nv_inference_request_success", model="digits", version="1")

    def settled() -> float | None:  # the HTTP gateway counts its requests a moment after answering them
        first = success()
        return first if first >= 3 and success() == first else None

    before = wait_for(settled, timeout=30, interval=0.1, what="the metrics to settle")
    supervisor = stack.supervisor
    supervisor.stop("grpc")
    supervisor.start("grpc")

    def serving() -> bool:
        try:
            return grpc_health_check(port, timeout=5) == grpc_health.SERVING
        except grpc.RpcError:  # not listening yet
            return False

    wait_for(serving, timeout=60, what="the gRPC server to serve again")
    assert success() == before
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}") as client:
        client.infer("digits", _digits(rows), headers=BEARER, client_timeout=TIMEOUT)
    assert success() == before + 1


@pytest.mark.processes
def test_terminate_stops_the_grpc_server_too(served: tuple[Stack, int]) -> None:
    """Last in this module: SIGTERM to `torchgate serve` ends it cleanly, gRPC server included."""
    stack, port = served
    grpc_pid = stack.supervisor.processes()["grpc"]["pid"]
    assert stack.terminate() == 0, stack.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with pytest.raises(ProcessLookupError):
        os.kill(grpc_pid, 0)


# -- the gRPC server alone, with no dispatcher behind it ------------------------------------------------


@pytest.mark.processes
def test_alone_it_refuses_too_large_too_many_and_unreachable_with_their_codes(
    tmp_path: Path, processes: Processes
) -> None:
    """With the dispatcher down: live but not ready; a message over the body limit is RESOURCE_EXHAUSTED at
    once, calls past the admitted ones too, the rest UNAVAILABLE; nothing hangs; TERM stops it cleanly; a
    second server on the same port says it cannot listen."""
    port = free_port()
    env = _nobody_answers(tmp_path, MAX_BODY_BYTES="4096", UNRESPONSIVE_AFTER="1")
    args = ("--port", str(port), "--threads", "2", "--grace-seconds", "10")
    server = _listening(processes, processes.python("grpc", "gateway.grpc_server", *args, env=env))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        assert client.is_server_live(client_timeout=TIMEOUT)
        assert not client.is_server_ready(client_timeout=TIMEOUT)
        assert grpc_health_check(port) == grpc_health.NOT_SERVING

        def infer(rows: int) -> str:
            call = lambda: client.infer(  # noqa: E731
                "digits", _digits(np.zeros((rows, 64), np.float32)), client_timeout=TIMEOUT
            )
            return _status(call)

        assert infer(40) == "StatusCode.RESOURCE_EXHAUSTED"  # 10 KB of tensor against 4 KiB
        assert infer(1) == "StatusCode.UNAVAILABLE"
        # 2 threads admit 16 calls (8, and 8 streams); each waits for the dispatcher, so 24 at once overflow:
        # the 17th and 18th are refused by the server's 2 spare threads, with an access line and a warning
        # (grpcio refuses the next without a word)
        with ThreadPoolExecutor(24) as pool:
            answers = Counter(pool.map(infer, [1] * 24))
        assert set(answers) == {"StatusCode.RESOURCE_EXHAUSTED", "StatusCode.UNAVAILABLE"}, answers
        assert answers["StatusCode.UNAVAILABLE"] >= 2
        log = processes.log("grpc")
        assert "grpc: overloaded (16 calls held): refusing calls (1 so far)" in log, log
        refusal = (
            r" GRPC /inference\.GRPCInferenceService/ModelInfer 503 [\d.]+ms request_id="  # no model: not run
        )
        assert re.search(refusal, log), log

    second = processes.python("grpc-again", "gateway.grpc_server", *args, env=env)
    assert second.wait(timeout=60) != 0
    assert "cannot listen" in processes.log("grpc-again")

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, processes.log("grpc")
    assert "grpc: stopped" in processes.log("grpc")


@pytest.mark.processes
def test_requests_past_the_byte_budget_are_refused_or_wait_in_their_stream(
    tmp_path: Path, processes: Processes
) -> None:
    """A budget of 40,000 bytes and calls of 16 KiB that wait for a dispatcher that does not answer: of 6 at
    once, those past the budget are refused at once (UNAVAILABLE, saying so, with their access line); a stream
    of 6 is read as its requests give their bytes back, and every one is answered."""
    port = free_port()
    env = _nobody_answers(
        tmp_path, MAX_BODY_BYTES="32768", GATEWAY_BODY_BUDGET="40000", UNRESPONSIVE_AFTER="2"
    )
    args = ("--port", str(port), "--threads", "8")
    _listening(processes, processes.python("grpc", "gateway.grpc_server", *args, env=env))
    rows = np.zeros((64, 64), np.float32)  # 16 KiB: two fit
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:

        def infer(_: int) -> str:
            with pytest.raises(InferenceServerException) as caught:
                client.infer("digits", _digits(rows), client_timeout=TIMEOUT)
            return str(caught.value.message())

        with ThreadPoolExecutor(6) as pool:
            errors = list(pool.map(infer, range(6)))
        refused = [e for e in errors if "bytes of requests (its budget is 40000)" in e]
        waited = [e for e in errors if "dispatcher" in e]  # held their bytes until the dispatcher failed them
        assert 1 <= len(refused) <= 4 and len(waited) == 6 - len(refused) >= 2, errors
        answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: answers.put(error))
        try:
            for i in range(6):
                client.async_stream_infer("digits", _digits(rows), request_id=f"s-{i}")
            streamed = [answers.get(timeout=TIMEOUT) for _ in range(6)]
        finally:
            client.stop_stream()
        assert all(e is not None and "dispatcher" in str(e) for e in streamed), streamed
    assert " GRPC /inference.GRPCInferenceService/ModelInfer 503 " in processes.log("grpc")


@pytest.mark.processes
def test_inference_calls_past_the_threads_never_keep_other_calls_waiting(
    tmp_path: Path, processes: Processes
) -> None:
    """With 2 threads, 10 inference calls waiting on a dispatcher that does not answer: ServerLive and
    ServerMetadata answer while all 10 still wait (they used to queue behind them until one ended), and the
    calls waiting for their turn end as soon as their client cancels them."""
    port = free_port()
    # the calls that run wait for the dispatcher until cancelled
    env = _nobody_answers(tmp_path, UNRESPONSIVE_AFTER="600")
    args = ("--port", str(port), "--threads", "2")
    _listening(processes, processes.python("grpc", "gateway.grpc_server", *args, env=env))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=service_pb2.ServerLiveRequest.SerializeToString,
            response_deserializer=service_pb2.ServerLiveResponse.FromString,
        )
        metadata = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerMetadata",
            request_serializer=service_pb2.ServerMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.ServerMetadataResponse.FromString,
        )
        # on one channel, the server takes the calls in the order they were made: the 10 first
        waiting = [infer.future(_digits_request(f"wait-{i}"), timeout=300) for i in range(10)]
        try:
            assert live(service_pb2.ServerLiveRequest(), timeout=TIMEOUT).live
            assert metadata(service_pb2.ServerMetadataRequest(), timeout=TIMEOUT).name == triton.SERVER_NAME
            assert not any(call.done() for call in waiting)
        finally:
            for call in waiting:
                call.cancel()
    # the 8 that waited for a turn end at once, each with its access line (499: the client went)
    wait_for(
        lambda: processes.log("grpc").count("ModelInfer 499") >= 8,
        timeout=TIMEOUT,
        what="the cancelled calls' access lines",
    )


def _nobody_answers(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a gRPC server alone, whose dispatcher socket nobody serves, with ``settings`` as
    ``TORCHGATE_<NAME>`` values."""
    return {
        "TORCHGATE_DISPATCHER": f"ipc://{tmp_path}/nobody.sock",
        "TORCHGATE_MODEL_REPOSITORY": str(DEFAULT_REPOSITORY),
        **{f"TORCHGATE_{name}": value for name, value in settings.items()},
    }


def _listening(processes: Processes, server: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Return the gRPC server ``processes`` started as ``grpc``, once it listens; fail if it exited."""
    wait_for(
        lambda: (
            server.poll() is not None or "serving inference.GRPCInferenceService" in processes.log("grpc")
        ),
        timeout=60,
        what="the gRPC server to listen",
    )
    assert server.poll() is None, processes.log("grpc")
    return server
