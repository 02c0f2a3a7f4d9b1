"""TorchServe's management API: its documents without I/O, then its routes through Flask's test client with
no dispatcher (the served model, with workers, is tested in test_many_models.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.errors import InvalidArgument
from gateway.torchserve_management import (
    body_parameters,
    describe,
    list_models,
    page,
    port_refusal,
    register_target,
)
from harness import write_unloadable_model
from harness.apps import gateway_app
from inference_worker.protocol import StatusReply
from inference_worker.repository import ModelConfig, load_model_config

NAMES = ["e", "a", "d", "c", "b"]


def model(tmp_path: Path, versions: list[int]) -> ModelConfig:
    write_unloadable_model(tmp_path / "repo", "m", versions)
    return load_model_config(tmp_path / "repo" / "m")


def worker(name: str, models: list[str], **extra: object) -> dict[str, object]:
    return {"worker": name, "device": "cpu", "pid": 7, "state": "READY", "models": models, **extra}


@pytest.mark.parametrize(
    ("limit", "token", "expected"),
    [
        (None, None, (100, 0)),
        ("2", "2", (2, 2)),
        ("0", "", (0, 0)),
        ("-1", "-3", (100, 0)),  # out of range: TorchServe's page size, from the start
        ("101", "7", (100, 7)),
    ],
)
def test_a_page_is_read_as_torchserve_reads_it(
    limit: str | None, token: str | None, expected: tuple[int, int]
) -> None:
    assert page(limit, token) == expected


@pytest.mark.parametrize(
    ("limit", "token"), [("ten", None), (None, "1.5"), ("1_0", None), (None, " 2"), ("+3", None)]
)
def test_a_page_that_is_not_a_number_is_refused(limit: str | None, token: str | None) -> None:
    with pytest.raises(InvalidArgument, match="must be an integer"):
        page(limit, token)


def test_a_page_of_thousands_of_digits_is_refused_not_raised() -> None:
    for limit, token in (("1" + "0" * 5000, None), (None, "9" * 5000)):  # int() refuses 4300: was a 500
        with pytest.raises(InvalidArgument, match="out of range"):
            page(limit, token)


def test_models_are_listed_sorted_a_page_at_a_time() -> None:
    first = list_models(NAMES, 2, 0)
    assert first == {
        "nextPageToken": "2",
        "models": [{"modelName": "a", "modelUrl": "a"}, {"modelName": "b", "modelUrl": "b"}],
    }
    second = list_models(NAMES, 2, int(first["nextPageToken"]))
    assert [m["modelName"] for m in second["models"]] == ["c", "d"] and second["nextPageToken"] == "4"
    last = list_models(NAMES, 2, 4)
    assert last == {"models": [{"modelName": "e", "modelUrl": "e"}]}  # nothing follows: no token
    assert list_models(NAMES, 100, 0) == {"models": [{"modelName": n, "modelUrl": n} for n in sorted(NAMES)]}
    assert list_models(NAMES, 2, 9) == {"models": []}


def test_a_description_has_an_entry_per_version_with_the_workers_serving_it(tmp_path: Path) -> None:
    m = model(tmp_path, [1, 2])
    status = StatusReply(
        "s",
        models={"m": {"1": {"ready": 1, "queued": 3}, "2": {"ready": 2, "queued": 0}}},
        workers=[
            worker("w1", ["m/1", "m/2"], since=1538487893.034, rss_bytes=89247744),
            worker("w0", ["m/2", "other/1"], state="DRAINING", since=1538487900.5),
            worker(
                "g0",
                ["other/1"],
                device="cuda:0",
                device_memory={"used_bytes": 3 << 20, "reserved_bytes": 4 << 20},
            ),
        ],
    )
    one, two = describe(m, ["1", "2"], status)
    assert one == {
        "modelName": "m",
        "modelVersion": "1",
        "modelUrl": "m",
        "runtime": "python",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 4,
        "maxBatchDelay": m.max_queue_delay_us // 1000,
        "deviceType": "cpu",
        "workers": [
            {
                "id": "w1",
                "startTime": "2018-10-02T13:44:53.034Z",
                "status": "READY",
                "memoryUsage": 89247744,
                "pid": 7,
                "gpu": False,
                "gpuUsage": "N/A",
            }
        ],
        "jobQueueStatus": {"remainingCapacity": m.max_queue_size - 3, "pendingRequests": 3},
    }
    assert [(w["id"], w["status"]) for w in two["workers"]] == [("w0", "UNLOADING"), ("w1", "READY")]
    assert two["minWorkers"] == 2 and two["jobQueueStatus"]["pendingRequests"] == 0


def test_a_gpu_worker_says_so_and_an_unreachable_dispatcher_leaves_no_worker(tmp_path: Path) -> None:
    m = model(tmp_path, [1])
    status = StatusReply(
        "s",
        workers=[worker("g0", ["m/1"], device="cuda:1", device_memory={"used_bytes": 3 << 20})],
    )
    (gpu,) = describe(m, ["1"], status)[0]["workers"]
    assert gpu["gpu"] is True and gpu["gpuUsage"] == "gpuId::1 memory.used [MiB]::3 MiB"
    assert describe(m, ["1"], status)[0]["deviceType"] == "gpu"
    assert gpu["startTime"] is None and gpu["memoryUsage"] == 0
    (alone,) = describe(m, ["1"], None)
    assert alone["workers"] == [] and alone["minWorkers"] == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({}, "parameter url is required"),
        ({"url": "https://example.com/resnet.mar"}, "archives"),
        ({"url": "resnet-18.mar"}, "archives"),
        ({"url": "../etc"}, "archives"),
        ({"url": "digits", "model_name": "other"}, "differs from url"),
        ({"url": "digits", "batch_size": "8"}, "config.toml"),
        ({"url": "digits", "handler": "image_classifier"}, "config.toml"),
        ({"url": "digits", "frobnicate": "1"}, "unknown register parameter"),
    ],
)
def test_a_registration_this_server_cannot_honour_is_refused(args: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        register_target(args)


def test_a_registration_names_a_model_of_the_repository() -> None:
    assert register_target({"url": "digits"}) == "digits"
    assert register_target({"url": "digits", "model_name": "digits", "initial_workers": "1"}) == "digits"
    assert register_target({"url": "digits", "synchronous": "true"}) == "digits"


def test_a_json_registration_body_reads_as_the_query_string() -> None:
    doc = {"url": "digits", "initial_workers": 1, "synchronous": True}
    assert body_parameters(doc) == {"url": "digits", "initial_workers": "1", "synchronous": "true"}
    bad_docs: list[object] = [[], {"url": ["digits"]}, {"url": None}, {"initial_workers": 1.5}]
    for bad in bad_docs:
        with pytest.raises(InvalidArgument, match="JSON object"):
            body_parameters(bad)


# -- the routes, with no dispatcher --------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    for name in ("b", "a"):
        write_unloadable_model(tmp_path / "repo", name, [1, 2] if name == "a" else [1])
    app = gateway_app(tmp_path, tmp_path / "repo")
    yield app
    app.extensions["torchgate"].client.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_the_routes_list_and_describe_from_the_repository(client: FlaskClient) -> None:
    assert client.get("/models").get_json() == {
        "models": [{"modelName": "a", "modelUrl": "a"}, {"modelName": "b", "modelUrl": "b"}]
    }
    assert client.get("/models?limit=1").get_json()["nextPageToken"] == "1"
    assert client.get("/models?limit=x").status_code == 400
    described = client.get("/models/a").get_json()
    assert [(d["modelVersion"], d["workers"]) for d in described] == [("2", [])]  # the default version
    assert [d["modelVersion"] for d in client.get("/models/a/all").get_json()] == ["1", "2"]
    assert [d["modelVersion"] for d in client.get("/models/a/1").get_json()] == ["1"]
    for path in ("/models/nope", "/models/a/3"):
        missing = client.get(path)
        assert missing.status_code == 404 and "unknown" in missing.get_json()["error"], path


def test_the_routes_refuse_what_needs_model_control_or_is_done_otherwise_here(client: FlaskClient) -> None:
    refused = client.post("/models?url=a")
    assert refused.status_code == 403 and "--model-control explicit" in refused.get_json()["error"]
    assert client.post("/models?url=a.mar").status_code == 400
    assert client.post("/models", json={"url": "a.mar"}).status_code == 400
    assert client.post("/models", json={"url": "a", "initial_workers": 1}).status_code == 403
    assert client.post("/models", data=b"{not json", content_type="application/json").status_code == 400
    assert client.post("/models?url=nope").status_code == 403  # model control is off: that comes first
    assert client.delete("/models/b").status_code == 403
    assert client.delete("/models/nope").status_code == 404
    several = client.delete("/models/a/1")
    assert several.status_code == 400 and "every version" in several.get_json()["error"]
    scale = client.put("/models/a?min_worker=3")
    assert scale.status_code == 400 and "torchgate add-worker" in scale.get_json()["error"]
    assert client.put("/models/nope?min_worker=3").status_code == 404
    default = client.put("/models/a/1/set-default")
    assert default.status_code == 400 and "highest" in default.get_json()["error"]


def test_the_metrics_api_gives_only_the_families_named(client: FlaskClient) -> None:
    """TorchServe's ``GET /metrics?name[]=A&name[]=B`` (a counter named with or without ``_total``)."""
    every = re.findall(r"^# TYPE (\S+) (\S+)", client.get("/metrics").text, re.MULTILINE)
    assert len(every) > 2
    (first, _), (second, kind) = every[0], every[1]
    asked = f"{second}_total" if kind == "counter" else second
    text = client.get(f"/metrics?name[]={first}&name[]={asked}").text
    assert re.findall(r"^# TYPE (\S+)", text, re.MULTILINE) == [first, second]


# -- TorchServe's ports: management (8081) and metrics (8082) answer only their API --------------------------


def test_each_torchserve_port_answers_only_its_api() -> None:
    assert port_refusal(8081, "torchgate.list_models", 8081, 8082) is None
    assert port_refusal(8082, "torchgate.metrics", 8081, 8082) is None
    assert port_refusal(8000, "torchgate.infer", 8081, 8082) is None  # the inference port answers everything
    assert "management port" in (port_refusal(8081, "torchgate.infer", 8081, 8082) or "")
    assert "metrics port" in (port_refusal(8082, "torchgate.list_models", 8081, 8082) or "")
    assert "management port" in (port_refusal(8081, None, 8081, 0) or "")  # no such route: still refused
    assert port_refusal(8081, "torchgate.infer", 0, 0) is None  # no extra ports configured


def test_the_app_keeps_each_request_to_its_port(tmp_path: Path) -> None:
    write_unloadable_model(tmp_path / "repo", "a", [1])
    app = gateway_app(tmp_path, tmp_path / "repo", management_port=8081, metrics_port=8082)
    client = app.test_client()
    try:
        management, metrics = "http://localhost:8081", "http://localhost:8082"
        assert client.get("/models", base_url=management).get_json() == {
            "models": [{"modelName": "a", "modelUrl": "a"}]
        }
        refused = client.post("/v2/models/a/infer", base_url=management, json={})
        assert refused.status_code == 404
        why = "management port: it serves TorchServe's management API (/models) only"
        assert why in refused.get_json()["error"]
        assert client.get("/models", base_url=metrics).status_code == 404
        assert client.get("/ping", base_url=metrics).status_code == 404
        assert client.get("/models").status_code == 200  # the inference port keeps everything
    finally:
        app.extensions["torchgate"].client.close()
