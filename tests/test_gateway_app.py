"""The Flask application through its test client: endpoints, validation and every error shape.

No dispatcher runs here, so whatever these requests get back was decided by the gateway alone.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway import GatewayConfig
from gateway.routes import OPENAPI_PATH
from gateway.service import CONTROL_BODY
from harness import DEFAULT_REPOSITORY, run
from harness import write_unloadable_model as write_model
from harness.apps import gateway_app as make_app
from inference_worker.repository import load_repository

DIGITS_ROW = [float(i % 17) for i in range(64)]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = make_app(tmp_path)
    yield app
    app.extensions["torchgate"].client.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def infer_body(shape: list[int], data: object, datatype: str = "FP32", name: str = "input") -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()


def test_liveness_and_metadata(client: FlaskClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    server = client.get("/v2").get_json()
    assert server["name"] == "torchgate" and "binary_tensor_data" in server["extensions"]
    meta = client.get("/v2/models/digits").get_json()
    assert meta == {
        "name": "digits",
        "versions": ["1"],
        "platform": "pytorch_export",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get("/v2/models/digits/versions/1").get_json()["versions"] == ["1"]
    config = client.get("/v2/models/digits/config").get_json()
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64], "optional": False}]
    expected = load_repository(DEFAULT_REPOSITORY)["digits"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == expected.max_queue_delay_us
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == expected.max_queue_size


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/config",
        "/v2/models/digits/versions/7",
        "/v2/models/digits/versions/7/ready",
        "/v2/models/nope/stats",
    ],
)
def test_unknown_models_and_versions_are_404(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404 and "error" in response.get_json()


def test_readiness_without_a_dispatcher_is_false(client: FlaskClient) -> None:
    response = client.get("/v2/health/ready")  # the status query gives up after status_timeout
    assert response.status_code == 400 and response.get_json() == {
        "ready": False,
        "error": "the dispatcher does not answer",
    }
    assert client.get("/v2/models/digits/ready").status_code == 400
    assert client.get("/v2/models/stats").status_code == 503
    ping = client.get("/ping")  # TorchServe's health check, which a load balancer acts on by its status
    assert ping.status_code == 503 and ping.get_json() == {"status": "Unhealthy"}


def test_inference_without_a_dispatcher_is_503_with_retry_after(client: FlaskClient) -> None:
    response = client.post("/v2/models/digits/infer", data=infer_body([1, 64], DIGITS_ROW))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "dispatcher" in response.get_json()["error"]
    # /invocations without model_name goes to the only model (so it got as far as asking the dispatcher)
    for path in ("/invocations", "/invocations?model_name=digits", "/models/digits/invoke"):
        response = client.post(path, json=DIGITS_ROW)
        assert response.status_code == 503 and "dispatcher" in response.get_json()["error"], path
    assert client.post("/invocations?model_name=nope", json=DIGITS_ROW).status_code == 404


def test_deadline_without_an_answer_is_504(tmp_path: Path) -> None:
    app = make_app(tmp_path, unresponsive_after=60.0)
    body = json.dumps(
        {
            "parameters": {"timeout": 200_000},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": DIGITS_ROW}],
        }
    )
    response = app.test_client().post("/v2/models/digits/infer", data=body)
    app.extensions["torchgate"].client.close()
    assert response.status_code == 504 and "deadline" in response.get_json()["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        (infer_body([1, 63], DIGITS_ROW[:63]), "shape \\[1, 63\\] does not fit \\[-1, 64\\]"),
        (infer_body([65, 64], [DIGITS_ROW] * 65), "batch size 65 exceeds"),
        (infer_body([1, 64], DIGITS_ROW, datatype="FP64"), "datatype FP64, expected FP32"),
        (infer_body([1, 64], DIGITS_ROW, name="pixels"), "no input 'pixels'"),
        (infer_body([1, 64], DIGITS_ROW[:10]), "holds 10 elements"),
        (infer_body([1, 64], ["x"] * 64), "must be numbers"),
        (b"{not json", "not valid JSON"),
        (b"[" * 50_000, "nested too deeply"),
    ],
)
def test_bad_infer_requests_are_400_naming_the_problem(
    client: FlaskClient, body: bytes, message: str
) -> None:
    response = client.post("/v2/models/digits/infer", data=body)
    assert response.status_code == 400, response.data
    assert re.search(message, response.get_json()["error"])


def test_fp16_output_as_json_is_refused_before_inference(tmp_path: Path) -> None:
    folder = tmp_path / "repo" / "half"
    write_model(tmp_path / "repo", "half", [1])
    (folder / "config.toml").write_text((folder / "config.toml").read_text().replace('"FP32"', '"FP16"'))
    app = make_app(tmp_path, repository=tmp_path / "repo")
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP16", "shape": [1, 2], "parameters": {"binary_data_size": 4}}
            ],
            "outputs": [{"name": "y"}],
        }
    ).encode()
    response = app.test_client().post(
        "/v2/models/half/infer",
        data=header + b"\x00" * 4,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400 and "travels only as binary" in response.get_json()["error"]


def test_body_limit_is_413_plain_and_gzipped(tmp_path: Path) -> None:
    app = make_app(tmp_path, max_body_bytes=4096)
    client = app.test_client()
    big = infer_body([1, 64], [123456.789] * 64 * 10)
    assert len(big) > 4096
    response = client.post("/v2/models/digits/infer", data=big)
    assert response.status_code == 413 and "4096" in response.get_json()["error"]
    bomb = gzip.compress(b"[" + b"0," * 1_000_000 + b"0]")
    assert len(bomb) < 4096
    response = client.post("/v2/models/digits/infer", data=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    ok_small = gzip.compress(infer_body([1, 63], DIGITS_ROW[:63]))
    response = client.post("/v2/models/digits/infer", data=ok_small, headers={"Content-Encoding": "gzip"})
    assert (
        response.status_code == 400 and "does not fit" in response.get_json()["error"]
    )  # decoded, then validated


def test_predict_contract_errors(client: FlaskClient) -> None:
    assert client.post("/predict", json={"inputs": [1]}).status_code == 400
    response = client.post("/predict", json={"input": [1, 2, 3]})
    assert response.status_code == 400 and "expects one sample shaped [64]" in response.get_json()["error"]
    assert client.post("/predict", json={"input": DIGITS_ROW, "model": "nope"}).status_code == 404
    assert client.post("/predict", json={"input": DIGITS_ROW, "version": "9"}).status_code == 404
    assert client.post("/predict", data=b"").status_code == 400
    for parameters, message in (
        ([1], '"parameters" must be a JSON object'),
        ({"k": None}, "parameter 'k' must be"),
    ):
        response = client.post("/predict", json={"input": DIGITS_ROW, "parameters": parameters})
        assert response.status_code == 400 and message in response.get_json()["error"]


def test_predict_needs_a_model_name_when_there_are_several(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "a", [1])
    write_model(tmp_path / "repo", "b", [1])
    app = make_app(tmp_path, repository=tmp_path / "repo")
    response = app.test_client().post("/predict", json={"input": [1, 2]})
    assert response.status_code == 400 and 'name a "model"' in response.get_json()["error"]


def test_routing_errors_are_json(client: FlaskClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404 and response.get_json() == {"error": "no such endpoint: /nowhere"}
    # CUDA shared memory as a Triton without GPU support answers it: none registered, none can be
    response = client.post("/v2/cudasharedmemory/region/r/register", json={"byte_size": 64})
    assert response.status_code == 400
    assert "CUDA shared-memory extension is not supported" in response.get_json()["error"]
    assert client.get("/v2/cudasharedmemory/status").get_json() == []
    assert client.get("/v2/cudasharedmemory/region/r/status").status_code == 404
    for path in ("/v2/cudasharedmemory/unregister", "/v2/cudasharedmemory/region/r/unregister"):
        assert client.post(path).status_code == 200  # perf_analyzer unregisters them all when it ends
    # system shared memory is served, and off unless the server allows it (as Triton's --allow-client-shm)
    response = client.post("/v2/systemsharedmemory/region/r/register", json={"key": "/r", "byte_size": 64})
    assert response.status_code == 403 and "--allow-client-shm" in response.get_json()["error"]
    assert client.get("/v2/systemsharedmemory/status").get_json() == []
    response = client.get("/v2/models/digits/infer")
    assert (
        response.status_code == 405 and "POST" in response.headers["Allow"] and "error" in response.get_json()
    )


def test_kserve_v1_explain_is_a_501_as_kserve_answers_without_an_explainer(client: FlaskClient) -> None:
    """The readiness route ``GET /v1/models/<model>`` took ``:explain`` and answered 405 (Allow: GET)."""
    response = client.post("/v1/models/digits:explain", json={"instances": [DIGITS_ROW]})
    assert response.status_code == 501 and "explainer" in response.get_json()["error"]
    response = client.post("/v1/models/nope:explain", json={"instances": [DIGITS_ROW]})
    assert response.status_code == 404 and "nope" in response.get_json()["error"]
    response = client.post("/v1/models/digits:predict", json={"instances": [[1, 2]]})  # still its route
    assert response.status_code == 400 and "[-1, 64]" in response.get_json()["error"]
    assert client.get("/v1/models/digits").get_json()["name"] == "digits"  # readiness, still its route


def test_request_id_is_echoed_or_made(client: FlaskClient) -> None:
    assert client.get("/v2", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    made = client.get("/v2").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert (
        client.get("/v2", headers={"X-Request-ID": "bad id\twith spaces"}).headers["X-Request-ID"] != "bad id"
    )


def test_bearer_token(tmp_path: Path) -> None:
    client = make_app(tmp_path, auth_token="s3cret").test_client()
    assert client.get("/v2/health/live").status_code == 200
    response = client.get("/v2/models/digits")
    assert response.status_code == 401 and "error" in response.get_json()
    assert client.get("/v2/models/digits", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v2/models/digits", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_cors_is_off_by_default_and_answers_browsers_from_allowed_origins(tmp_path: Path) -> None:
    page = {"Origin": "https://app.example"}
    preflight = {
        **page,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    off = make_app(tmp_path).test_client()
    assert "Access-Control-Allow-Origin" not in off.get("/v2/health/live", headers=page).headers
    client = make_app(
        tmp_path, auth_token="s3cret", cors_origins="https://app.example, http://localhost:3000/"
    ).test_client()
    # the preflight carries no token, and needs none; an origin not listed gets no permission
    answer = client.options("/v2/models/digits/infer", headers=preflight)
    assert (
        answer.status_code == 204 and answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    )
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
    other = client.options("/v2/models/digits/infer", headers={**preflight, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers and other.headers["Vary"] == "Origin"
    # answers, errors included, tell the allowed origin, so the page can read them
    ok = client.get("/v2/models/digits", headers={**page, "Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in ok.headers["Access-Control-Expose-Headers"]
    refused = client.get("/v2/models/digits", headers={"Origin": "http://localhost:3000"})
    assert (
        refused.status_code == 401
        and refused.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    )
    assert client.options("/v2/models/digits").status_code == 401  # a plain OPTIONS is no preflight
    anyone = make_app(tmp_path, cors_origins="*").test_client()
    assert anyone.get("/v2/health/live", headers=page).headers["Access-Control-Allow-Origin"] == "*"


def test_unexpected_errors_are_500_without_details(app: Flask, client: FlaskClient) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("/secret/path/model.py line 3")

    app.extensions["torchgate"].catalog.get = broken
    response = client.get("/v2/models/digits")
    assert response.status_code == 500
    assert "secret" not in response.get_data(as_text=True) and "Traceback" not in response.get_data(
        as_text=True
    )
    assert response.get_json()["error"]


def test_repository_index_rescans(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "a", [1, 2])
    app = make_app(tmp_path, repository=tmp_path / "repo")
    client = app.test_client()
    write_model(tmp_path / "repo", "b", [1])
    index = client.post("/v2/repository/index").get_json()
    assert [(e["name"], e["version"], e["state"]) for e in index] == [
        ("a", "1", "UNAVAILABLE"),
        ("a", "2", "UNAVAILABLE"),
        ("b", "1", "UNAVAILABLE"),
    ]
    assert client.post("/v2/repository/index", json={"ready": True}).get_json() == []
    assert client.post("/v2/repository/index", json={"ready": "yes"}).status_code == 400


def test_openapi_document_lists_exactly_the_routes(app: Flask, client: FlaskClient) -> None:
    served = json.loads(client.get("/openapi.json").data)
    assert served == json.loads(OPENAPI_PATH.read_text()) and served["openapi"].startswith("3.")
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
            routes.add((path, method.lower()))
    documented = {(path, method) for path, ops in served["paths"].items() for method in ops}
    assert routes == documented
    for path, ops in served["paths"].items():
        for op in ops.values():
            for param in re.findall(r"{([a-z_]+)}", path):
                assert param in {p["name"] for p in op.get("parameters", [])}, (path, param)


@pytest.mark.processes
def test_the_gateway_never_imports_torch() -> None:
    code = """
import sys, json
from gateway import GatewayConfig, create_app
import gateway.wsgi
app = create_app(GatewayConfig(dispatcher="ipc:///nonexistent/x.sock", status_timeout=0.1))
client = app.test_client()
assert client.get("/v2/models/digits").status_code == 200
body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
assert client.post("/v2/models/digits/infer", data=body).status_code == 400
assert client.post("/predict", json={"input": [1]}).status_code == 400
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    result = run(
        [sys.executable, "-c", code],
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "TORCHGATE_MODEL_REPOSITORY": str(DEFAULT_REPOSITORY),
            "TORCHGATE_DISPATCHER": "ipc:///nonexistent/y.sock",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_config_from_env() -> None:
    config = GatewayConfig.from_env(
        {
            "TORCHGATE_MAX_BODY_BYTES": "2048",
            "TORCHGATE_DEFAULT_TIMEOUT": "5",
            "TORCHGATE_DISPATCHER": "ipc:///x",
        }
    )
    assert (config.max_body_bytes, config.default_timeout, config.dispatcher) == (2048, 5.0, "ipc:///x")
    assert GatewayConfig.from_env({}).max_body_bytes == 64 << 20
    with pytest.raises(ValueError, match="TORCHGATE_MAX_BODY_BYTES='lots' is not a valid int"):
        GatewayConfig.from_env({"TORCHGATE_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ValueError, match="must be positive"):
        GatewayConfig(default_timeout=0)


def test_the_gateway_knows_only_the_models_it_is_told_to_serve(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPOSITORY / "digits", repository / "digits")
    shutil.copytree(DEFAULT_REPOSITORY / "digits", repository / "other")
    config = (repository / "other" / "config.toml").read_text().replace('name = "digits"', 'name = "other"')
    (repository / "other" / "config.toml").write_text(config)
    app = make_app(tmp_path, repository=repository, models="digits")
    try:
        client = app.test_client()
        assert client.get("/v2/models/digits").status_code == 200
        assert client.get("/v2/models/other").status_code == 404  # not served: readiness does not wait for it
    finally:
        app.extensions["torchgate"].client.close()


def test_model_control_is_off_unless_explicit_and_checks_the_model_first(tmp_path: Path) -> None:
    off = make_app(tmp_path).test_client()
    for action in ("load", "unload"):
        response = off.post(f"/v2/repository/models/digits/{action}")
        assert response.status_code == 403
        assert "--model-control explicit" in response.get_json()["error"]
    repository = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    explicit = make_app(tmp_path, repository, model_control="explicit", control_timeout=0.3).test_client()
    assert explicit.post("/v2/repository/models/nosuch/load").status_code == 404
    config = repository / "digits" / "config.toml"
    config.write_text(config.read_text().replace("max_batch_size", "max_batch_sise"))
    refused = explicit.post("/v2/repository/models/digits/load")
    assert refused.status_code == 400 and "did you mean max_batch_size?" in refused.get_json()["error"]
    config.write_text(config.read_text().replace("max_batch_sise", "max_batch_size"))
    # Triton's load may override the config or files in its body: refused, not ignored.
    for body, message in (
        ({"parameters": {"config": "{}"}}, "load parameter 'config': overriding a model's config or files"),
        ({"parameters": {"file:1/model.pt2": "AAAA"}}, "load parameter 'file:1/model.pt2': overriding"),
        ({"parameters": {"unload_dependents": True}}, "unknown load parameter 'unload_dependents'"),
        ({"parameters": []}, "must be a JSON object"),
    ):
        response = explicit.post("/v2/repository/models/digits/load", json=body)
        assert response.status_code == 400 and message in response.get_json()["error"], body
    response = explicit.post(
        "/v2/repository/models/digits/unload", json={"parameters": {"unload_dependents": 1}}
    )
    assert (
        response.status_code == 400
        and "'unload_dependents' must be true or false" in response.get_json()["error"]
    )
    # A body past the control limit (64 KiB) is 413 naming that limit, not the server's (64 MiB).
    response = explicit.post("/v2/repository/models/digits/load", data=b" " * (CONTROL_BODY + 1))
    assert response.status_code == 413
    assert response.get_json()["error"] == f"request body exceeds the limit of {CONTROL_BODY} bytes"
    # Behind the bearer token when authentication is on.
    guarded = make_app(tmp_path, repository, model_control="explicit", auth_token="s3cret").test_client()
    assert guarded.post("/v2/repository/models/digits/unload").status_code == 401
    # The dispatcher does not answer here: the call says so, with Retry-After, rather than hanging.
    unanswered = explicit.post("/v2/repository/models/digits/unload")
    assert unanswered.status_code == 503 and "did not finish within 0.3s" in unanswered.get_json()["error"]
    # tritonclient's unload_model(name, unload_dependents=True) sends this body
    dependents = explicit.post(
        "/v2/repository/models/digits/unload", json={"parameters": {"unload_dependents": True}}
    )
    assert dependents.status_code == 503


def test_model_config_shows_the_instance_groups(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(DEFAULT_REPOSITORY, repository)
    config = repository / "digits" / "config.toml"
    config.write_text(
        config.read_text().replace(
            "[dynamic_batching]",
            '[[instance_group]]\nkind = "KIND_GPU"\ncount = 2\ngpus = [0]\n[dynamic_batching]',
        )
    )
    groups = (
        make_app(tmp_path, repository)
        .test_client()
        .get("/v2/models/digits/config")
        .get_json()["instance_group"]
    )
    assert groups == [{"name": "digits_0", "kind": "KIND_GPU", "count": 2, "gpus": [0]}]


def test_versions_a_version_policy_leaves_out_are_not_served(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    write_model(repository, "m", [1, 2, 3])
    config = repository / "m" / "config.toml"
    config.write_text(config.read_text() + "[version_policy]\nlatest = 1\n")
    client = make_app(tmp_path, repository).test_client()
    assert client.get("/v2/models/m").get_json()["versions"] == ["3"]
    assert client.get("/v2/models/m/config").get_json()["version_policy"] == {"latest": {"num_versions": 1}}
    missing = client.get("/v2/models/m/versions/2")
    assert missing.status_code == 404 and "it has versions 3" in missing.get_json()["error"]
