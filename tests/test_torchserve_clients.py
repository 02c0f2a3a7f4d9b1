"""TorchServe's clients against torchgate: its gRPC APIs (gateway/torchserve_grpc.py), the messages byte for
byte as TorchServe's .proto files lay them out, then its gRPC and REST clients against one `torchgate serve
--grpc-port --management-port --metrics-port`: answered as the REST API answers, each of TorchServe's extra
ports answering only its API, as TorchServe's do."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

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


class Served(NamedTuple):
    stack: Stack
    channel: grpc.Channel  # to the gRPC port
    management: str  # TorchServe's management port's URL
    metrics: str  # and its metrics port's


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with short_dir() as base:
        token_file = base / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        port, management, metrics = free_port(), free_port(), free_port()
        stack = Stack.at(base, headers={"Authorization": f"Bearer {TOKEN}"})
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--grpc-port", str(port), "--auth-token-file", str(token_file)]
        options += ["--management-port", str(management), "--metrics-port", str(metrics)]
        with stack.serve(*options) as d:
            d.wait_serving(timeout=120)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield Served(d, channel, f"http://127.0.0.1:{management}", f"http://127.0.0.1:{metrics}")


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
def test_a_torchserve_grpc_client_pings_predicts_and_manages(served: Served) -> None:
    stack, channel = served.stack, served.channel
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def ping(**kw: Any) -> Any:
        empty, health = INFERENCE["Empty"](), INFERENCE["TorchServeHealthResponse"]
        return _call(channel, INFERENCE_SERVICE, "Ping", empty, health, **kw)

    assert json.loads(ping(metadata=BEARER).health) == {"status": "Healthy"}
    assert _code(ping) == grpc.StatusCode.UNAUTHENTICATED  # the token is needed, as for REST's /ping

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
    nowhere = INFERENCE["PredictionsRequest"](model_name="nope", input={"data": sample})
    with pytest.raises(grpc.RpcError) as caught:
        list(streamed(nowhere, timeout=TIMEOUT, metadata=BEARER))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

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


@pytest.mark.processes
def test_a_torchserve_client_finds_management_and_metrics_on_their_ports(served: Served) -> None:
    stack, management, metrics = served.stack, served.management, served.metrics
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert f"and management port {management.rsplit(':', 1)[1]}" in stack.log()
    listed = requests.get(f"{management}/models", headers=auth, timeout=TIMEOUT)
    assert listed.status_code == 200 and listed.json()["models"] == [
        {"modelName": "digits", "modelUrl": "digits"}
    ]
    described = requests.get(f"{management}/models/digits", headers=auth, timeout=TIMEOUT).json()
    assert described[0]["modelName"] == "digits" and described[0]["workers"]

    sample = {"input": [0.0] * 64}
    assert (
        requests.post(f"{stack.url}/predict", json=sample, headers=auth, timeout=TIMEOUT).status_code == 200
    )
    scraped = requests.get(f"{metrics}/metrics", headers=auth, timeout=TIMEOUT)
    assert scraped.status_code == 200
    assert re.search(r'^ts_inference_requests_total\{[^}]*model_name="digits"', scraped.text, re.MULTILINE)

    # each extra port answers only its API (behind the same token); the inference port answers everything
    for url, method, path in (
        (management, "POST", "/predictions/digits"),
        (management, "GET", "/v2/health/ready"),
        (management, "GET", "/metrics"),
        (metrics, "GET", "/models"),
        (metrics, "GET", "/ping"),
    ):
        refused = requests.request(method, f"{url}{path}", json=sample, headers=auth, timeout=TIMEOUT)
        assert refused.status_code == 404, (url, path)
        assert "no such endpoint on this port" in refused.json()["error"]
    assert requests.get(f"{management}/models", timeout=TIMEOUT).status_code == 401
    for path in ("/models", "/metrics", "/ping"):
        assert requests.get(f"{stack.url}{path}", headers=auth, timeout=TIMEOUT).status_code == 200


@pytest.mark.processes
def test_a_taken_management_port_is_named_before_anything_starts() -> None:
    with short_dir() as base, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack.at(base)
        done = stack.torchgate("serve", "--port", str(free_port()), "--management-port", str(port))
        assert done.returncode != 0
        assert f"127.0.0.1:{port} is already in use" in done.stderr and "--management-port" in done.stderr
