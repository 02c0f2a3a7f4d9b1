"""Many models on one host, as real processes: one broken model leaves the rest serving, python models never
collide, a 20 s forward pass is served once, and models load and unload under load with no failed request.

One stack for the module (a dispatcher, two CPU workers loading every model, a gunicorn gateway with model
control on): `digits`, two python models `a` and `b` that each ship a model.py, `sleeper` (sleeps as many
seconds as its input says), and `broken` (its model.py imports a package that is not installed).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from harness import (
    DEFAULT_REPOSITORY,
    DIGITS_BODY,
    HttpLoad,
    Stack,
    call,
    short_dir,
    wait_for,
    write_linear_model,
    write_scale_model,
    write_sleeper_model,
)
from harness.models import LINEAR_SOURCE
from inference_worker.protocol import StatusReply

pytestmark = pytest.mark.processes

LONG_FORWARD = 20.0  # seconds: 20 times the heartbeat expiry these workers and dispatcher use (1 s)
ABC: dict[str, Any] = {
    "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with short_dir() as root:
        repository = root / "repo"
        shutil.copytree(DEFAULT_REPOSITORY / "digits", repository / "digits")
        write_linear_model(repository, "a")
        write_scale_model(repository, "b")
        write_sleeper_model(repository, "sleeper")
        write_linear_model(repository, "broken", "import no_such_package_for_torchgate\n" + LINEAR_SOURCE)
        with Stack.at(root, repository) as stack:
            stack.start(
                ("w0", "w1"),
                gateway_threads=16,
                gateway_env={"TORCHGATE_MODEL_CONTROL": "explicit"},
                ready_path="/v2/models/digits/ready",
            )
            wait_for(
                lambda: stack.status().registered() == {"w0", "w1"},
                timeout=120,
                what="both workers registered",
            )
            yield stack


def model_counters(status: StatusReply, model: str) -> dict[str, int]:
    """Sum a model's worker counters from a STATUS reply."""
    total = {"inference_count": 0, "success": 0}
    for entry in status.stats:
        if entry.get("model") == model:
            total["inference_count"] += int(entry.get("inference_count", 0))
            total["success"] += int(entry.get("success", 0))
    return total


def get(stack: Stack, path: str) -> requests.Response:
    return requests.get(stack.url + path, timeout=30)


def post(stack: Stack, path: str, body: Any = None, timeout: float = 120) -> requests.Response:
    return requests.post(stack.url + path, json=body, timeout=timeout)


def test_a_model_that_cannot_load_leaves_the_others_serving_and_says_why(stack: Stack) -> None:
    for model in ("digits", "a", "b", "sleeper"):
        assert get(stack, f"/v2/models/{model}/ready").status_code == 200, model
    broken = get(stack, "/v2/models/broken/ready")
    assert broken.status_code == 400
    reason = broken.json()["error"]
    assert (
        "model 'broken' version 1 (" in reason and "No module named 'no_such_package_for_torchgate'" in reason
    )
    assert reason.endswith("(on w0, w1)") and reason.count("No module named") == 1
    # Strict readiness, as Triton's default: the server is ready only when every model is; it says which is
    # not.
    health = get(stack, "/v2/health/ready")
    assert health.status_code == 400 and "model 'broken' is not ready" in health.json()["error"]
    ping = get(stack, "/ping")  # TorchServe's health check: some models serve
    assert ping.status_code == 200 and ping.json() == {"status": "Partial Healthy"}
    index = {e["name"]: e for e in post(stack, "/v2/repository/index").json()}
    assert index["digits"]["state"] == "READY" and index["broken"]["state"] == "UNAVAILABLE"
    assert "cannot import factory 'model:build'" in index["broken"]["reason"]
    refused = call(lambda: requests.post(f"{stack.url}/v2/models/broken/infer", json=ABC, timeout=30))
    assert refused.status == 503 and "broken" in refused.body
    assert post(stack, "/v2/models/digits/infer", DIGITS_BODY).status_code == 200
    log = stack.log("w0")
    assert "loading broken version 1 on cpu" in log and "loaded digits version 1 on cpu in " in log


def test_two_python_models_with_a_model_py_each_answer_their_own(stack: Stack) -> None:
    a = post(stack, "/v2/models/a/infer", ABC).json()["outputs"][0]["data"]
    b = post(stack, "/v2/models/b/infer", ABC).json()["outputs"][0]["data"]
    assert a == [6.0] and b == [60.0]


def test_a_20_second_forward_pass_answers_200_once_and_is_computed_once(stack: Stack) -> None:
    before = model_counters(stack.status(), "sleeper")["inference_count"]
    resent = stack.status().dispatcher["resent"]
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [LONG_FORWARD]}]}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, stack, "/v2/models/sleeper/infer", body, LONG_FORWARD + 60)
        # The dispatcher knows the worker is busy, not gone, from what the worker says while it computes.
        busy = wait_for(
            lambda: next(
                (w for w in stack.status().workers if (w.get("computing") or {}).get("model") == "sleeper"),
                None,
            ),
            timeout=15,
            what="a worker to report that it computes the sleeper",
        )
        assert busy["computing"]["size"] == 1
        assert (
            post(stack, "/v2/models/digits/infer", DIGITS_BODY).status_code == 200
        )  # the rest keeps serving
        response = answer.result(timeout=LONG_FORWARD + 90)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2 * LONG_FORWARD]
    wait_for(
        lambda: model_counters(stack.status(), "sleeper")["inference_count"] > before,
        timeout=10,
        what="the worker to report the batch",
    )
    status = stack.status()
    assert model_counters(status, "sleeper")["inference_count"] == before + 1, "computed more than once"
    assert status.dispatcher["resent"] == resent
    assert status.registered() == {"w0", "w1"}, "a busy worker left rotation"


def test_unload_and_load_under_load_fail_no_request_on_the_other_models(stack: Stack) -> None:
    with (
        HttpLoad(stack.url, threads=2) as digits,
        HttpLoad(stack.url, body=ABC, path="/v2/models/b/infer", threads=1) as b,
    ):
        digits.wait_for_more(10)
        triton = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}", network_timeout=120)
        triton.unload_model("a")  # its body: {"parameters": {"unload_dependents": false}}
        not_ready = get(stack, "/v2/models/a/ready")
        assert not_ready.status_code == 400 and "unloaded" in not_ready.json()["error"]
        assert post(stack, "/v2/models/a/infer", ABC).status_code == 503
        index = {e["name"]: e for e in post(stack, "/v2/repository/index").json()}
        assert index["a"]["state"] == "UNAVAILABLE" and index["a"]["reason"].startswith("unloaded")
        digits.wait_for_more(10)
        with pytest.raises(InferenceServerException, match="overriding a model's config or files"):
            triton.load_model("a", config='{"max_batch_size": 2}')  # refused, not a load of what is on disk
        assert get(stack, "/v2/models/a/ready").status_code == 400
        triton.load_model("a")  # its body: {}
        triton.close()
        assert post(stack, "/v2/models/a/infer", ABC).json()["outputs"][0]["data"] == [6.0]
        # Reloading a model that serves, under load on it: its slots reload one at a time.
        response = post(stack, "/v2/repository/models/digits/load")
        assert response.status_code == 200, response.text
        digits.wait_for_more(10)
        # A load longer than the heartbeat expiry (1 s here) does not make the dispatcher presume the loading
        # worker dead: its helper module now takes 3 s to import (a reload imports the model's code again).
        (stack.repository / "b" / "helper.py").write_text("import time\ntime.sleep(3)\nFACTOR = 10.0\n")
        response = post(stack, "/v2/repository/models/b/load")
        assert response.status_code == 200, response.text
        assert post(stack, "/v2/models/b/infer", ABC).json()["outputs"][0]["data"] == [60.0]
        b.wait_for_more(3)
    assert digits.failures() == [] and b.failures() == []
    assert stack.status().registered() == {"w0", "w1"} and "silent" not in stack.log("dispatcher")
    log = stack.log("dispatcher")
    assert "load of digits done on w0, w1" in log and "unload of a done on w0, w1" in log


def test_a_load_that_fails_says_where_and_why_and_unknown_models_are_404(stack: Stack) -> None:
    response = post(stack, "/v2/repository/models/broken/load")
    assert response.status_code == 400
    error = response.json()["error"]
    assert re.match(r"load of model 'broken' failed: w[01]: model 'broken' version 1 \(", error), error
    assert "No module named 'no_such_package_for_torchgate'" in error
    assert post(stack, "/v2/repository/models/nosuch/load").status_code == 404
    assert post(stack, "/v2/models/digits/infer", DIGITS_BODY).status_code == 200


def test_torchserve_management_api_lists_describes_unregisters_and_registers(stack: Stack) -> None:
    listed = get(stack, "/models").json()
    assert listed == {
        "models": [{"modelName": n, "modelUrl": n} for n in ("a", "b", "broken", "digits", "sleeper")]
    }
    (digits,) = get(stack, "/models/digits").json()
    assert (digits["modelName"], digits["modelVersion"], digits["batchSize"]) == ("digits", "1", 64)
    pids = {w["worker"]: w["pid"] for w in stack.status().workers}
    assert {w["id"]: w["pid"] for w in digits["workers"]} == pids and digits["minWorkers"] == 2
    for w in digits["workers"]:
        assert w["status"] == "READY" and w["gpu"] is False and w["gpuUsage"] == "N/A"
        assert w["memoryUsage"] > 50 << 20, w  # a worker holding torch and its models
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", w["startTime"]), w
    (broken,) = get(stack, "/models/broken").json()
    assert broken["workers"] == [] and broken["minWorkers"] == 0

    # Unregister: the model leaves the list and its requests get 503; register brings it back on both slots.
    started = {w["id"]: (w["pid"], w["startTime"]) for w in get(stack, "/models/a").json()[0]["workers"]}
    response = requests.delete(f"{stack.url}/models/a", timeout=120)
    assert response.status_code == 200 and response.json() == {"status": 'Model "a" unregistered'}
    assert "a" not in [m["modelName"] for m in get(stack, "/models").json()["models"]]
    gone = get(stack, "/models/a")
    assert gone.status_code == 404 and "Model not found: a" in gone.json()["error"]
    assert requests.delete(f"{stack.url}/models/a", timeout=120).status_code == 404
    assert post(stack, "/predictions/a", [1.0, 2.0, 3.0]).status_code == 503
    response = post(stack, "/models?url=a&initial_workers=1&synchronous=true")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": 'Model "a" Version: 1 registered with 2 initial workers'}
    assert post(stack, "/predictions/a", [1.0, 2.0, 3.0]).json() == [6.0]
    workers = get(stack, "/models/a").json()[0]["workers"]
    assert {w["id"]: (w["pid"], w["startTime"]) for w in workers} == started  # the same processes

    # Registered twice: TorchServe's 409, and the model is not loaded again.
    again = post(stack, "/models?url=a")
    assert again.status_code == 409, again.text
    assert again.json() == {"error": "Model version 1 is already registered for model a"}
    assert get(stack, "/models/a").json()[0]["workers"] == workers


def test_a_register_that_fails_leaves_the_model_unregistered_as_torchserve_does(stack: Stack) -> None:
    """A ``POST /models`` whose load fails rolls back: the model is neither listed nor described, and /ping
    says what it said before (it used to stay half-registered, degrading /ping until someone unregistered it);
    a model already served is not loaded again (409), so it keeps serving what it loaded."""
    folder = write_linear_model(
        stack.repository, "bad", "import no_such_package_for_torchgate\n" + LINEAR_SOURCE
    )
    try:
        ping = get(stack, "/ping").json()
        response = post(stack, "/models?url=bad&synchronous=true")
        assert response.status_code == 400 and "No module named" in response.json()["error"], response.text
        assert "bad" not in [m["modelName"] for m in get(stack, "/models").json()["models"]]
        assert get(stack, "/models/bad").status_code == 404
        assert get(stack, "/ping").json() == ping
        assert "bad" in stack.status().unloaded
        (stack.repository / "a" / "model.py").write_text(
            "import no_such_package_for_torchgate\n" + LINEAR_SOURCE
        )
        assert post(stack, "/models?url=a&synchronous=true").status_code == 409
        assert post(stack, "/predictions/a", [1.0, 2.0, 3.0]).json() == [6.0]  # served as before
    finally:
        shutil.rmtree(folder)
        (stack.repository / "a" / "model.py").write_text(LINEAR_SOURCE)
