"""Triton's classification extension, without processes: ranks, formats, shapes and labels."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.classification import top_classes
from gateway.codec import NUMPY_DTYPES, Tensor, json_array
from gateway.errors import InvalidArgument
from inference_worker import strings


def tensor(values: object, datatype: str = "FP32") -> Tensor:
    array = np.asarray(values)
    data = json_array("y", datatype, array.tolist()).tobytes()
    return Tensor("y", datatype, array.shape, data)


def elements(result: Tensor) -> list[str]:
    count = int(np.prod(result.shape))
    raw = strings.deserialize(result.data, count, strings.StringLimits(count, len(result.data)))
    return [e.decode() for e in raw]


def test_the_example_of_the_extension_document() -> None:
    # Triton's extension_classification.md: [1.1, 3.3, 0.5, 2.4], classification 2 -> ["3.3:1", "2.4:3"]
    # (the document elides the digits; Triton writes values with std::to_string, which is C's %f).
    result = top_classes(tensor([1.1, 3.3, 0.5, 2.4]), 2, batched=False)
    assert result.name == "y" and result.datatype == "BYTES" and result.shape == (2,)
    assert elements(result) == ["3.300000:1", "2.400000:3"]


def test_each_sample_of_a_batch_is_ranked_alone() -> None:
    x = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [-3.0, -1.0, -2.0]], dtype=np.float32)
    result = top_classes(tensor(x), 2, batched=True)
    assert result.shape == (3, 2)
    assert elements(result) == [
        "0.700000:1",
        "0.200000:2",
        "0.500000:0",
        "0.250000:1",  # a tie: the lower index first
        "-1.000000:1",
        "-2.000000:2",
    ]


def test_asking_for_more_classes_than_there_are_gives_them_all() -> None:
    result = top_classes(tensor([[1.0, 3.0]]), 1000, batched=True)
    assert result.shape == (1, 2) and elements(result) == ["3.000000:1", "1.000000:0"]


def test_dims_past_the_batch_are_flattened_row_major() -> None:
    x = np.array([[[1, 9], [4, 2]]], dtype=np.float32)  # one sample of [2, 2]
    assert elements(top_classes(tensor(x), 2, batched=True)) == ["9.000000:1", "4.000000:2"]
    not_batched = top_classes(tensor(x[0]), 3, batched=False)  # the whole tensor is one sample
    assert not_batched.shape == (3,) and elements(not_batched)[0] == "9.000000:1"


@pytest.mark.parametrize(
    "datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
)
def test_integers_are_written_whole_and_ranked_without_overflow(datatype: str) -> None:
    info = np.iinfo(NUMPY_DTYPES[datatype])
    values = [0, int(info.max), int(info.min), 1]
    data = np.array(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
    result = top_classes(Tensor("y", datatype, (4,), data), 4, batched=False)
    ranked = sorted(range(4), key=lambda i: (-values[i], i))
    assert elements(result) == [f"{values[i]}:{i}" for i in ranked]


@pytest.mark.parametrize("datatype", ["FP16", "BF16", "FP64"])
def test_other_floats_rank_like_fp32(datatype: str) -> None:
    values = [0.5, -2.0, 8.0, 0.5]
    result = top_classes(tensor(values, datatype), 3, batched=False)
    assert elements(result) == ["8.000000:2", "0.500000:0", "0.500000:3"]


def test_nan_ranks_last_and_infinities_in_order() -> None:
    values = [float("nan"), 1.0, float("-inf"), float("inf")]
    assert elements(top_classes(tensor(values), 4, batched=False)) == [
        "inf:3",
        "1.000000:1",
        "-inf:2",
        "nan:0",
    ]


def test_labels_follow_the_index_when_there_is_one() -> None:
    labels = ("cat", "", "dog")  # index 1 has an empty line, index 3 is past the file's end
    result = top_classes(tensor([[0.1, 0.2, 0.3, 0.4]]), 4, batched=True, labels=labels)
    assert elements(result) == ["0.400000:3", "0.300000:2:dog", "0.200000:1", "0.100000:0:cat"]


def test_a_label_may_hold_colons_and_any_unicode() -> None:
    result = top_classes(tensor([2.0, 1.0]), 1, batched=False, labels=("n01440764: tench, Tinca tinca ✓",))
    assert elements(result) == ["2.000000:0:n01440764: tench, Tinca tinca ✓"]


def test_a_view_into_a_reply_frame_is_read_in_place() -> None:
    frame = memoryview(np.array([[1.0, 5.0, 3.0]], dtype=np.float32).tobytes())
    result = top_classes(Tensor("y", "FP32", (1, 3), frame), 1, batched=True)
    assert elements(result) == ["5.000000:1"]


def test_more_strings_than_a_bytes_tensor_may_hold_is_a_400() -> None:
    x = np.zeros((4, 100), dtype=np.float32)
    assert top_classes(tensor(x), 50, batched=True, max_elements=200).shape == (4, 50)
    with pytest.raises(InvalidArgument, match="4 samples would be 204 strings, more than the limit of 200"):
        top_classes(tensor(x), 51, batched=True, max_elements=200)
