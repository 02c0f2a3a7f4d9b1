"""TorchServe's gRPC APIs (gateway/torchserve_grpc.py): the messages byte for byte as TorchServe's .proto
files lay them out, then a TorchServe client's calls against `torchgate serve --grpc-port`, answered as the
REST API answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests

from gateway.errors import InvalidArgument
from gateway.torchserve_grpc import (
    INFERENCE,
    INFERENCE_SERVICE,
    MANAGEMENT,
    MANAGEMENT_SERVICE,
    prediction_input,
)
from harness import Stack, free_port, short_dir, wait_for

TOKEN = "torchserve-grpc-token"
BEARER = (("authorization", f"Bearer {TOKEN}"),)
TIMEOUT = 30.0


def _varint_field(number: int, wire: int) -> bytes:
    return bytes([number << 3 | wire])


def _text(number: int, value: bytes) -> bytes:
    return _varint_field(number, 2) + bytes([len(value)]) + value


def test_a_predictions_request_has_torchserves_layout_on_the_wire() -> None:
    # inference.proto: model_name = 1, model_version = 2, map<string, bytes> input = 3 (key 1, value 2)
    request = INFERENCE["PredictionsRequest"](model_name="m", model_version="2", input={"data": b"\x00\x01"})
    entry = _text(1, b"data") + _text(2, b"\x00\x01")
    assert request.SerializeToString() == _text(1, b"m") + _text(2, b"2") + _text(3, entry)
    assert INFERENCE["PredictionResponse"](prediction=b"[1]").SerializeToString() == _text(1, b"[1]")
    assert INFERENCE["TorchServeHealthResponse"](health="ok").SerializeToString() == _text(1, b"ok")
    assert INFERENCE["Empty"].FromString(b"").SerializeToString() == b""


def test_management_requests_have_torchserves_layout_on_the_wire() -> None:
    # management.proto: ListModelsRequest limit = 1, next_page_token = 2 (int32); RegisterModelRequest url = 9
    listed = MANAGEMENT["ListModelsRequest"](limit=5, next_page_token=3).SerializeToString()
    assert listed == _varint_field(1, 0) + b"\x05" + _varint_field(2, 0) + b"\x03"
    register = MANAGEMENT["RegisterModelRequest"](url="digits", initial_workers=1, synchronous=True)
    assert register.SerializeToString() == (
        _varint_field(3, 0) + b"\x01" + _varint_field(8, 0) + b"\x01" + _text(9, b"digits")
    )
    described = MANAGEMENT["DescribeModelRequest"](model_name="m", model_version="1", customized=True)
    assert described.SerializeToString() == _text(1, b"m") + _text(2, b"1") + _varint_field(3, 0) + b"\x01"
    assert MANAGEMENT["ManagementResponse"](msg="{}").SerializeToString() == _text(1, b"{}")


def test_the_data_is_the_entry_named_like_the_input_or_data_and_the_rest_are_parameters() -> None:
    assert prediction_input({"data": b"[1]", "top_k": b"3"}, "input") == (b"[1]", {"top_k": "3"})
    assert prediction_input({"input": b"[1]", "data": b"x"}, "input") == (b"[1]", {"data": "x"})
    assert prediction_input({"anything": b"\xff"}, "input") == (b"\xff", {})  # the only entry
    with pytest.raises(InvalidArgument, match="has parts a, b; send one part, or name it 'input' or 'data'"):
        prediction_input({"a": b"1", "b": b"2"}, "input")
    with pytest.raises(InvalidArgument, match="input entry 'k' is not UTF-8 text"):
        prediction_input({"data": b"[1]", "k": b"\xff"}, "input")


# -- under `torchgate serve --grpc-port` -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Stack, grpc.Channel]]:
    with short_dir() as base:
        token_file = base / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        port = free_port()
        stack = Stack.at(base, headers={"Authorization": f"Bearer {TOKEN}"})
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--grpc-port", str(port), "--auth-token-file", str(token_file)]
        with stack.serve(*options) as d:
            d.wait_serving(timeout=120)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield d, channel


def _call(channel: grpc.Channel, service: str, name: str, request: Any, response: Any, **kw: Any) -> Any:
    method = channel.unary_unary(
        f"/{service}/{name}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response.FromString,
    )
    return method(request, timeout=TIMEOUT, **kw)


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@pytest.mark.processes
def test_a_torchserve_client_pings_predicts_and_manages(served: tuple[Stack, grpc.Channel]) -> None:
    stack, channel = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ping = _call(
        channel, INFERENCE_SERVICE, "Ping", INFERENCE["Empty"](), INFERENCE["TorchServeHealthResponse"]
    )
    assert json.loads(ping.health) == {"status": "Healthy"}  # no token needed, as for REST's /ping

    sample = json.dumps([float(i % 16) for i in range(64)]).encode()
    rest = requests.post(f"{stack.url}/predictions/digits", data=sample, headers=auth, timeout=TIMEOUT)
    request = INFERENCE["PredictionsRequest"](model_name="digits", input={"data": sample})
    answer = _call(
        channel, INFERENCE_SERVICE, "Predictions", request, INFERENCE["PredictionResponse"], metadata=BEARER
    )
    assert rest.status_code == 200 and json.loads(answer.prediction) == rest.json()
    streamed = channel.unary_stream(
        f"/{INFERENCE_SERVICE}/StreamPredictions",
        request_serializer=type(request).SerializeToString,
        response_deserializer=INFERENCE["PredictionResponse"].FromString,
    )
    responses = list(streamed(request, timeout=TIMEOUT, metadata=BEARER))
    assert [json.loads(r.prediction) for r in responses] == [rest.json()]

    listed = _call(
        channel,
        MANAGEMENT_SERVICE,
        "ListModels",
        MANAGEMENT["ListModelsRequest"](),
        MANAGEMENT["ManagementResponse"],
        metadata=BEARER,
    )
    assert json.loads(listed.msg) == requests.get(f"{stack.url}/models", headers=auth, timeout=TIMEOUT).json()
    described = _call(
        channel,
        MANAGEMENT_SERVICE,
        "DescribeModel",
        MANAGEMENT["DescribeModelRequest"](model_name="digits"),
        MANAGEMENT["ManagementResponse"],
        metadata=BEARER,
    )
    assert json.loads(described.msg)[0]["modelName"] == "digits"

    # errors carry their gRPC code and the REST API's message; every access line says GRPC
    unknown = INFERENCE["PredictionsRequest"](model_name="nope", input={"data": sample})
    bad = INFERENCE["PredictionsRequest"](model_name="digits", input={"data": b"[1, 2]"})
    calls = [
        (
            INFERENCE_SERVICE,
            "Predictions",
            unknown,
            INFERENCE["PredictionResponse"],
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            INFERENCE_SERVICE,
            "Predictions",
            bad,
            INFERENCE["PredictionResponse"],
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            MANAGEMENT_SERVICE,
            "ScaleWorker",
            MANAGEMENT["ScaleWorkerRequest"](model_name="digits", min_worker=2),
            MANAGEMENT["ManagementResponse"],
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            MANAGEMENT_SERVICE,
            "RegisterModel",
            MANAGEMENT["RegisterModelRequest"](url="digits"),
            MANAGEMENT["ManagementResponse"],
            grpc.StatusCode.PERMISSION_DENIED,  # model control is off: REST's 403
        ),
    ]
    for service, name, message, response, code in calls:
        with pytest.raises(grpc.RpcError) as caught:
            _call(channel, service, name, message, response, metadata=BEARER)
        assert caught.value.code() == code, name
    no_token = INFERENCE["PredictionsRequest"](model_name="digits", input={"data": sample})
    assert (
        _code(
            lambda: _call(
                channel, INFERENCE_SERVICE, "Predictions", no_token, INFERENCE["PredictionResponse"]
            )
        )
        == grpc.StatusCode.UNAUTHENTICATED
    )
    path = f" GRPC /{INFERENCE_SERVICE}/Predictions "
    wait_for(
        lambda: (
            {" 200 ", " 400 ", " 404 "}
            <= {
                status
                for line in (stack.settings.log_dir / "grpc.log").read_text().splitlines()
                if path in line
                for status in (" 200 ", " 400 ", " 404 ")
                if path + status.strip() + " " in line
            }
        ),
        timeout=TIMEOUT,
        what="an access line for each Predictions answer",
    )
