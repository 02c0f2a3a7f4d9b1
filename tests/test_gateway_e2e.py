"""End to end, as a user runs it: gunicorn serving the gateway, a dispatcher and two CPU workers.

Clients are the real ``tritonclient.http`` (unchanged) and ``requests`` (curl-style JSON).
"""

from __future__ import annotations

import gzip
import json
import shutil
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from harness import DEFAULT_REPOSITORY, Stack, slow_repository, wait_for

pytestmark = pytest.mark.processes

HALF_MODEL = """
import torch


class HalfOps(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float16), requires_grad=False)

    def forward(self, x: torch.Tensor):
        return x * self.scale, (x * self.scale).to(torch.bfloat16), x.float().sum(dim=1, keepdim=True)


def build() -> torch.nn.Module:
    return HalfOps()
"""

HALF_CONFIG = """
name = "half"
backend = "python"
factory = "half_ops:build"
max_batch_size = 8
[[input]]
name = "x"
datatype = "FP16"
dims = [4]
[[output]]
name = "y"
datatype = "FP16"
dims = [4]
[[output]]
name = "z"
datatype = "BF16"
dims = [4]
[[output]]
name = "s"
datatype = "FP32"
dims = [1]
"""


PAGE = "http://localhost:3000"  # a web page allowed to call the API (CORS)
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_repository(root: Path) -> Path:
    """digits (the default model, with labels), half (FP16 in; FP16, BF16 and FP32 out) and slow (sleeps,
    then doubles)."""
    from safetensors.torch import save_file

    slow_repository(root, seconds=0.3, max_queue_size=64, max_batch_size=4)
    shutil.copytree(DEFAULT_REPOSITORY / "digits", root / "digits")
    with (root / "digits" / "config.toml").open("a") as config:  # the last table is the output's
        config.write('label_filename = "labels.txt"\n')
    (root / "digits" / "labels.txt").write_text("\n".join(DIGIT_NAMES) + "\n")
    half = root / "half"
    (half / "1").mkdir(parents=True)
    (half / "half_ops.py").write_text(HALF_MODEL)
    (half / "config.toml").write_text(HALF_CONFIG)
    save_file({"scale": torch.tensor(2.0, dtype=torch.float16)}, str(half / "1" / "model.safetensors"))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    with Stack.at(root, write_repository(root / "repo"), heartbeat=()) as stack:
        stack.start(
            ("w0", "w1"),
            gateway_processes=2,
            gateway_threads=8,
            timeout=240,
            gateway_env={"TORCHGATE_CORS_ORIGINS": PAGE},
        )
        stack.wait_workers("w0", "w1", timeout=240)  # both loaded: no start-up left to compete for the cores
        yield stack


def triton(server: Stack) -> httpclient.InferenceServerClient:
    """The real tritonclient.http, pointed at the stack."""
    return httpclient.InferenceServerClient(
        f"127.0.0.1:{server.port}", connection_timeout=30, network_timeout=60
    )


@pytest.fixture(scope="module")
def digits() -> torch.nn.Module:
    return torch.export.load(str(DEFAULT_REPOSITORY / "digits" / "1" / "model.pt2")).module()


def reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def digits_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, 64)).astype(np.float32)


# -- tritonclient ------------------------------------------------------------------------------------


def test_tritonclient_health_metadata_and_config(server: Stack) -> None:
    for _ in range(4):  # both gateway processes, whichever answers
        ready = requests.get(f"{server.url}/v2/health/ready", timeout=30)
        assert ready.status_code == 200, ready.text
    with triton(server) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits") and client.is_model_ready("half", "1")
        assert not client.is_model_ready("digits", "2")  # no such version
        assert requests.get(f"{server.url}/v2/models/digits/versions/01/ready", timeout=30).status_code == 200
        meta = client.get_model_metadata("digits")
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
        config = client.get_model_config("half")
        assert config["max_batch_size"] == 8
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
            ("y", "TYPE_FP16", [4]),
            ("z", "TYPE_BF16", [4]),
            ("s", "TYPE_FP32", [1]),
        ]
        assert client.get_server_metadata()["name"] == "torchgate"
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("nope")
        assert info.value.status() == "404"


@pytest.mark.parametrize(
    "binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)]
)
def test_tritonclient_infer_digits(
    server: Stack, digits: torch.nn.Module, binary_in: bool, binary_out: bool
) -> None:
    x = digits_batch(5, seed=int(binary_in) * 2 + int(binary_out))
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    with triton(server) as client:
        result = client.infer(
            "digits",
            [inp],
            outputs=[httpclient.InferRequestedOutput("output", binary_data=binary_out)],
            request_id="req-7",
        )
    np.testing.assert_allclose(result.as_numpy("output"), reference(digits, x), rtol=1e-4, atol=1e-4)
    response = result.get_response()
    assert (
        response["id"] == "req-7" and response["model_name"] == "digits" and response["model_version"] == "1"
    )
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary_out


def test_generate_answers_a_flat_request_as_triton_does(server: Stack, digits: torch.nn.Module) -> None:
    x = digits_batch(1, seed=5)
    url = f"{server.url}/v2/models/digits/generate"
    response = requests.post(url, json={"input": x[0].tolist(), "timeout": 30_000_000}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "digits" and answer["model_version"] == "1"
    np.testing.assert_allclose(answer["output"], reference(digits, x)[0], rtol=1e-4, atol=1e-4)
    versioned = requests.post(
        f"{server.url}/v2/models/digits/versions/1/generate", json={"input": x[0].tolist()}, timeout=60
    )
    assert versioned.status_code == 200 and versioned.json()["output"] == answer["output"]
    wrong = requests.post(url, json={"input": x[0].tolist()[:63]}, timeout=60)
    assert wrong.status_code == 400 and "63 values do not fit its shape [-1, 64]" in wrong.json()["error"]
    missing = requests.post(url, json={"text": "seven"}, timeout=60)
    assert missing.status_code == 400 and "needs the input(s) 'input'" in missing.json()["error"]
    nested = requests.post(url, json={"input": [x[0].tolist()]}, timeout=60)
    assert nested.status_code == 400 and "one value or a flat list" in nested.json()["error"]


def test_tritonclient_default_outputs_and_gzip(server: Stack, digits: torch.nn.Module) -> None:
    x = digits_batch(3, seed=11)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with triton(server) as client:
        plain = client.infer("digits", [inp])  # no outputs named: the client asks binary_data_output
        zipped = client.infer("digits", [inp], request_compression_algorithm="gzip")
        deflated = client.infer("digits", [inp], request_compression_algorithm="deflate", model_version="1")
        answers = [  # responses compressed as asked (Accept-Encoding), read back by tritonclient
            client.infer("digits", [inp], response_compression_algorithm=algorithm)
            for algorithm in ("gzip", "deflate")
        ]
    want = reference(digits, x)
    for result in (plain, zipped, deflated, *answers):
        np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-4, atol=1e-4)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64], "data": x.tolist()}]}
    for algorithm in ("gzip", "deflate"):
        raw = requests.post(
            f"{server.url}/v2/models/digits/infer",
            json=body,
            headers={"Accept-Encoding": algorithm},
            timeout=30,
            stream=True,
        )
        assert raw.headers["Content-Encoding"] == algorithm
        decoded = gzip.decompress(raw.raw.read()) if algorithm == "gzip" else zlib.decompress(raw.raw.read())
        np.testing.assert_allclose(
            json.loads(decoded)["outputs"][0]["data"], want.ravel(), rtol=1e-4, atol=1e-4
        )


def test_tritonclient_fp16_model(server: Stack) -> None:
    x = np.array([[0.5, -1.0, 2.25, 3.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float16)
    inp = httpclient.InferInput("x", list(x.shape), "FP16")
    inp.set_data_from_numpy(x)
    with triton(server) as client:
        result = client.infer("half", [inp])
        assert result.as_numpy("y").dtype == np.float16
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        np.testing.assert_array_equal(result.as_numpy("z"), (x * 2).astype(np.float32))
        np.testing.assert_allclose(result.as_numpy("s"), x.astype(np.float32).sum(axis=1, keepdims=True))
        mixed = client.infer(
            "half",
            [inp],
            outputs=[
                httpclient.InferRequestedOutput("s", binary_data=False),
                httpclient.InferRequestedOutput("y", binary_data=True),
            ],
        )
        np.testing.assert_allclose(mixed.as_numpy("s"), [[4.75], [10.0]])
        assert mixed.as_numpy("z") is None
        with pytest.raises(InferenceServerException) as info:
            client.infer("half", [inp], outputs=[httpclient.InferRequestedOutput("y", binary_data=False)])
        assert info.value.status() == "400" and "binary" in info.value.message()
        json_in = httpclient.InferInput("x", list(x.shape), "FP16")
        json_in.set_data_from_numpy(x, binary_data=False)
        with pytest.raises(InferenceServerException) as info:
            client.infer("half", [json_in])
        assert info.value.status() == "400" and "FP16" in info.value.message()


@pytest.mark.parametrize("binary_out", [True, False])
def test_tritonclient_class_count_answers_the_top_classes_with_labels(
    server: Stack, digits: torch.nn.Module, binary_out: bool
) -> None:
    x = digits_batch(4, seed=21)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    asked = httpclient.InferRequestedOutput("output", binary_data=binary_out, class_count=3)
    with triton(server) as client:
        assert "classification" in client.get_server_metadata()["extensions"]
        assert client.get_model_config("digits")["output"][0]["label_filename"] == "labels.txt"
        classes = client.infer("digits", [inp], outputs=[asked]).as_numpy("output")
    assert classes.shape == (4, 3)
    logits = reference(digits, x)
    for sample, row in zip(logits, classes, strict=True):
        # tritonclient gives a BYTES element as bytes from binary data, as str from JSON (so with Triton)
        parsed = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
        assert [int(index) for _, index, _ in parsed] == list(np.argsort(-sample, kind="stable")[:3])
        assert [label for _, _, label in parsed] == [DIGIT_NAMES[int(index)] for _, index, _ in parsed]
        np.testing.assert_allclose(
            [float(value) for value, _, _ in parsed], sample[[int(i) for _, i, _ in parsed]], atol=1e-4
        )


def test_classification_that_cannot_be_is_a_400(server: Stack) -> None:
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}],
        "outputs": [{"name": "output", "parameters": {"classification": -2}}],
    }
    r = requests.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=30)
    assert r.status_code == 400 and "'classification' must be a non-negative integer" in r.json()["error"]


def test_tritonclient_shared_memory_is_refused_clearly_unless_allowed(server: Stack) -> None:
    x = digits_batch(1)
    in_region = httpclient.InferInput("input", list(x.shape), "FP32")
    in_region.set_shared_memory("input_data", x.nbytes)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out_region = httpclient.InferRequestedOutput("output")
    out_region.set_shared_memory("output_data", 40)
    with triton(server) as client:
        for inputs, outputs in (([in_region], None), ([inp], [out_region])):
            with pytest.raises(InferenceServerException) as info:
                client.infer("digits", inputs, outputs=outputs)
            assert info.value.status() == "403"
            assert "Client shared memory is disabled" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.register_system_shared_memory("input_data", "/input_data", x.nbytes)
        assert info.value.status() == "403" and "'--allow-client-shm'" in info.value.message()
        assert client.get_system_shared_memory_status() == []


def test_tritonclient_sees_errors_as_json(server: Stack) -> None:
    x = digits_batch(2)[:, :60]
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with triton(server) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [inp])
        assert info.value.status() == "400" and "[-1, 64]" in info.value.message()
        slow = httpclient.InferInput("x", [1, 4], "FP32")
        slow.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow", [slow], timeout=20_000)  # 20 ms for a model that takes 300 ms
        assert info.value.status() == "504"
        slow.set_data_from_numpy(-np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow", [slow])
        assert info.value.status() in ("400", "500") and "negative input" in info.value.message()
        assert "Traceback" not in info.value.message() and "/" not in info.value.message()


# -- requests: the seed's contract, raw binary, ids, stats ------------------------------------------


def test_predict_like_the_seed(server: Stack, digits: torch.nn.Module) -> None:
    x = digits_batch(4, seed=5)
    one = requests.post(f"{server.url}/predict", json={"input": x[0].tolist(), "model": "digits"}, timeout=60)
    assert one.status_code == 200, one.text
    np.testing.assert_allclose(one.json()["output"], reference(digits, x[:1])[0], rtol=1e-4, atol=1e-4)
    many = requests.post(
        f"{server.url}/predict",
        data=json.dumps({"input": x.tolist(), "model": "digits"}),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    np.testing.assert_allclose(many.json()["output"], reference(digits, x), rtol=1e-4, atol=1e-4)
    bad = requests.post(f"{server.url}/predict", json={"input": [1, 2], "model": "digits"}, timeout=60)
    assert bad.status_code == 400 and "expects one sample shaped [64]" in bad.json()["error"]
    ambiguous = requests.post(f"{server.url}/predict", json={"input": x[0].tolist()}, timeout=60)
    assert ambiguous.status_code == 400 and 'name a "model"' in ambiguous.json()["error"]
    half = requests.post(f"{server.url}/predict", json={"input": [1, 2, 3, 4.5], "model": "half"}, timeout=60)
    assert half.status_code == 200 and half.json()["output"] == {
        "y": [2, 4, 6, 9],
        "z": [2, 4, 6, 9],
        "s": [10.5],
    }


def test_kserve_v1_protocol(server: Stack, digits: torch.nn.Module) -> None:
    x = digits_batch(3, seed=5)
    r = requests.post(f"{server.url}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["predictions"]), reference(digits, x), rtol=1e-4, atol=1e-4)
    # several outputs: a {name: value} per instance (FP16 and BF16 widened to float32, as /predict does)
    several = requests.post(
        f"{server.url}/v1/models/half:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=60
    )
    assert several.status_code == 200, several.text
    assert several.json() == {"predictions": [{"y": [2, 4, 6, 8], "z": [2, 4, 6, 8], "s": [10]}]}
    assert requests.get(f"{server.url}/v1/models", timeout=30).json() == {
        "models": ["digits", "half", "slow"]
    }
    ready = requests.get(f"{server.url}/v1/models/digits", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"name": "digits", "ready": True}
    assert requests.get(f"{server.url}/v1/models/nope", timeout=30).status_code == 404
    bad = requests.post(f"{server.url}/v1/models/digits:predict", json={"instances": [[1, 2]]}, timeout=60)
    assert bad.status_code == 400 and "[-1, 64]" in bad.json()["error"]


def test_a_web_page_on_an_allowed_origin_may_call_the_api(server: Stack) -> None:
    preflight = requests.options(
        f"{server.url}/v2/models/digits/infer",
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == PAGE
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]
    }
    answer = requests.post(
        f"{server.url}/v2/models/digits/infer", json=body, headers={"Origin": PAGE}, timeout=60
    )
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == PAGE
    other = requests.post(
        f"{server.url}/v2/models/digits/infer",
        json=body,
        headers={"Origin": "https://elsewhere.example"},
        timeout=60,
    )
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers


def test_raw_binary_request_and_request_ids(server: Stack, digits: torch.nn.Module) -> None:
    x = digits_batch(2, seed=9)
    response = requests.post(
        f"{server.url}/v2/models/digits/infer",
        data=x.tobytes(),
        headers={"Inference-Header-Content-Length": "0", "X-Request-ID": "trace-1"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "trace-1"
    assert response.headers["Content-Type"] == "application/octet-stream"
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    assert header["id"] == "trace-1" and header["outputs"][0]["shape"] == [2, 10]
    got = np.frombuffer(response.content[length:], np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, reference(digits, x), rtol=1e-4, atol=1e-4)


def test_gzip_bomb_over_http_is_413(server: Stack) -> None:
    bomb = gzip.compress(b" " * (80 << 20))
    response = requests.post(
        f"{server.url}/v2/models/digits/infer", data=bomb, headers={"Content-Encoding": "gzip"}, timeout=60
    )
    assert response.status_code == 413 and "error" in response.json()


def test_concurrent_clients_across_gateway_processes(server: Stack, digits: torch.nn.Module) -> None:
    inputs = [digits_batch(1 + i % 3, seed=100 + i) for i in range(96)]

    def one(x: np.ndarray) -> np.ndarray:
        with requests.Session() as session:
            r = session.post(
                f"{server.url}/predict", json={"input": x.tolist(), "model": "digits"}, timeout=60
            )
            assert r.status_code == 200, r.text
            return np.asarray(r.json()["output"], np.float32)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, inputs))
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got, reference(digits, x), rtol=1e-4, atol=1e-4)


def test_stats_count_what_was_served(server: Stack) -> None:
    x = digits_batch(2, seed=3)
    before = requests.get(f"{server.url}/v2/models/digits/stats", timeout=30).json()["model_stats"][0]
    for _ in range(5):
        r = requests.post(f"{server.url}/predict", json={"input": x.tolist(), "model": "digits"}, timeout=60)
        assert r.status_code == 200, r.text

    def counted() -> dict[str, Any] | None:
        stats = requests.get(f"{server.url}/v2/models/digits/stats", timeout=30).json()["model_stats"][0]
        samples = stats["inference_count"] >= before["inference_count"] + 10
        served = (
            stats["inference_stats"]["success"]["count"] >= before["inference_stats"]["success"]["count"] + 5
        )
        return stats if samples and served else None

    # Workers report their counters with their heartbeats, each on its own beat: `before` may lack a
    # worker's latest report (an earlier test's larger batches), so samples alone can arrive before these
    # 5 requests do.
    stats = wait_for(
        counted, timeout=30, interval=0.2, what="the stats to count 5 more requests, 10 more samples"
    )
    assert stats["name"] == "digits" and stats["version"] == "1"
    every = requests.get(f"{server.url}/v2/models/stats", timeout=30).json()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {("digits", "1"), ("half", "1"), ("slow", "1")}
    index = requests.post(f"{server.url}/v2/repository/index", timeout=30).json()
    assert {(e["name"], e["state"]) for e in index} == {
        ("digits", "READY"),
        ("half", "READY"),
        ("slow", "READY"),
    }


def test_digits_accuracy_through_the_http_api(server: Stack) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    _, x_test, _, y_test = train_test_split(data.data, data.target, test_size=0.25, random_state=0)
    x_test = x_test.astype(np.float32)
    predictions = []
    with triton(server) as client:
        for start in range(0, len(x_test), 64):
            batch = x_test[start : start + 64]
            inp = httpclient.InferInput("input", list(batch.shape), "FP32")
            inp.set_data_from_numpy(batch)
            predictions.append(client.infer("digits", [inp]).as_numpy("output").argmax(axis=1))
    accuracy = float((np.concatenate(predictions) == y_test).mean())
    assert accuracy >= 0.95, accuracy


def test_no_torch_in_gateway_processes(server: Stack) -> None:
    gateway = server.started["gateway"]
    pids = [gateway.pid, *(int(p) for p in _children(gateway.pid))]
    assert len(pids) == 3  # the gunicorn arbiter and its two gateway processes
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, pid


def _children(pid: int) -> list[str]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return path.read_text().split() if path.exists() else []
