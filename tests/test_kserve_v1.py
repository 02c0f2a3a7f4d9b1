"""KServe's v1 protocol without processes: instances in, one prediction per instance out."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.codec import Tensor, dumps
from gateway.errors import InvalidArgument
from gateway.kserve_v1 import instances_input, predictions
from harness import signature
from inference_worker import strings
from inference_worker.repository import ModelConfig, TensorSpec


def model(
    max_batch_size: int = 8,
    inputs: tuple[TensorSpec, ...] = (TensorSpec("x", "FP32", (2,)),),
    outputs: tuple[TensorSpec, ...] = (TensorSpec("y", "FP32", (3,)),),
) -> ModelConfig:
    return signature(max_batch_size, inputs, outputs)


def fp32(name: str, array: Any) -> Tensor:
    values = np.asarray(array, dtype="<f4")
    return Tensor(name, "FP32", values.shape, values.tobytes())


def texts(name: str, shape: tuple[int, ...], elements: list[bytes]) -> Tensor:
    return Tensor(name, "BYTES", shape, strings.serialize(elements))


def as_json(value: Any) -> Any:
    return orjson.loads(dumps(value))


def test_instances_are_a_batch_of_samples() -> None:
    tensor, count = instances_input({"instances": [[1, 2], [3, 4], [5, 6]]}, model())
    assert count == 3 and tensor.shape == (3, 2)
    assert np.frombuffer(tensor.data, "<f4").tolist() == [1, 2, 3, 4, 5, 6]
    one, count = instances_input({"inputs": [[1, 2]]}, model())  # "inputs" too, as KServe takes
    assert count == 1 and one.shape == (1, 2)


@pytest.mark.parametrize(
    "doc, message",
    [
        ([1, 2], "must be a JSON object"),
        ({"instances": []}, '"instances" must be a list'),
        ({"instance": [[1, 2]]}, '"instances" must be a list'),
        ({"instances": [1, 2]}, "each instance must be one sample of input 'x', shaped \\[2\\]"),
        ({"instances": [[1, 2, 3]]}, '"instances" has shape \\[1, 3\\]'),
        ({"instances": [["a", "b"]]}, "FP32 data must be numbers"),
    ],
)
def test_bad_instances_are_400s_that_say_what_was_expected(doc: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        instances_input(doc, model())


def test_a_model_that_does_not_batch_takes_one_instance_and_answers_it_whole() -> None:
    plain = model(max_batch_size=0)
    tensor, count = instances_input({"instances": [[1, 2]]}, plain)
    assert count == 1 and tensor.shape == (2,)
    with pytest.raises(InvalidArgument, match="does not batch: send one instance, not 2"):
        instances_input({"instances": [[1, 2], [3, 4]]}, plain)
    assert as_json(predictions([fp32("y", [0.5, 1.5, 2.5])], plain, 1)) == [[0.5, 1.5, 2.5]]


def test_strings_and_base64_files_for_a_bytes_input() -> None:
    m = model(inputs=(TensorSpec("text", "BYTES", (1,)),))
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    tensor, count = instances_input({"instances": ["héllo", {"b64": base64.b64encode(png).decode()}]}, m)
    assert count == 2 and tensor.shape == (2, 1)
    assert strings.deserialize(tensor.data, 2) == ["héllo".encode(), png]
    for bad, message in (
        ([{"b64": "not base64!"}], "instances\\[0\\].b64 is not base64"),
        ([5], "must be a string"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            instances_input({"instances": bad}, m)


def test_one_prediction_per_instance() -> None:
    out = fp32("y", [[1, 2, 3], [4, 5, 6]])
    assert as_json(predictions([out], model(), 2)) == [[1, 2, 3], [4, 5, 6]]
    scalar = model(outputs=(TensorSpec("y", "FP32", ()),))
    assert as_json(predictions([fp32("y", [7, 8])], scalar, 2)) == [7, 8]


def test_several_outputs_give_a_dict_per_instance_and_json_outputs_their_documents() -> None:
    m = model(outputs=(TensorSpec("y", "FP32", (1,)), TensorSpec("label", "BYTES", (1,), "json")))
    label = texts("label", (2, 1), [b'{"digit": 7}', b'["a", "b"]'])
    assert as_json(predictions([fp32("y", [[0.5], [1.5]]), label], m, 2)) == [
        {"y": [0.5], "label": {"digit": 7}},
        {"y": [1.5], "label": ["a", "b"]},  # a document that is a list stays whole
    ]
    words = model(outputs=(TensorSpec("w", "BYTES", (2,)),))
    assert predictions([texts("w", (1, 2), [b"a", b"b"])], words, 1) == [["a", "b"]]
