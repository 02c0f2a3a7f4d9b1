"""Checking requests against a model signature, as plain functions: every refusal names what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gateway.codec import InferRequest, RequestedOutput, Tensor, parse_infer_request
from gateway.errors import InvalidArgument, NotFound
from gateway.models import ModelCatalog
from gateway.predict import predict_input, predict_output
from gateway.validation import Planned, check_inputs, output_plan, raw_input
from harness import signature, write_unloadable_model
from inference_worker.protocol import StatusReply
from inference_worker.repository import ModelConfig, TensorSpec


def model(
    max_batch_size: int = 8,
    inputs: tuple[TensorSpec, ...] | None = None,
    outputs: tuple[TensorSpec, ...] | None = None,
) -> ModelConfig:
    return signature(
        max_batch_size,
        inputs or (TensorSpec("x", "FP32", (4,)),),
        outputs or (TensorSpec("y", "FP32", (2,)),),
        backend="torchscript",
    )


def fp32(name: str, shape: tuple[int, ...], nbytes: int | None = None) -> Tensor:
    count = int(np.prod(shape))
    return Tensor(name, "FP32", shape, b"\x00" * (4 * count if nbytes is None else nbytes))


def request(
    *tensors: Tensor, outputs: list[RequestedOutput] | None = None, binary: bool = False
) -> InferRequest:
    return InferRequest(id=None, inputs=list(tensors), outputs=outputs or [], binary_data_output=binary)


def test_a_fitting_request_passes_in_model_order() -> None:
    m = model(inputs=(TensorSpec("a", "FP32", (4,)), TensorSpec("b", "FP32", (-1,))))
    ordered = check_inputs(request(fp32("b", (3, 7)), fp32("a", (3, 4))), m)
    assert [t.name for t in ordered] == ["a", "b"]


@pytest.mark.parametrize(
    "tensors, message",
    [
        ([], "missing input 'x' FP32 \\[-1, 4\\]"),
        ([fp32("x", (1, 4)), fp32("z", (1, 4))], "has no input 'z'; its inputs are 'x' FP32 \\[-1, 4\\]"),
        ([fp32("x", (1, 4)), fp32("x", (1, 4))], "given twice"),
        ([Tensor("x", "FP64", (1, 4), b"\x00" * 32)], "datatype FP64, expected FP32"),
        ([fp32("x", (1, 5))], "shape \\[1, 5\\] does not fit \\[-1, 4\\]"),
        ([fp32("x", (4,))], "shape \\[4\\] does not fit \\[-1, 4\\]"),
        ([fp32("x", (9, 4))], "batch size 9 exceeds the model's max_batch_size 8"),
        ([fp32("x", (0, 4))], "holds no elements"),
        ([fp32("x", (2, 4), nbytes=31)], "31 bytes of data, but shape \\[2, 4\\] of FP32 needs 32"),
    ],
)
def test_refusals_name_the_input_and_what_was_expected(tensors: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_inputs(request(*tensors), model())


def test_absurd_shapes_are_refused_without_allocating() -> None:
    m = model(max_batch_size=0, inputs=(TensorSpec("x", "FP32", (-1, -1)),))
    with pytest.raises(InvalidArgument, match="more than the limit"):
        check_inputs(request(Tensor("x", "FP32", (2147483647, 2147483647), b"\x00" * 16)), m)


def test_inputs_of_a_batch_share_its_size() -> None:
    m = model(inputs=(TensorSpec("a", "FP32", (4,)), TensorSpec("b", "FP32", (4,))))
    with pytest.raises(InvalidArgument, match="batch size 3 but input 'a' has 2"):
        check_inputs(request(fp32("a", (2, 4)), fp32("b", (3, 4))), m)


def test_a_model_that_does_not_batch_takes_its_dims_exactly() -> None:
    m = model(max_batch_size=0, inputs=(TensorSpec("x", "FP32", (2, 2)),))
    check_inputs(request(fp32("x", (2, 2))), m)
    with pytest.raises(InvalidArgument, match="does not fit \\[2, 2\\]"):
        check_inputs(request(fp32("x", (1, 2, 2))), m)


def test_output_plan() -> None:
    m = model(outputs=(TensorSpec("y", "FP32", (2,)), TensorSpec("h", "FP16", (2,))))
    assert output_plan(request(outputs=[RequestedOutput("y")]), m) == [Planned("y", False, 0)]
    assert output_plan(request(binary=True), m) == [Planned("y", True, 0), Planned("h", True, 0)]
    assert output_plan(
        request(outputs=[RequestedOutput("h", True), RequestedOutput("y", None)], binary=True), m
    ) == [Planned("h", True, 0), Planned("y", True, 0)]
    assert output_plan(request(outputs=[RequestedOutput("y", False)], binary=True), m) == [
        Planned("y", False, 0)
    ]
    with pytest.raises(InvalidArgument, match="'h' is FP16, which travels only as binary"):
        output_plan(request(), m)
    with pytest.raises(InvalidArgument, match="'h' is FP16"):
        output_plan(request(outputs=[RequestedOutput("h", False)], binary=True), m)
    with pytest.raises(InvalidArgument, match="has no output 'q'"):
        output_plan(request(outputs=[RequestedOutput("q")]), m)
    with pytest.raises(InvalidArgument, match="requested twice"):
        output_plan(request(outputs=[RequestedOutput("y"), RequestedOutput("y")]), m)


def test_output_plan_with_classes() -> None:
    m = model(
        outputs=(TensorSpec("y", "FP32", (2,)), TensorSpec("h", "FP16", (2,)), TensorSpec("b", "BOOL", (2,)))
    )
    asked = [RequestedOutput("h", False, 3), RequestedOutput("y", None, 1)]
    assert output_plan(request(outputs=asked), m) == [
        Planned("h", False, 3),
        Planned("y", False, 1),
    ]  # classes are JSON
    with pytest.raises(InvalidArgument, match="'b' is BOOL: its values cannot be ranked"):
        output_plan(request(outputs=[RequestedOutput("b", None, 2)]), m)


def test_raw_binary_request() -> None:
    body = np.ones((3, 4), np.float32).tobytes()
    tensor = raw_input(parse_infer_request(body, "0"), model())
    assert tensor.shape == (3, 4) and tensor.name == "x"
    with pytest.raises(InvalidArgument, match="not a whole number"):
        raw_input(parse_infer_request(body[:-4], "0"), model())
    with pytest.raises(InvalidArgument, match="batch size 9 exceeds"):
        raw_input(parse_infer_request(body * 3, "0"), model())
    fixed = model(max_batch_size=0, inputs=(TensorSpec("x", "FP32", (3, 4)),))
    assert raw_input(parse_infer_request(body, "0"), fixed).shape == (3, 4)
    two = model(inputs=(TensorSpec("a", "FP32", (4,)), TensorSpec("b", "FP32", (4,))))
    with pytest.raises(InvalidArgument, match="needs a model with one input"):
        raw_input(parse_infer_request(body, "0"), two)
    variable = model(inputs=(TensorSpec("x", "FP32", (-1,)),))
    with pytest.raises(InvalidArgument, match="variable dims"):
        raw_input(parse_infer_request(body, "0"), variable)


def test_a_json_request_end_to_end_against_a_signature() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}]
    }
    inputs = check_inputs(parse_infer_request(json.dumps(doc).encode(), None), model())
    assert np.frombuffer(inputs[0].data, np.float32).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


# -- /predict ---------------------------------------------------------------------------------------


def test_predict_one_sample_and_a_batch() -> None:
    m = model()
    tensor, whole = predict_input([1, 2, 3, 4], m)
    assert tensor.shape == (1, 4) and not whole
    y = Tensor("y", "FP32", (1, 2), np.array([[0.5, 1.5]], np.float32).tobytes())
    assert predict_output([y], m, whole)["output"].tolist() == [0.5, 1.5]
    tensor, whole = predict_input([[1, 2, 3, 4], [5, 6, 7, 8]], m)
    assert tensor.shape == (2, 4) and whole
    with pytest.raises(InvalidArgument, match="expects one sample shaped \\[4\\] or a list of up to 8"):
        predict_input([1, 2, 3], m)
    with pytest.raises(InvalidArgument, match="must be numbers"):
        predict_input(["a", "b", "c", "d"], m)


def test_predict_a_number_and_fp16() -> None:
    m = model(
        max_batch_size=0, inputs=(TensorSpec("x", "FP16", (1,)),), outputs=(TensorSpec("y", "FP16", (1,)),)
    )
    tensor, whole = predict_input(3, m)
    assert tensor.shape == (1,) and whole and np.frombuffer(tensor.data, np.float16).tolist() == [3.0]
    y = Tensor("y", "FP16", (1,), np.array([6.0], np.float16).tobytes())
    out = predict_output([y], m, whole)["output"]
    assert out.dtype == np.float32 and out.tolist() == [6.0]


def test_predict_several_outputs_by_name() -> None:
    m = model(outputs=(TensorSpec("y", "FP32", (1,)), TensorSpec("z", "INT64", (1,))))
    y = Tensor("y", "FP32", (1, 1), np.array([[1.0]], np.float32).tobytes())
    z = Tensor("z", "INT64", (1, 1), np.array([[7]], np.int64).tobytes())
    out = predict_output([y, z], m, False)["output"]
    assert out["y"].tolist() == [1.0] and out["z"].tolist() == [7]


# -- the catalog ------------------------------------------------------------------------------------


def test_catalog_versions_and_rate_limited_rescans(tmp_path: Path) -> None:
    write_unloadable_model(tmp_path, "a", [1, 2, 10])
    catalog = ModelCatalog(tmp_path, rescan_interval=3600)
    assert catalog.get("a")[1] == "10"
    assert catalog.get("a", "02")[1] == "2"
    with pytest.raises(NotFound, match="unknown version '3' of model 'a'; it has versions 1, 2, 10"):
        catalog.get("a", "3")
    with pytest.raises(NotFound, match="versions are positive integers"):
        catalog.get("a", "latest")
    with pytest.raises(NotFound, match="versions are positive integers"):  # int() refuses 4300 digits
        catalog.get("a", "1" + "0" * 5000)
    write_unloadable_model(tmp_path, "b", [1])
    with pytest.raises(NotFound, match="unknown model 'b'"):
        catalog.get("b")  # the last scan is recent: no re-scan yet
    catalog.rescan_interval = 0
    assert catalog.get("b")[1] == "1"  # an unknown name triggers a re-scan once the interval has passed


def test_catalog_keeps_its_models_when_the_repository_breaks(tmp_path: Path) -> None:
    write_unloadable_model(tmp_path, "a", [1])
    catalog = ModelCatalog(tmp_path, rescan_interval=0)
    (tmp_path / "a" / "config.toml").write_text("name = ")
    assert "a" in catalog.rescan() and "not valid TOML" in str(catalog.errors["a"])


def test_catalog_follows_the_config_workers_loaded_not_edits_on_disk(tmp_path: Path) -> None:
    """With what workers serve followed, a known model's config is the config.toml text its workers loaded,
    with the versions they serve or failed to load (whichever gateway process asked for the load), never an
    edit on disk alone, even one read later."""
    write_unloadable_model(tmp_path, "a", [1])
    config = tmp_path / "a" / "config.toml"
    now: list[StatusReply] = []  # the dispatcher's status, a new one each time

    def serve(text: str, versions: tuple[str, ...] = ("1",), failed: tuple[str, ...] = ()) -> None:
        models = {"a": {v: {"ready": 1, "signature": {"config": text}} for v in versions}}
        unavailable = [{"model": "a", "version": v, "reason": "broken", "worker": "w0"} for v in failed]
        now[:] = [StatusReply("s", models=models, unavailable=unavailable)]

    serve(config.read_text())
    catalog = ModelCatalog(tmp_path, rescan_interval=0, served=lambda max_age: now[0])
    loaded = config.read_text().replace("max_batch_size = 4", "max_batch_size = 8")
    config.write_text(loaded)
    write_unloadable_model(tmp_path, "b", [1])
    catalog.rescan()
    assert catalog.get("a")[0].max_batch_size == 4 and "b" in catalog.models  # new models come in at once
    catalog.check("a")  # sound on disk: a load may go ahead; nothing adopted yet
    assert catalog.get("a")[0].max_batch_size == 4
    serve(loaded)  # the workers loaded it
    assert catalog.get("a")[0].max_batch_size == 8
    assert not catalog.follow()  # the same status: nothing to compare
    config.write_text(loaded.replace("max_batch_size = 8", "max_batch_size = many"))
    with pytest.raises(InvalidArgument, match="cannot load model .a.: .*not valid TOML"):
        catalog.check("a")
    config.write_text(loaded.replace("max_batch_size = 8", "max_batch_size = 2"))
    serve(loaded)  # a load of that edit failed: the workers run what they had; the disk is not read
    assert not catalog.follow() and catalog.get("a")[0].max_batch_size == 8
    (tmp_path / "a" / "2").mkdir()  # staged, its model file not there yet: no version to anyone yet
    with pytest.raises(NotFound, match="unknown version '2'"):
        catalog.get("a", "2")
    serve(loaded, ("1", "2"))  # loaded with its config unchanged
    assert catalog.get("a", "2")[0].max_batch_size == 8 and catalog.get("a")[1] == "2"
    serve(loaded, ("1",), failed=("2",))  # version 2 failed to load on a slot: listed, not the default
    assert sorted(catalog.get("a")[0].versions) == ["1", "2"]
    serve(loaded, ("1",))  # its folder removed, and loaded again: gone from every front
    with pytest.raises(NotFound, match="unknown version '2'"):
        catalog.get("a", "2")
    serve("name = 'a'")  # a config this gateway refuses (say, from a worker on another host) is kept out
    assert not catalog.follow() and catalog.get("a")[0].max_batch_size == 8
    write_unloadable_model(tmp_path, "c", [1])
    text_c = (tmp_path / "c" / "config.toml").read_text()
    now[:] = [StatusReply("s", models={"c": {"1": {"signature": {"config": text_c}}}})]
    assert catalog.follow() and "c" in catalog.models  # served before any request named it here
    (tmp_path / "c").rename(tmp_path / "c-moved")  # while its workers still serve it: served, as in Triton
    assert "c" in catalog.rescan() and catalog.get("c")[0].max_batch_size == 4
    now[:] = [StatusReply("s", models={"c": {"1": {"signature": {"config": text_c.replace("4", "2")}}}})]
    assert catalog.follow() and catalog.get("c")[0].max_batch_size == 2  # what they loaded, folder or not
    fresh = ModelCatalog(tmp_path, rescan_interval=0, served=lambda max_age: now[-1])
    assert "c" not in fresh.models and fresh.get("c")[0].max_batch_size == 2  # a front started since
    now[:] = [StatusReply("s", models={})]  # unloaded, its folder gone: gone from every front
    with pytest.raises(NotFound):
        fresh.get("c")
    assert catalog.follow() and "c" not in catalog.models and "c" not in catalog.rescan()


def test_a_catalog_alone_reads_known_models_on_each_rescan(tmp_path: Path) -> None:
    write_unloadable_model(tmp_path, "a", [1])
    catalog = ModelCatalog(tmp_path, rescan_interval=0)
    config = tmp_path / "a" / "config.toml"
    config.write_text(config.read_text().replace("max_batch_size = 4", "max_batch_size = 8"))
    assert catalog.rescan()["a"].max_batch_size == 8 and not catalog.follow()
