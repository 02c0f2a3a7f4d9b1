"""Loading models as a worker does: python models isolated from each other, and errors that name what failed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inference_worker.backends import LoadError, load_model
from inference_worker.compute import Executor
from inference_worker.repository import load_model_config

CPU = torch.device("cpu")

CONFIG = """
name = "{name}"
backend = "python"
factory = "model:build"
max_batch_size = 4
[[input]]
name = "x"
datatype = "{datatype}"
dims = [{width}]
[[output]]
name = "y"
datatype = "FP32"
dims = [1]
"""

# Two models, each with its own model.py and a helper module of the same name, as the README lays them out.
LINEAR = """
import torch
from helper import WIDTH

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(WIDTH, 1)

    def forward(self, x):
        return self.linear(x)

def build():
    return Net()
"""

SCALE = """
import torch
from helper import FACTOR

class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(FACTOR))

    def forward(self, x):
        return (x * self.factor).sum(dim=1, keepdim=True)

def build():
    return Scale()
"""


def write_model(
    root: Path,
    name: str,
    source: str,
    helper: str,
    weights: dict[str, torch.Tensor],
    width: int = 3,
    datatype: str = "FP32",
) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.toml").write_text(CONFIG.format(name=name, width=width, datatype=datatype))
    (folder / "model.py").write_text(source)
    (folder / "helper.py").write_text(helper)
    save_file(weights, str(folder / "1" / "model.safetensors"))
    return folder


def linear_weights() -> dict[str, torch.Tensor]:
    return {"linear.weight": torch.ones(1, 3), "linear.bias": torch.zeros(1)}


def test_two_python_models_with_a_model_py_each_never_share_a_module(tmp_path: Path) -> None:
    a = load_model_config(write_model(tmp_path, "a", LINEAR, "WIDTH = 3\n", linear_weights()))
    b = load_model_config(
        write_model(tmp_path, "b", SCALE, "FACTOR = 10.0\n", {"factor": torch.tensor(10.0)})
    )
    run_a, run_b = load_model(a, "1", CPU), load_model(b, "1", CPU)
    x = torch.ones(2, 3)
    assert run_a([x])[0].tolist() == [[3.0], [3.0]]
    assert run_b([x])[0].tolist() == [[30.0], [30.0]]
    # Loading a again (a reload) takes its code from disk again, and b is unaffected.
    (a.path / "helper.py").write_text("WIDTH = 3\n")
    assert load_model(a, "1", CPU)([x])[0].tolist() == [[3.0], [3.0]]
    assert run_b([x])[0].tolist() == [[30.0], [30.0]]


def test_a_missing_package_names_model_version_file_and_key(tmp_path: Path) -> None:
    source = "import no_such_package_for_torchgate\n" + LINEAR
    model = load_model_config(write_model(tmp_path, "broken", source, "WIDTH = 3\n", linear_weights()))
    with pytest.raises(LoadError) as caught:
        load_model(model, "1", CPU)
    text = str(caught.value)
    assert text.startswith("model 'broken' version 1 (")
    assert "1/model.safetensors" in text and "cannot import factory 'model:build'" in text
    assert "No module named 'no_such_package_for_torchgate'" in text
    assert f"key 'factory' in {model.path / 'config.toml'}" in text


def test_weights_that_do_not_fit_name_the_model_not_a_state_dict(tmp_path: Path) -> None:
    model = load_model_config(write_model(tmp_path, "m", LINEAR, "WIDTH = 3\n", {"other": torch.ones(1)}))
    with pytest.raises(
        LoadError, match=r"model 'm' version 1 .*the weights do not fit what the factory builds"
    ):
        load_model(model, "1", CPU)


def test_a_datatype_the_model_cannot_take_fails_warm_up_naming_the_config(tmp_path: Path) -> None:
    model = load_model_config(
        write_model(tmp_path, "ints", LINEAR, "WIDTH = 3\n", linear_weights(), datatype="INT64")
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


def test_a_broken_file_names_the_backend_and_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "exported"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.pt2").write_bytes(b"not a zip file")
    (folder / "config.toml").write_text(
        CONFIG.format(name="exported", width=3, datatype="FP32").replace(
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
