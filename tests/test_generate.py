"""Triton's generate extension without processes: a flat request read as the infer request it stands for,
shapes as Triton derives them, and the flat answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway import generate
from gateway.codec import Tensor
from gateway.errors import InvalidArgument
from inference_worker import strings
from inference_worker.repository import ModelConfig, TensorSpec


def model(max_batch_size: int, *inputs: TensorSpec) -> ModelConfig:
    return ModelConfig(
        name="m",
        backend="python",
        max_batch_size=max_batch_size,
        max_queue_delay_us=0,
        inputs=inputs,
        outputs=(TensorSpec("y", "FP32", (2,)),),
        path=Path("/nowhere"),
    )


@pytest.mark.parametrize(
    ("dims", "max_batch_size", "count", "shape"),
    [
        ((64,), 8, 64, [1, 64]),  # a batching model: the batch dimension takes what is left
        ((-1,), 8, 5, [1, 5]),  # the innermost variable dimension takes it, the others are 1
        ((2, -1), 0, 6, [2, 3]),
        ((1,), 8, 1, [1, 1]),  # a scalar value
        ((3,), 0, 3, [3]),
    ],
)
def test_shapes_are_derived_as_triton_derives_them(
    dims: tuple[int, ...], max_batch_size: int, count: int, shape: list[int]
) -> None:
    assert generate.shape_for(TensorSpec("x", "FP32", dims), count, max_batch_size) == shape


@pytest.mark.parametrize(("dims", "max_batch_size", "count"), [((64,), 8, 63), ((3,), 0, 6), ((4,), 8, 0)])
def test_values_that_fit_no_shape_are_a_400(dims: tuple[int, ...], max_batch_size: int, count: int) -> None:
    with pytest.raises(InvalidArgument, match=f"{count} values do not fit its shape"):
        generate.shape_for(TensorSpec("x", "FP32", dims), count, max_batch_size)


def test_inputs_by_name_and_every_other_key_a_parameter() -> None:
    config = model(4, TensorSpec("text", "BYTES", (1,)), TensorSpec("k", "INT64", (-1,)))
    doc = generate.infer_document(
        {"text": "hello", "top_k": 3, "parameters": {"k": [1, 2], "timeout": 1000, "lang": "en"}}, config
    )
    assert doc["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["hello"]},
        {"name": "k", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]},
    ]
    assert doc["parameters"] == {"top_k": 3, "timeout": 1000, "lang": "en"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"parameters": {}}, "needs the input(s) 'x'"),
        ({"x": [[1.0, 2.0]]}, "one value or a flat list"),
        ({"x": [1.0, 2.0], "parameters": {"x": [1.0, 2.0]}}, "given twice"),
        ({"x": [1.0, 2.0], "parameters": [1]}, "'parameters' must be a JSON object"),
    ],
)
def test_what_cannot_be_an_infer_request_is_a_400(body: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        generate.infer_document(body, model(0, TensorSpec("x", "FP32", (2,))))


def test_a_bytes_input_takes_strings_only() -> None:
    with pytest.raises(InvalidArgument, match="is BYTES"):
        generate.infer_document({"text": 7}, model(0, TensorSpec("text", "BYTES", (1,))))


def test_the_answer_is_flat_one_value_alone_and_strings_as_text() -> None:
    outputs = [
        Tensor("scores", "FP32", (1, 3), np.array([0.5, 1.5, float("nan")], dtype=np.float32).tobytes()),
        Tensor("best", "INT64", (1, 1), np.array([7], dtype=np.int64).tobytes()),
        Tensor("label", "BYTES", (1, 1), strings.serialize([b"seven"])),
    ]
    answer = generate.response("m", "2", outputs)
    assert answer["model_name"] == "m" and answer["model_version"] == "2"
    assert answer["scores"][:2] == [0.5, 1.5] and answer["best"] == 7 and answer["label"] == "seven"
    assert generate.event(answer).startswith(b'data: {"model_name":"m"') and b"NaN" in generate.dumps(answer)
    assert generate.event(answer).endswith(b"\n\n")
