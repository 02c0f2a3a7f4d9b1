"""Loading models as a worker does: python models isolated from each other, and errors that name what
failed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from harness.models import (
    LINEAR_SOURCE,
    PYTHON_CONFIG,
    copy_digits,
    write_linear_model,
    write_python_model,
    write_scale_model,
)
from inference_worker.backends import LoadError, load_model
from inference_worker.compute import BatchTimes, Executor
from inference_worker.repository import ConfigError, load_model_config
from inference_worker.residents import Residents

CPU = torch.device("cpu")


def linear_weights() -> dict[str, torch.Tensor]:
    return {"linear.weight": torch.ones(1, 3), "linear.bias": torch.zeros(1)}


def test_two_python_models_with_a_model_py_each_never_share_a_module(tmp_path: Path) -> None:
    a = load_model_config(write_linear_model(tmp_path, "a"))
    b = load_model_config(write_scale_model(tmp_path, "b"))
    run_a, run_b = load_model(a, "1", CPU), load_model(b, "1", CPU)
    x = torch.ones(2, 3)
    assert run_a([x])[0].tolist() == [[3.0], [3.0]]
    assert run_b([x])[0].tolist() == [[30.0], [30.0]]
    # Loading a again (a reload) takes its code from disk again, and b is unaffected.
    (a.path / "helper.py").write_text("WIDTH = 3\n")
    assert load_model(a, "1", CPU)([x])[0].tolist() == [[3.0], [3.0]]
    assert run_b([x])[0].tolist() == [[30.0], [30.0]]


def test_a_missing_package_names_model_version_file_and_key(tmp_path: Path) -> None:
    source = "import no_such_package_for_torchgate\n" + LINEAR_SOURCE
    model = load_model_config(write_linear_model(tmp_path, "broken", source))
    with pytest.raises(LoadError) as caught:
        load_model(model, "1", CPU)
    text = str(caught.value)
    assert text.startswith("model 'broken' version 1 (")
    assert "1/model.safetensors" in text and "cannot import factory 'model:build'" in text
    assert "No module named 'no_such_package_for_torchgate'" in text
    assert f"key 'factory' in {model.path / 'config.toml'}" in text


def test_weights_that_do_not_fit_name_the_model_not_a_state_dict(tmp_path: Path) -> None:
    model = load_model_config(
        write_python_model(tmp_path, "m", LINEAR_SOURCE, {"other": torch.ones(1)}, "WIDTH = 3\n")
    )
    with pytest.raises(
        LoadError, match=r"model 'm' version 1 .*the weights do not fit what the factory builds"
    ):
        load_model(model, "1", CPU)


def test_a_datatype_the_model_cannot_take_fails_warm_up_naming_the_config(tmp_path: Path) -> None:
    model = load_model_config(
        write_python_model(tmp_path, "ints", LINEAR_SOURCE, linear_weights(), "WIDTH = 3\n", datatype="INT64")
    )
    executor = Executor(model, "1", load_model(model, "1", CPU), CPU)
    with pytest.raises(LoadError) as caught:
        executor.warm_up()
    text = str(caught.value)
    assert (
        text.startswith("model 'ints' version 1 (") and "warm-up with zeros (x INT64 [1, 3]) failed" in text
    )
    assert "RuntimeError" in text and "[[input]] and [[output]] tables" in text
    assert str(model.path / "config.toml") in text


def test_an_output_of_another_datatype_than_its_config_says_fails_warm_up(tmp_path: Path) -> None:
    """As Triton's libtorch backend refuses it: a float64 answer for an FP32 output was sent as FP64, which no
    client reading the model's metadata expects."""
    source = LINEAR_SOURCE.replace("return self.linear(x)", "return self.linear(x).double()")
    assert source != LINEAR_SOURCE
    model = load_model_config(write_python_model(tmp_path, "wide", source, linear_weights(), "WIDTH = 3\n"))
    executor = Executor(model, "1", load_model(model, "1", CPU), CPU)
    with pytest.raises(LoadError, match=r"unexpected datatype torch.float64 for output 'y', expecting FP32"):
        executor.warm_up()


def test_an_output_of_another_shape_than_its_config_says_fails_warm_up(tmp_path: Path) -> None:
    """As Triton's "unexpected shape for output": an output of 2 values a sample, where the config (and so the
    metadata clients read) says 1, was sent as it came."""
    source = LINEAR_SOURCE.replace("return self.linear(x)", "return torch.cat([self.linear(x)] * 2, dim=1)")
    assert source != LINEAR_SOURCE
    model = load_model_config(write_python_model(tmp_path, "twice", source, linear_weights(), "WIDTH = 3\n"))
    executor = Executor(model, "1", load_model(model, "1", CPU), CPU)
    with pytest.raises(
        LoadError, match=r"unexpected shape \[-1, 2\] for output 'y', the config says \[-1, 1\]"
    ):
        executor.warm_up()


def test_reshape_gives_a_batching_model_its_own_shape_and_clients_the_dims(tmp_path: Path) -> None:
    """Triton's reshape in a config.toml: clients send [batch, 3, 1] and get [batch, 1, 1]; the model takes
    [batch, 3] and returns [batch, 1]. An output of another shape than its reshape fails the warm-up."""
    folder = write_python_model(tmp_path, "shaped", LINEAR_SOURCE, linear_weights(), "WIDTH = 3\n")
    config = folder / "config.toml"
    text = config.read_text().replace("dims = [3]", "dims = [3, 1]\nreshape = [3]")
    config.write_text(text.replace("dims = [1]", "dims = [1, 1]\nreshape = [1]"))
    model = load_model_config(folder)
    run = load_model(model, "1", CPU)
    executor = Executor(model, "1", run, CPU)
    executor.warm_up()
    x = torch.arange(6.0).reshape(2, 3, 1)
    (y,) = run([x])
    assert y.tolist() == [[[3.0]], [[12.0]]]  # weights of ones: each row's sum, sent as dims say
    config.write_text(config.read_text().replace("reshape = [1]", "reshape = [1, 1]"))
    wrong = load_model_config(folder)
    with pytest.raises(LoadError, match=r"unexpected shape \[1\] for output 'y', its reshape says \[1, 1\]"):
        Executor(wrong, "1", load_model(wrong, "1", CPU), CPU).warm_up()
    for bad, why in (
        ("reshape = [2]", r"reshape' is \[2\]: it must hold as many elements as dims \[3, 1\]"),
        ("reshape = [-1]", r"reshape' is \[-1\], expected a list of sizes"),
    ):
        config.write_text(text.replace("reshape = [3]", bad))
        with pytest.raises(ConfigError, match=why):
            load_model_config(folder)


def test_a_broken_file_names_the_backend_and_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.pt2").write_bytes(b"not a zip file")
    (folder / "config.toml").write_text(
        PYTHON_CONFIG.format(name="exported", width=3, out=1, datatype="FP32").replace(
            'backend = "python"\nfactory = "model:build"', 'backend = "torch_export"'
        )
    )
    model = load_model_config(folder)
    with pytest.raises(LoadError) as caught:
        load_model(model, "1", CPU)
    text = str(caught.value)
    assert text.startswith(
        f"model 'exported' version 1 ({folder / '1' / 'model.pt2'}): cannot load as backend"
    )
    assert "how model.pt2 was saved" in text


def _exported_model(root: Path, batch: torch.export.Dim | None, max_batch_size: int = 4) -> Path:
    """A torch_export model y = linear(x), x FP32 [-1, 3]: exported from two samples with ``batch`` as its
    dynamic batch dimension, or (None) from one sample as torch.export does by default, at that fixed size."""
    folder = root / "exported"
    (folder / "1").mkdir(parents=True)
    program = torch.export.export(
        torch.nn.Linear(3, 1).eval(),
        (torch.ones(1 if batch is None else 2, 3),),
        dynamic_shapes=None if batch is None else ({0: batch},),
    )
    torch.export.save(program, str(folder / "1" / "model.pt2"))
    (folder / "config.toml").write_text(
        PYTHON_CONFIG.format(name="exported", width=3, out=1, datatype="FP32")
        .replace('backend = "python"\nfactory = "model:build"', 'backend = "torch_export"')
        .replace("max_batch_size = 4", f"max_batch_size = {max_batch_size}")
    )
    return folder


def test_an_exported_program_of_a_fixed_batch_size_fails_to_load_not_the_batches(tmp_path: Path) -> None:
    """torch.export fixes the batch size unless told otherwise: such a program passed its warm-up (one
    sample), then failed each request of every batch of two or more with a 500 (its guards)."""
    model = load_model_config(_exported_model(tmp_path, None))
    with pytest.raises(LoadError) as caught:
        load_model(model, "1", CPU)
    text = str(caught.value)
    assert text.startswith(f"model 'exported' version 1 ({model.path / '1' / 'model.pt2'}): ")
    assert "input 'input' was exported with a fixed batch size of 1, but max_batch_size = 4" in text
    assert "torch.export.Dim('batch', max=4)" in text and str(model.path / "config.toml") in text


def test_an_exported_program_whose_batch_dimension_stops_below_max_batch_size_fails_to_load(
    tmp_path: Path,
) -> None:
    model = load_model_config(_exported_model(tmp_path, torch.export.Dim("batch", min=1, max=3)))
    with pytest.raises(LoadError, match=r"exported for batches of at most 3, below max_batch_size = 4"):
        load_model(model, "1", CPU)


def test_an_exported_program_with_a_dynamic_batch_dimension_runs_every_batch_size(tmp_path: Path) -> None:
    model = load_model_config(_exported_model(tmp_path, torch.export.Dim("batch", min=1, max=4)))
    executor = Executor(model, "1", load_model(model, "1", CPU), CPU)
    executor.warm_up()
    outputs = executor.run([[torch.ones(1, 3)], [torch.ones(3, 3)]], BatchTimes())
    assert [list(out[0].shape) for out in outputs] == [[1, 1], [3, 1]]
    unbounded = load_model_config(_exported_model(tmp_path / "unbounded", torch.export.Dim("batch")))
    load_model(unbounded, "1", CPU)


def test_a_worker_loads_only_the_versions_its_policy_serves(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    copy_digits(repository)
    folder = repository / "digits"
    shutil.copytree(folder / "1", folder / "2")
    (folder / "3").mkdir()
    (folder / "3" / "model.pt2").write_bytes(b"a broken file no one reads")
    (folder / "config.toml").write_text(
        (folder / "config.toml").read_text() + "[version_policy]\nspecific = [1, 2]\n"
    )
    residents = Residents(repository, CPU, "test")
    residents.load_all(None)
    assert sorted(residents.executors) == [("digits", "1"), ("digits", "2")] and residents.failures == []


def test_a_model_whose_code_calls_sys_exit_fails_alone(tmp_path: Path) -> None:
    # argparse's parse_args() at import reads the worker's own argv and exits: the worker ended, with every
    # model it served, at each start (supervisord then gave up on the slot)
    repository = tmp_path / "repo"
    copy_digits(repository)
    write_linear_model(repository, "argv", "import sys\nsys.exit(2)\n" + LINEAR_SOURCE)
    write_linear_model(
        repository, "quits", LINEAR_SOURCE.replace("def build():", "def build():\n    raise SystemExit(3)")
    )
    residents = Residents(repository, CPU, "test")
    residents.load_all(None)
    assert sorted(residents.executors) == [("digits", "1")]
    reasons = {f["model"]: f["reason"] for f in residents.failures}
    assert "cannot import factory 'model:build': SystemExit: 2" in reasons["argv"]
    assert "cannot load as backend 'python': SystemExit: 3" in reasons["quits"]
    ok, error = residents.apply("load", "argv")  # model control: the same, and the worker carries on
    assert not ok and "SystemExit: 2" in error
