"""A model loaded again from edited files, under `torchgate serve` with two gateway processes and the gRPC
front: whichever front asked for the load, every front then validates against and describes the config the
workers run; a load that fails changes no front; a code-only edit is never answered from the response cache.

The model `b` is a python model (y = 10 * sum(x), any width) with the response cache on. Each test first
writes the files it starts from and loads them (:func:`start_from`), then edits `b` on disk and loads it
again: no test depends on another having run before it on the same server.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from harness import Stack, free_port, short_dir, write_scale_model
from harness.models import PYTHON_CONFIG, SCALE_SOURCE

pytestmark = pytest.mark.processes

TIMEOUT = 60.0
ATTEMPTS = 12  # fresh connections, spread over the gateway processes


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Stack, grpcclient.InferenceServerClient]]:
    with short_dir() as base:
        repository = base / "repo"
        folder = write_scale_model(repository, "b")
        config = folder / "config.toml"
        config.write_text(config.read_text() + "\n[response_cache]\nenable = true\n")
        grpc_port = free_port()
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--gateway-processes", "2", "--gateway-threads", "4", "--grpc-port", str(grpc_port)]
        options += ["--model-repository", str(repository), "--model-control", "explicit"]
        with Stack.at(base, repository).serve(*options, "--cache-config", "local,size=1048576") as stack:
            stack.wait_serving(timeout=120)
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                yield stack, client
            finally:
                client.close()


def start_from(stack: Stack, dims: int, batch: int, plus_one: bool = False, factor: float = 10.0) -> None:
    """Write `b` as a test starts from it (version 1 only, its input ``dims`` wide, y = factor * sum(x),
    plus one if ``plus_one``; ``batch``: its max_batch_size) and load it."""
    folder = stack.repository / "b"
    config = PYTHON_CONFIG.format(name="b", width=dims, out=1, datatype="FP32")
    config = config.replace("max_batch_size = 4", f"max_batch_size = {batch}")
    (folder / "config.toml").write_text(config + "\n[response_cache]\nenable = true\n")
    source = SCALE_SOURCE.replace("keepdim=True)", "keepdim=True) + 1") if plus_one else SCALE_SOURCE
    (folder / "model.py").write_text(source)
    for other in folder.iterdir():
        if other.is_dir() and other.name.isdigit() and other.name != "1":
            shutil.rmtree(other)
    write_factor(stack, "1", factor)
    response = requests.post(f"{stack.url}/v2/repository/models/b/load", timeout=TIMEOUT)
    assert response.status_code == 200, response.text


def edit(stack: Stack, file: str, old: str, new: str) -> None:
    path: Path = stack.repository / "b" / file
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


def http_infer(stack: Stack, values: Sequence[float], version: str = "") -> requests.Response:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [1, len(values)], "datatype": "FP32", "data": list(values)}]
    }
    path = f"/versions/{version}" if version else ""
    return requests.post(f"{stack.url}/v2/models/b{path}/infer", json=body, timeout=TIMEOUT)


def grpc_infer(client: grpcclient.InferenceServerClient, values: Sequence[float]) -> Any:
    x = grpcclient.InferInput("x", [1, len(values)], "FP32")
    x.set_data_from_numpy(np.array([values], dtype=np.float32))
    return client.infer("b", [x], client_timeout=TIMEOUT).as_numpy("y").tolist()


def http_dims(stack: Stack) -> list[tuple[list[int], int]]:
    """Each of ``ATTEMPTS`` fresh connections' view of b's input dims and max_batch_size."""
    seen = []
    for _ in range(ATTEMPTS):
        doc = requests.get(f"{stack.url}/v2/models/b/config", timeout=TIMEOUT).json()
        seen.append((doc["input"][0]["dims"], doc["max_batch_size"]))
    return seen


def grpc_dims(client: grpcclient.InferenceServerClient) -> tuple[list[int], int]:
    config = client.get_model_config("b", as_json=True, client_timeout=TIMEOUT)["config"]
    return [int(d) for d in config["input"][0]["dims"]], int(config["max_batch_size"])


def test_a_load_over_grpc_is_seen_by_every_http_process(
    served: tuple[Stack, grpcclient.InferenceServerClient],
) -> None:
    stack, client = served
    start_from(stack, 3, 4)
    assert http_infer(stack, [1, 2, 3]).json()["outputs"][0]["data"] == [60.0]
    edit(stack, "config.toml", "dims = [3]", "dims = [5]")
    edit(stack, "config.toml", "max_batch_size = 4", "max_batch_size = 6")
    client.load_model("b", client_timeout=TIMEOUT)
    with ThreadPoolExecutor(16) as pool:  # at once, valid only under the new config: no process refuses one
        answers = list(pool.map(lambda _: http_infer(stack, [1, 2, 3, 4, 5]), range(48)))
    assert [(r.status_code, r.text) for r in answers if r.status_code != 200] == []
    assert {r.json()["outputs"][0]["data"][0] for r in answers} == {150.0}
    assert http_dims(stack) == [([5], 6)] * ATTEMPTS
    refused = http_infer(stack, [1, 2, 3])
    assert refused.status_code == 400 and "[-1, 5]" in refused.json()["error"], refused.text


def test_a_load_over_http_is_seen_by_grpc(served: tuple[Stack, grpcclient.InferenceServerClient]) -> None:
    stack, client = served
    start_from(stack, 5, 6)
    assert grpc_infer(client, [1, 2, 3, 4, 5]) == [[150.0]]
    edit(stack, "config.toml", "dims = [5]", "dims = [4]")
    response = requests.post(f"{stack.url}/v2/repository/models/b/load", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert grpc_dims(client) == ([4], 6)
    assert grpc_infer(client, [1, 2, 3, 4]) == [[100.0]]
    with pytest.raises(InferenceServerException, match=r"\[-1, 4\]"):
        grpc_infer(client, [1, 2, 3, 4, 5])


def test_a_failed_load_changes_no_front(served: tuple[Stack, grpcclient.InferenceServerClient]) -> None:
    stack, client = served
    start_from(stack, 4, 6)
    edit(stack, "config.toml", "dims = [4]", "dims = [7]")
    edit(stack, "config.toml", 'factory = "model:build"', 'factory = "model:no_such_function"')
    with pytest.raises(InferenceServerException, match="load of model 'b' failed: .*no_such_function"):
        client.load_model("b", client_timeout=TIMEOUT)
    assert grpc_dims(client) == ([4], 6)  # the front that asked for the load too
    assert grpc_infer(client, [1, 2, 3, 4]) == [[100.0]]
    assert http_dims(stack) == [([4], 6)] * ATTEMPTS
    assert http_infer(stack, [1, 2, 3, 4]).json()["outputs"][0]["data"] == [100.0]
    edit(stack, "config.toml", 'factory = "model:no_such_function"', 'factory = "model:build"')
    edit(stack, "config.toml", "dims = [7]", "dims = [4]")


def test_a_code_edit_loaded_again_is_not_answered_from_the_cache(
    served: tuple[Stack, grpcclient.InferenceServerClient],
) -> None:
    stack, client = served
    start_from(stack, 4, 6)
    stats = client.get_inference_statistics("b", as_json=True, client_timeout=TIMEOUT)
    hits = int(stats["model_stats"][0]["inference_stats"].get("cache_hit", {}).get("count", 0))
    assert grpc_infer(client, [1, 2, 3, 4]) == [[100.0]]
    assert grpc_infer(client, [1, 2, 3, 4]) == [[100.0]]  # from the gRPC front's cache
    stats = client.get_inference_statistics("b", as_json=True, client_timeout=TIMEOUT)
    assert int(stats["model_stats"][0]["inference_stats"]["cache_hit"]["count"]) > hits
    edit(stack, "model.py", "keepdim=True)", "keepdim=True) + 1")  # model.py only: config and weights alike
    client.load_model("b", client_timeout=TIMEOUT)
    assert grpc_infer(client, [1, 2, 3, 4]) == [[101.0]]
    assert http_infer(stack, [1, 2, 3, 4]).json()["outputs"][0]["data"] == [101.0]


def write_factor(stack: Stack, version: str, factor: float) -> None:
    import torch
    from safetensors.torch import save_file

    folder = stack.repository / "b" / version
    folder.mkdir(exist_ok=True)
    save_file({"factor": torch.tensor(factor)}, str(folder / "model.safetensors"))


def versions_seen(stack: Stack, client: grpcclient.InferenceServerClient) -> set[tuple[str, ...]]:
    """Every front's list of b's versions: the gRPC front's, and ``ATTEMPTS`` fresh HTTP connections'."""
    seen = {tuple(client.get_model_metadata("b", as_json=True, client_timeout=TIMEOUT)["versions"])}
    for _ in range(ATTEMPTS):
        seen.add(tuple(requests.get(f"{stack.url}/v2/models/b", timeout=TIMEOUT).json()["versions"]))
    return seen


def test_versions_are_those_the_workers_loaded_and_cached_answers_keep_to_theirs(
    served: tuple[Stack, grpcclient.InferenceServerClient],
) -> None:
    stack, client = served
    start_from(stack, 4, 6, plus_one=True)
    write_factor(stack, "2", 20.0)  # staged, not loaded: no front lists it, and a request for it is a 404
    assert versions_seen(stack, client) == {("1",)}
    assert http_infer(stack, [1, 2, 3, 4], "2").status_code == 404
    client.load_model("b", client_timeout=TIMEOUT)
    assert versions_seen(stack, client) == {("1", "2")}
    for values in ([1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]):  # the default (2), cached; then 1 asked for
        assert http_infer(stack, values).json()["outputs"][0]["data"] == [20.0 * sum(values) + 1]
        assert grpc_infer(client, values) == [[20.0 * sum(values) + 1]]
        pinned = http_infer(stack, values, "1").json()
        assert (pinned["model_version"], pinned["outputs"][0]["data"]) == ("1", [10.0 * sum(values) + 1])
    shutil.rmtree(stack.repository / "b" / "2")
    response = requests.post(f"{stack.url}/v2/repository/models/b/load", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert versions_seen(stack, client) == {("1",)}
    assert http_infer(stack, [1, 1, 1, 1], "2").status_code == 404  # not answered from the cache
    assert http_infer(stack, [1, 1, 1, 1]).json()["outputs"][0]["data"] == [41.0]  # version 1 again


def test_new_weights_loaded_after_a_request_are_not_answered_from_the_cache(
    served: tuple[Stack, grpcclient.InferenceServerClient],
) -> None:
    stack, client = served
    start_from(stack, 4, 6, plus_one=True)
    assert grpc_infer(client, [1, 2, 3, 4]) == [[101.0]]
    write_factor(stack, "1", 100.0)
    assert grpc_infer(client, [1, 2, 3, 4]) == [[101.0]]  # not loaded yet: the old model's answer, cached
    client.load_model("b", client_timeout=TIMEOUT)
    assert grpc_infer(client, [1, 2, 3, 4]) == [[1001.0]]
    assert http_infer(stack, [1, 2, 3, 4]).json()["outputs"][0]["data"] == [1001.0]


def test_a_model_whose_folder_is_gone_is_served_by_every_front_until_it_is_unloaded(
    served: tuple[Stack, grpcclient.InferenceServerClient],
) -> None:
    """As in Triton: a loaded model stays served when its folder is removed, and goes once unloaded."""
    stack, client = served
    start_from(stack, 4, 6, plus_one=True, factor=100.0)
    folder = stack.repository / "b"
    folder.rename(stack.repository.parent / "b-moved")  # while the workers serve it
    try:
        client.get_model_repository_index(client_timeout=TIMEOUT)  # each front reads the repository again
        assert grpc_infer(client, [1, 2, 3, 4]) == [[1001.0]]
        for i in range(ATTEMPTS):
            assert requests.post(f"{stack.url}/v2/repository/index", timeout=TIMEOUT).status_code == 200
            response = http_infer(stack, [1, 2, 3, 10 + i])  # other inputs each time: no cached answer
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [100.0 * (16 + i) + 1]
        response = requests.post(f"{stack.url}/v2/repository/models/b/unload", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        assert "b" in stack.status().unloaded
        for i in range(ATTEMPTS):  # gone from every front
            assert http_infer(stack, [1, 2, 3, 40 + i]).status_code == 404
        with pytest.raises(InferenceServerException, match="unknown model 'b'"):
            grpc_infer(client, [1, 2, 3, 5])
        assert (
            requests.post(f"{stack.url}/v2/repository/models/nosuch/unload", timeout=TIMEOUT).status_code
            == 404
        )
    finally:
        (stack.repository.parent / "b-moved").rename(folder)
    client.load_model("b", client_timeout=TIMEOUT)
    assert grpc_infer(client, [1, 2, 3, 4]) == [[1001.0]]
