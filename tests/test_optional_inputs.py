"""Triton's optional inputs (``optional = true`` on an ``[[input]]``): a request may leave the input out, and
the model gets None for it.

First without processes (the config, both checks, the worker's pipeline, the config as Triton's clients read
it), then as a user would: a dispatcher, a worker and a gunicorn gateway, with tritonclient sending requests
with and without the input at once, each answer compared with the model called directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from gateway import grpc_codec, triton
from gateway.codec import InferRequest, Tensor
from gateway.errors import InvalidArgument
from gateway.service import reply_room
from gateway.validation import check_inputs as gateway_check
from gateway.validation import sole_input
from harness import Stack, run, short_dir, wait_for, write_offset_model
from harness.commands import torchgate
from inference_worker.backends import LoadError, load_module
from inference_worker.compute import BatchTimes
from inference_worker.compute import check_inputs as worker_check
from inference_worker.errors import CodedError
from inference_worker.pipeline import Pipeline, needs_pipeline
from inference_worker.protocol import TensorMeta
from inference_worker.repository import ConfigError, ModelConfig, load_repository

CPU = torch.device("cpu")
TIMEOUT = 30.0


def offset(root: Path, backend: str = "python") -> ModelConfig:
    write_offset_model(root, "offset", backend)
    return load_repository(root)["offset"]


def tensor(name: str, rows: int = 1) -> Tensor:
    return Tensor(name, "FP32", (rows, 3), np.ones((rows, 3), np.float32).tobytes())


# -- the config -------------------------------------------------------------------------------------------


def test_an_optional_input_is_read_and_shown_as_tritons(tmp_path: Path) -> None:
    model = offset(tmp_path)
    assert [(s.name, s.optional) for s in model.inputs] == [("x", False), ("bias", True)]
    assert model.has_optional_inputs and needs_pipeline(model)
    config = triton.model_config(model)
    assert [(i["name"], i["optional"]) for i in config["input"]] == [("x", False), ("bias", True)]
    assert "optional" not in config["output"][0]
    # gRPC clients read the same field: tritonclient's own message parses what the server sends
    sent = grpc_codec.model_config(config).SerializeToString()
    parsed = service_pb2.ModelConfigResponse.FromString(sent)
    assert [i.optional for i in parsed.config.input] == [False, True]


def padded_bias(text: str) -> str:
    """Pad the optional input (a padded input has a variable first dim)."""
    text = text.replace(
        'name = "bias"\ndatatype = "FP32"\ndims = [3]', 'name = "bias"\ndatatype = "FP32"\ndims = [-1]'
    )
    return text.replace("max_queue_delay_us = 0", "max_queue_delay_us = 0\n[padding]\ninputs = { bias = 0 }")


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (
            lambda text: text + "optional = true\n",
            "output\\[0\\].optional': only an input",
        ),  # the last table
        (
            lambda text: text.replace("optional = true", 'optional = "yes"'),
            "optional' is 'yes', expected true or false",
        ),
        (padded_bias, "names 'bias', an optional input"),
    ],
    ids=["on-an-output", "not-a-boolean", "padded"],
)
def test_optional_is_refused_where_it_cannot_hold(
    tmp_path: Path, edit: Callable[[str], str], error: str
) -> None:
    config = write_offset_model(tmp_path, "offset") / "config.toml"
    config.write_text(edit(config.read_text()))
    with pytest.raises(ConfigError, match=error):
        load_repository(tmp_path)


# -- the two checks -----------------------------------------------------------------------------------------


def test_the_gateway_lets_an_optional_input_be_left_out_but_not_a_required_one(tmp_path: Path) -> None:
    model = offset(tmp_path)
    both = gateway_check(InferRequest("r", inputs=[tensor("bias"), tensor("x")]), model)
    assert [t.name for t in both] == ["x", "bias"]  # in the model's order
    assert [t.name for t in gateway_check(InferRequest("r", inputs=[tensor("x")]), model)] == ["x"]
    with pytest.raises(InvalidArgument, match="missing input 'x' FP32"):
        gateway_check(InferRequest("r", inputs=[tensor("bias")]), model)
    with pytest.raises(InvalidArgument, match="batch size 2 but input 'x' has 1"):
        gateway_check(InferRequest("r", inputs=[tensor("x"), tensor("bias", 2)]), model)


def test_the_worker_checks_the_same(tmp_path: Path) -> None:
    model = offset(tmp_path)

    def meta(name: str, rows: int = 2) -> TensorMeta:
        return TensorMeta(name, "FP32", (rows, 3))

    assert worker_check(model, [meta("x")]) == 2
    assert worker_check(model, [meta("x"), meta("bias")]) == 2
    for wrong in ([meta("bias")], [meta("x"), meta("x")], [meta("x"), meta("other")], []):
        with pytest.raises(CodedError, match=r"expects inputs \['bias', 'x'\] \(optional: \['bias'\]\)"):
            worker_check(model, wrong)


# -- the worker's pipeline ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "torchscript"])
def test_requests_with_and_without_the_input_batch_apart_and_get_their_own_answers(
    tmp_path: Path, backend: str
) -> None:
    pipeline = Pipeline(offset(tmp_path, backend), "1", CPU)
    pipeline.warm_up()
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    bias = torch.full((2, 3), 10.0)
    with_bias, without = {"x": x, "bias": bias}, {"x": x + 1}
    assert pipeline.batch_key(with_bias) != pipeline.batch_key(without)
    (alone,) = pipeline.run([without], BatchTimes())
    torch.testing.assert_close(alone["y"], (x + 1) * 2)
    first, second = pipeline.run([with_bias, {"x": x, "bias": -bias}], BatchTimes())
    torch.testing.assert_close(first["y"], x * 2 + 10)
    torch.testing.assert_close(second["y"], x * 2 - 10)


def test_a_model_that_cannot_take_none_fails_to_load_saying_so(tmp_path: Path) -> None:
    model = offset(tmp_path)
    source = model.path / "offset_model.py"
    source.write_text(source.read_text().replace("bias: Optional[torch.Tensor] = None", "bias"))
    source.write_text(source.read_text().replace("if bias is not None:", "if True:"))
    pipeline = Pipeline(model, "1", CPU)
    with pytest.raises(LoadError, match=r"warm-up without the optional input\(s\) 'bias' \(passed as None\)"):
        pipeline.warm_up()


# -- as a user would ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with short_dir() as root:
        repository = root / "repo"
        # a 50 ms batching window: requests sent together meet in the worker's queue
        write_offset_model(repository, "offset", "python", delay_us=50_000)
        with Stack.at(root, repository) as stack:
            stack.start(workers=("w0",), gateway_threads=16)
            yield stack


@pytest.mark.processes
def test_tritonclient_requests_with_and_without_the_input_are_each_answered_right(stack: Stack) -> None:
    rng = np.random.default_rng(7)
    cases = [(rng.normal(size=(1, 3)).astype(np.float32), i % 2 == 0) for i in range(16)]
    answers: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def send(i: int) -> None:
        x, with_bias = cases[i]
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{stack.port}", network_timeout=TIMEOUT)
            inputs = [httpclient.InferInput("x", [1, 3], "FP32")]
            inputs[0].set_data_from_numpy(x)
            if with_bias:
                inputs.append(httpclient.InferInput("bias", [1, 3], "FP32"))
                inputs[1].set_data_from_numpy(np.full((1, 3), 100.0 + i, np.float32))
            answers[i] = client.infer("offset", inputs).as_numpy("y")
            client.close()
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not errors and len(answers) == len(cases)
    for i, (x, with_bias) in enumerate(cases):
        want = x * 2 + (100.0 + i if with_bias else 0.0)
        np.testing.assert_allclose(answers[i], want, rtol=1e-6)

    def counted() -> int:  # the workers' statistics reach the gateway a moment after their answers
        stats = requests.get(f"{stack.url}/v2/models/offset/stats", timeout=TIMEOUT).json()
        return int(stats["model_stats"][0]["inference_count"])

    wait_for(lambda: counted() >= len(cases), timeout=TIMEOUT, what="every request counted")


@pytest.mark.processes
def test_the_served_config_says_optional_and_a_missing_required_input_is_a_400(stack: Stack) -> None:
    config = requests.get(f"{stack.url}/v2/models/offset/config", timeout=TIMEOUT).json()
    assert [(i["name"], i["optional"]) for i in config["input"]] == [("x", False), ("bias", True)]
    body: dict[str, Any] = {
        "inputs": [{"name": "bias", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
    }
    answer = requests.post(f"{stack.url}/v2/models/offset/infer", json=body, timeout=TIMEOUT)
    assert answer.status_code == 400 and "missing input 'x' FP32 [-1, 3]" in answer.json()["error"]
    # Triton's generate extension names inputs as keys: the optional one may be left out there too
    answer = requests.post(f"{stack.url}/v2/models/offset/generate", json={"x": [1, 2, 3]}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["y"] == [2.0, 4.0, 6.0]


def test_the_reply_room_counts_samples_by_the_required_inputs(tmp_path: Path) -> None:
    # five samples of x alone (12 bytes each) need room for five answers: 5 x 12 bytes of y, and a header
    assert reply_room(offset(tmp_path), 5 * 12) == 5 * 12 + 64


@pytest.mark.processes
def test_one_input_requests_fill_the_one_required_input(stack: Stack) -> None:
    """/predict, TorchServe's /predictions, KServe's v1 and a raw binary body carry one tensor: for this
    model, x (bias is optional)."""
    row = [1.0, -2.0, 0.5]
    want = [2.0, -4.0, 1.0]
    predict = requests.post(f"{stack.url}/predict", json={"model": "offset", "input": row}, timeout=TIMEOUT)
    assert predict.status_code == 200, predict.text
    assert predict.json() == {"output": want}  # the seed's contract: the only output, as "output"
    predictions = requests.post(f"{stack.url}/predictions/offset", json=row, timeout=TIMEOUT)
    assert predictions.status_code == 200 and predictions.json() == want, predictions.text
    v1 = requests.post(
        f"{stack.url}/v1/models/offset:predict", json={"instances": [row, row]}, timeout=TIMEOUT
    )
    assert v1.status_code == 200 and v1.json()["predictions"] == [want, want], v1.text
    raw = requests.post(
        f"{stack.url}/v2/models/offset/infer",
        data=np.array([row], np.float32).tobytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
        timeout=TIMEOUT,
    )
    assert raw.status_code == 200, raw.text
    header = int(raw.headers["Inference-Header-Content-Length"])
    assert np.frombuffer(raw.content[header:], np.float32).tolist() == want


def test_one_tensor_requests_refuse_a_model_with_two_required_inputs(tmp_path: Path) -> None:
    model = offset(tmp_path)
    assert model.sole_input is not None and model.sole_input.name == "x"
    both = replace(model, inputs=(model.inputs[0], replace(model.inputs[1], optional=False), model.inputs[1]))
    with pytest.raises(
        InvalidArgument, match="/predict needs a model with one input .* has 3, 2 of them required"
    ):
        sole_input(both, "/predict")


@pytest.mark.processes
def test_torchgate_check_loads_the_model_both_ways_and_says_which_input_is_optional(tmp_path: Path) -> None:
    write_offset_model(tmp_path / "repo", "offset", "torchscript")
    result = run(torchgate("check", "--model-repository", str(tmp_path / "repo")), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x FP32 [-1, 3], bias FP32 [-1, 3] (optional) -> y FP32 [-1, 3] (torchscript)" in result.stdout


@pytest.mark.parametrize("exported_with", [("x",), ("x", "bias")])
def test_a_torch_export_program_fails_to_load_saying_which_way_it_cannot_take_the_input(
    tmp_path: Path, exported_with: tuple[str, ...]
) -> None:
    """A program exported without the optional input cannot take it; one exported with it cannot take None.
    Either fails its warm-up, before any request, saying what to check."""
    folder = write_offset_model(tmp_path, "offset", "torchscript")
    config = folder / "config.toml"
    config.write_text(config.read_text().replace('backend = "torchscript"', 'backend = "torch_export"'))
    (folder / "1" / "model.pt").unlink()
    module = load_module(offset(tmp_path / "python"), "1", CPU)  # the python model: y = 2x (+ bias)
    example = tuple(torch.ones(2, 3) for _ in exported_with)
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(module, example, dynamic_shapes=tuple({0: batch} for _ in example))
    torch.export.save(program, str(folder / "1" / "model.pt2"))
    pipeline = Pipeline(load_repository(tmp_path, ["offset"])["offset"], "1", CPU)
    said = "exported with" if exported_with == ("x",) else r"without the optional input\(s\) 'bias'"
    with pytest.raises(LoadError, match=said):
        pipeline.warm_up()


def test_a_model_whose_inputs_are_all_optional_is_warmed_up_with_each_alone(tmp_path: Path) -> None:
    """A request sends at least one input: with x optional too, a request of bias alone passes x as None,
    which this model cannot take; it fails to load, not at that request."""
    config = write_offset_model(tmp_path, "offset") / "config.toml"
    config.write_text(
        config.read_text().replace("dims = [3]\n[[input]]", "dims = [3]\noptional = true\n[[input]]")
    )
    model = load_repository(tmp_path)["offset"]
    assert all(spec.optional for spec in model.inputs)
    with pytest.raises(LoadError, match=r"warm-up without the optional input\(s\) 'x' \(passed as None\)"):
        Pipeline(model, "1", CPU).warm_up()
