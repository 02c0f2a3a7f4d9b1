"""Model repository parsing: what loads, and errors that name the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_worker.repository import ConfigError, load_model_config, load_repository
from tests.conftest import DEFAULT_REPOSITORY

GOOD = """
name = "m"
backend = "torch_export"
max_batch_size = 8
[dynamic_batching]
max_queue_delay_us = 100
[[input]]
name = "input"
datatype = "FP32"
dims = [-1, 3]
[[output]]
name = "output"
datatype = "FP16"
dims = [2]
"""


def make(tmp_path: Path, config: str, versions: tuple[str, ...] = ("1",), file: str = "model.pt2") -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.toml").write_text(config)
    for version in versions:
        (folder / version).mkdir()
        (folder / version / file).write_bytes(b"x")
    return folder


def test_the_default_repository_serves_digits() -> None:
    digits = load_repository(DEFAULT_REPOSITORY)["digits"]
    assert digits.max_batch_size == 64 and digits.default_version == "1"
    assert digits.inputs[0].full_shape(digits.max_batch_size) == [-1, 64]


def test_highest_version_folder_is_the_default(tmp_path: Path) -> None:
    model = load_model_config(make(tmp_path, GOOD, versions=("1", "2", "10")))
    assert model.default_version == "10" and sorted(model.versions) == ["1", "10", "2"]
    assert model.signature("2")["inputs"] == [{"name": "input", "datatype": "FP32", "dims": [-1, 3]}]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c.replace('backend = "torch_export"', 'backend = "onnx"'),
            "key 'backend' is 'onnx', expected one of",
        ),
        (lambda c: c.replace('name = "m"', 'name = "x"'), "key 'name' is 'x', expected the folder name 'm'"),
        (lambda c: c.replace("max_batch_size = 8", "max_batch_size = -1"), "key 'max_batch_size' is -1"),
        (
            lambda c: c.replace('datatype = "FP32"', 'datatype = "FLOAT"'),
            "key 'input[0].datatype' is 'FLOAT'",
        ),
        (lambda c: c.replace("dims = [-1, 3]", "dims = [-2]"), "key 'input[0].dims'"),
        (
            lambda c: c.replace("max_queue_delay_us = 100", 'max_queue_delay_us = "soon"'),
            "'dynamic_batching.max_queue_delay_us'",
        ),
        (lambda c: c.split("[[output]]")[0], "key 'output' must be one or more"),
        (lambda c: c + "\n[[[", "not valid TOML"),
        (
            lambda c: c.replace('backend = "torch_export"', 'backend = "python"'),
            "key 'factory' must be 'module:function'",
        ),
    ],
)
def test_bad_configs_name_file_key_and_expectation(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = make(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as caught:
        load_model_config(folder)
    assert str(folder / "config.toml") in str(caught.value)
    assert message in str(caught.value)


def test_missing_model_file_names_it(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD, file="other.bin")
    with pytest.raises(ConfigError, match=r"1/model\.pt2: missing"):
        load_model_config(folder)


def test_missing_versions_and_configs_are_reported(tmp_path: Path) -> None:
    folder = make(tmp_path, GOOD, versions=())
    with pytest.raises(ConfigError, match="no version folders"):
        load_model_config(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model folders"):
        load_repository(tmp_path / "empty")
    with pytest.raises(ConfigError, match="not a directory"):
        load_repository(tmp_path / "absent")
