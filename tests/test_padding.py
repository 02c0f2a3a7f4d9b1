"""Variable-length batching and handlers without processes: padding, masks, buckets, cutting back, and what a
handler's failures cost (its request alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness import write_masked_model
from inference_worker import padding as pad
from inference_worker import strings
from inference_worker.compute import BatchTimes
from inference_worker.errors import CodedError
from inference_worker.handlers import BoundHandler, wire_output
from inference_worker.pipeline import Pipeline
from inference_worker.protocol import ErrorCode, TensorMeta
from inference_worker.repository import Padding, TensorSpec, load_model_config

PADDING = Padding(inputs={"ids": 0, "other": -1.0}, mask="mask", outputs=("tokens",), buckets=(4, 16))


def test_pad_batch_pads_to_the_longest_and_builds_the_mask() -> None:
    a = {"ids": torch.tensor([[1, 2]]), "other": torch.ones(1, 2, 3)}
    b = {"ids": torch.tensor([[3, 4, 5], [6, 7, 8]]), "other": torch.ones(2, 3, 3)}
    batch, lengths = pad.pad_batch([a, b], PADDING)
    assert lengths == [2, 3]
    assert batch["ids"].tolist() == [[1, 2, 0], [3, 4, 5], [6, 7, 8]]
    assert batch["other"].shape == (3, 3, 3) and batch["other"][0, 2].tolist() == [-1.0] * 3
    assert batch["mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    out = pad.unpad({"tokens": torch.zeros(1, 3, 5), "pooled": torch.zeros(1, 5)}, PADDING, 2)
    assert out["tokens"].shape == (1, 2, 5) and out["pooled"].shape == (1, 5)


def test_buckets_decide_who_batches_together() -> None:
    def key(length: int) -> object:
        return pad.batch_key({"ids": torch.zeros(1, length), "other": torch.zeros(1, length, 3)}, PADDING)

    assert key(1) == key(4) != key(5)
    assert key(5) == key(16) != key(17)
    assert key(17) == key(500)  # past the last bucket: together
    no_buckets = Padding(inputs={"ids": 0})
    assert pad.batch_key({"ids": torch.zeros(1, 3)}, no_buckets) == pad.batch_key(
        {"ids": torch.zeros(1, 300)}, no_buckets
    )
    with pytest.raises(pad.PaddingError, match="lengths 2 and 3: they must agree"):
        pad.length({"ids": torch.zeros(1, 2), "other": torch.zeros(1, 3, 3)}, PADDING)


def wire(name: str, datatype: str, value: np.ndarray) -> tuple[TensorMeta, memoryview]:
    return TensorMeta(name, datatype, tuple(value.shape)), memoryview(value.tobytes())


def test_a_plain_model_gets_padded_batches_with_the_mask_and_answers_each_request_unpadded(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(load_model_config(write_masked_model(tmp_path)), "1", torch.device("cpu"))
    pipeline.warm_up()
    short = pipeline.admit([wire("ids", "INT64", np.array([[5, 6]], dtype="<i8"))], 1)
    long = pipeline.admit([wire("ids", "INT64", np.array([[1, 2, 3, 4]] * 2, dtype="<i8"))], 2)
    assert pipeline.batch_key(short) == pipeline.batch_key(long)  # both in bucket 4
    first, second = pipeline.run([short, long], BatchTimes())
    assert first["tokens"].tolist() == [[5.0, 6.0]] and first["count"].tolist() == [[2.0]]
    assert second["tokens"].tolist() == [[1.0, 2.0, 3.0, 4.0]] * 2 and second["count"].tolist() == [[4.0]] * 2
    meta, _ = pipeline.finish(first, short, 1)[0]
    assert meta == TensorMeta("tokens", "FP32", (1, 2))


HANDLER = """
import numpy as np
import torch

class Handler:
    def preprocess(self, inputs):
        words = [s.decode("utf-8").split() for s in inputs["text"].reshape(-1)]
        if any(w == "boom" for ws in words for w in ws):
            raise ValueError("boom is not a word")
        longest = max(len(ws) for ws in words)
        ids = [[len(w) for w in ws] + [0] * (longest - len(ws)) for ws in words]
        return {"ids": torch.tensor(ids, dtype=torch.int64)}

    def inference(self, model, batch):
        tokens, count = model(batch["ids"], batch["mask"])
        return {"tokens": tokens, "count": count}

    def postprocess(self, outputs, inputs):
        if (outputs["count"] == 3).any():
            raise RuntimeError("three words upset postprocess")
        return {"tokens": outputs["tokens"], "count": [int(c) for c in outputs["count"][:, 0]]}
"""


def text(*sentences: str) -> tuple[TensorMeta, memoryview]:
    blob = strings.serialize([s.encode() for s in sentences])
    return TensorMeta("text", "BYTES", (len(sentences), 1)), memoryview(blob)


def test_handler_failures_fail_their_request_alone(tmp_path: Path) -> None:
    folder = write_masked_model(tmp_path, handler='handler = "word_handler:Handler"')
    config = (folder / "config.toml").read_text()
    config = config.replace(
        'name = "ids"\ndatatype = "INT64"\ndims = [-1]', 'name = "text"\ndatatype = "BYTES"\ndims = [1]'
    )
    config = config.replace(
        'name = "count"\ndatatype = "FP32"', 'name = "count"\ndatatype = "BYTES"\nformat = "json"'
    )
    (folder / "config.toml").write_text(config)
    (folder / "word_handler.py").write_text(HANDLER)
    pipeline = Pipeline(load_model_config(folder), "1", torch.device("cpu"))
    with pytest.raises(CodedError, match="preprocessing failed: ValueError: boom is not a word") as refused:
        pipeline.admit([text("one boom")], 1)
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    good = pipeline.admit([text("a bb", "ccc")], 2)
    upset = pipeline.admit([text("x y z")], 1)
    good_out, upset_out = pipeline.run([good, upset], BatchTimes())
    tokens, count = pipeline.finish(good_out, good, 2)
    assert tokens[0] == TensorMeta("tokens", "FP32", (2, 2))
    # the worker's mask covers the padding between requests; within one, the handler pads (as "ccc" here)
    assert count[0] == TensorMeta("count", "BYTES", (2, 1)) and strings.deserialize(count[1], 2) == [b"2"] * 2
    with pytest.raises(CodedError, match="postprocessing failed: RuntimeError: three words") as failed:
        pipeline.finish(upset_out, upset, 1)
    assert failed.value.code is ErrorCode.INTERNAL


def test_values_a_handler_returns_that_are_no_tensor_fail_their_request_alone(tmp_path: Path) -> None:
    """A preprocess that returns None or a ragged list (a tokenizer without padding), a postprocess that
    returns a dict for a tensor: each a precise 500 for its request (they used to raise a TypeError that
    failed the whole batch, or ended the worker)."""
    folder = write_masked_model(tmp_path, handler='handler = "word_handler:Handler"')
    config = (folder / "config.toml").read_text()
    config = config.replace(
        'name = "ids"\ndatatype = "INT64"\ndims = [-1]', 'name = "text"\ndatatype = "BYTES"\ndims = [1]'
    )
    (folder / "config.toml").write_text(config)
    odd = HANDLER.replace(
        "        longest = max(len(ws) for ws in words)",
        '        if words[0] == ["none"]:\n'
        '            return {"ids": None}\n'
        '        if words[0] == ["ragged"]:\n'
        '            return {"ids": [[1], [1, 2]]}\n'
        "        longest = max(len(ws) for ws in words)",
    ).replace(
        '        if (outputs["count"] == 3).any():',
        '        if (outputs["count"] == 4).any():\n'
        '            return {"tokens": {"not": "a tensor"}, "count": outputs["count"]}\n'
        '        if (outputs["count"] == 3).any():',
    )
    odd = odd.replace('[int(c) for c in outputs["count"][:, 0]]', 'outputs["count"]')
    assert odd.count("return") == HANDLER.count("return") + 3 and "int(c)" not in odd
    (folder / "word_handler.py").write_text(odd)
    pipeline = Pipeline(load_model_config(folder), "1", torch.device("cpu"))
    for word in ("none", "ragged"):
        with pytest.raises(CodedError, match="preprocess returned 'ids' as a .*, not a tensor") as caught:
            pipeline.admit([text(word)], 1)
        assert caught.value.code is ErrorCode.INTERNAL
    good, odd_one = pipeline.admit([text("a bb")], 1), pipeline.admit([text("w x y z")], 1)
    good_out, odd_out = pipeline.run([good, odd_one], BatchTimes())
    assert [meta.name for meta, _ in pipeline.finish(good_out, good, 1)] == ["tokens", "count"]
    with pytest.raises(CodedError, match="postprocess returned what cannot be sent") as caught:
        pipeline.finish(odd_out, odd_one, 1)
    assert caught.value.code is ErrorCode.INTERNAL


def test_wire_output_takes_tensors_strings_and_json() -> None:
    spec = TensorSpec("label", "BYTES", (1,), "json")
    meta, blob = wire_output(spec, [{"a": 1}, "x"], samples=2, batching=True)
    assert meta.shape == (2, 1) and strings.deserialize(blob, 2) == [b'{"a":1}', b'"x"']
    meta, blob = wire_output(TensorSpec("s", "BYTES", (1,)), "plain", samples=1, batching=True)
    assert meta.shape == (1, 1) and strings.deserialize(blob, 1) == [b"plain"]
    meta, _ = wire_output(
        TensorSpec("y", "FP32", (3,)), np.zeros(3, dtype=np.float64), samples=1, batching=True
    )
    assert meta == TensorMeta("y", "FP32", (1, 3))
    with pytest.raises(CodedError, match=r"output 'y' of shape \[2, 2\] does not fit \[1, 3\]"):
        wire_output(TensorSpec("y", "FP32", (3,)), np.zeros((2, 2)), samples=1, batching=True)
    # A list is one value per sample, or the request's every element, as a tensor's would be.
    meta, blob = wire_output(TensorSpec("s", "BYTES", (3,)), ["a", "b", "c"], samples=1, batching=True)
    assert meta.shape == (1, 3) and strings.deserialize(blob, 3) == [b"a", b"b", b"c"]
    for wrong in (["a", "b"], ("a", "b", "c")):
        with pytest.raises(CodedError, match=r"output 's' of shape \[\d\] does not fit \[1, 1\]"):
            wire_output(TensorSpec("s", "BYTES", (1,)), wrong, samples=1, batching=True)


def test_a_hook_that_declares_parameters_gets_the_requests(tmp_path: Path) -> None:
    class WithParameters:
        def preprocess(self, inputs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, torch.Tensor]:
            return {"ids": inputs["ids"] * int(parameters.get("scale", 1))}

        def postprocess(self, outputs: dict[str, Any], inputs: dict[str, Any], **extra: Any) -> Any:
            return {"count": outputs["count"] + extra["parameters"].get("offset", 0)}

    class Without:
        def preprocess(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
            return {"ids": inputs["ids"]}

    config = load_model_config(write_masked_model(tmp_path))
    with_parameters, without = BoundHandler(WithParameters(), config), BoundHandler(Without(), config)
    ids = torch.tensor([[1, 2]])
    assert with_parameters.prepare({"ids": ids}, 1, {"scale": 3})["ids"].tolist() == [[3, 6]]
    assert with_parameters.prepare({"ids": ids}, 1)["ids"].tolist() == [[1, 2]]  # none: an empty dict
    assert without.prepare({"ids": ids}, 1, {"scale": 3})["ids"].tolist() == [[1, 2]]
    (meta, blob), *_ = with_parameters.finish({"count": torch.tensor([[2.0]])}, {}, 1, {"offset": 5})
    assert meta.name == "count" and np.frombuffer(blob, "<f4").tolist() == [7.0]


class _Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x * scale


SCALE_HANDLER = """
import torch

class Handler:
    def preprocess(self, inputs):
        rows = [[float(v) for v in s.decode().split(",")] for s in inputs["text"].reshape(-1)]
        return {"{scale}": torch.full((len(rows), 2), 10.0), "x": torch.tensor(rows)}
"""


def _exported_scale_model(root: Path, scale_name: str) -> Path:
    """A torch_export program x * scale, exported by position (as torch.export.export(m, (x, scale)) is),
    behind a handler without ``inference`` whose preprocess names the second input ``scale_name``."""
    folder = root / "scale"
    (folder / "1").mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(
        _Scale(), (torch.ones(2, 2), torch.ones(2, 2)), dynamic_shapes=({0: batch}, {0: batch})
    )
    torch.export.save(program, str(folder / "1" / "model.pt2"))
    (folder / "handler.py").write_text(SCALE_HANDLER.replace("{scale}", scale_name))
    (folder / "config.toml").write_text(
        'name = "scale"\nbackend = "torch_export"\nhandler = "handler:Handler"\nmax_batch_size = 4\n'
        '[[input]]\nname = "text"\ndatatype = "BYTES"\ndims = [1]\n'
        '[[output]]\nname = "output"\ndatatype = "FP32"\ndims = [2]\n'
    )
    return folder


def test_the_default_inference_passes_an_exported_programs_inputs_by_position_by_name(tmp_path: Path) -> None:
    """``model(**batch)`` is refused by every program exported by position, whatever the names (torch:
    "Ran into a kwarg keyword mismatch"): the default inference passes them in the program's order."""
    pipeline = Pipeline(load_model_config(_exported_scale_model(tmp_path, "scale")), "1", torch.device("cpu"))
    one, two = pipeline.admit([text("1,2")], 1), pipeline.admit([text("3,4", "5,6")], 2)
    first, second = pipeline.run([one, two], BatchTimes())
    assert first["output"].tolist() == [[10.0, 20.0]]
    assert second["output"].tolist() == [[30.0, 40.0], [50.0, 60.0]]


def test_inputs_an_exported_program_does_not_take_fail_saying_which_it_takes(tmp_path: Path) -> None:
    pipeline = Pipeline(
        load_model_config(_exported_scale_model(tmp_path, "factor")), "1", torch.device("cpu")
    )
    request = pipeline.admit([text("1,2")], 1)
    with pytest.raises(
        TypeError, match=r"takes inputs \['x', 'scale'\] by position, and preprocess returned"
    ):
        pipeline.run([request], BatchTimes())
